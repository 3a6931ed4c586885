"""celeriac_shim against a real celeriac worker binary: routed proxies,
argument checks before sending, stubs, and beat-schedule export read back
by the binary's own `beat --explain`."""

import ast
import subprocess
import sys
import textwrap

import pytest

from celeriac_shim import RustTask, attach, load_manifest
from celeriac_shim.manifest import ManifestError

SHIM = str(__import__("pathlib").Path(__file__).resolve().parents[1])


def test_the_manifest_of_a_users_binary_lists_its_tasks(manifest_path):
    m = load_manifest(manifest_path)
    spec = m.by_name()["science.calibrate"]
    assert spec.queue == "science"
    assert [(p.name, p.annotation, p.keyword) for p in spec.params] == [
        ("run", "int", False),
        ("detector", "str", True),
        ("passes", "int", True),
    ]
    assert str(spec.signature()) == "(run: 'int', *, detector: 'str' = None, passes: 'int' = None)"
    stage = m.by_name()["science.stage"]
    assert [(p.name, p.annotation) for p in stage.params] == [("arg0", "str")], "inferred from Args<(String,)>"
    assert "celeriac.ping" in m.by_name()


def test_rust_tasks_are_routed_proxies_with_the_results_python_gets(app, worker, manifest_path, redis_client):
    rust = attach(app, manifest_path)
    task = app.tasks["science.calibrate"]
    assert isinstance(task, RustTask) and task is rust.science_calibrate is rust["science.calibrate"]
    # Routed: task_routes gained the Rust queue; Celery's router picks it.
    assert app.conf.task_routes["science.calibrate"] == {"queue": "science"}
    assert app.amqp.router.route({}, "science.calibrate")["queue"].name == "science"
    via_proxy = task.delay(42, detector="d7").get(timeout=30)
    # Side by side with Celery's plain send_task of the same call.
    plain = app.send_task("science.calibrate", args=[42], kwargs={"detector": "d7"}, queue="science").get(timeout=30)
    assert via_proxy == plain
    assert via_proxy["run"] == 42 and via_proxy["detector"] == "d7"
    # A positional parameter passed by name is sent positionally, as Rust reads it.
    assert task.delay(run=7, detector="x", passes=1).get(timeout=30)["run"] == 7
    # A signature works too (through apply_async).
    assert task.s(3, detector="d1").apply_async().get(timeout=30)["run"] == 3
    with pytest.raises(NotImplementedError):
        task(1, detector="d")


@pytest.mark.parametrize(
    "args, kwargs, fragment",
    [
        ((), {"detector": "d7"}, "missing a required argument: 'run'"),
        (("42",), {"detector": "d7"}, "'run' must be int"),
        ((True,), {"detector": "d7"}, "'run' must be int"),
        ((1, 2), {}, "too many positional arguments"),
        ((1,), {"colour": "red"}, "unexpected keyword argument 'colour'"),
        ((1,), {"detector": 5}, "'detector' must be str"),
    ],
)
def test_wrong_arguments_fail_before_anything_is_sent(app, manifest_path, redis_client, args, kwargs, fragment):
    attach(app, manifest_path)
    before = sum(redis_client.llen(k) for k in (b"science", b"celery"))
    with pytest.raises(TypeError) as e:
        app.tasks["science.calibrate"].delay(*args, **kwargs)
    assert fragment in str(e.value)
    assert sum(redis_client.llen(k) for k in (b"science", b"celery")) == before


def test_routes_keep_the_apps_own_and_python_tasks_stay(app, manifest_path):
    app.conf.task_routes = {"science.calibrate": {"queue": "mine"}}

    @app.task(name="celeriac.ping")
    def ping():
        return "python"

    attach(app, manifest_path)
    assert app.conf.task_routes["science.calibrate"] == {"queue": "mine"}, "the app's own route wins"
    assert app.conf.task_routes["science.stage"] == {"queue": "science"}
    assert not isinstance(app.tasks["celeriac.ping"], RustTask), "a Python task of that name is kept"


def test_bad_manifests_are_refused_with_a_reason():
    for text, fragment in [
        ("not json", "neither a file nor JSON"),
        ('{"tasks": 5}', "'tasks' list"),
        ('{"manifest_version": 99, "tasks": []}', "newer"),
        ('{"tasks": [{"name": "a", "params": [{"name": "not valid"}]}]}', "identifier"),
    ]:
        with pytest.raises(ManifestError) as e:
            load_manifest(text)
        assert fragment in str(e.value)


def test_stubs_are_typed_python(manifest_path, tmp_path):
    out = tmp_path / "rust_tasks.pyi"
    subprocess.run([sys.executable, "-m", "celeriac_shim", "stubs", str(manifest_path), "-o", str(out)],
                   check=True, cwd=SHIM)
    text = out.read_text()
    ast.parse(text)
    assert (
        "def delay(self, run: int, *, detector: Optional[str] = None, passes: Optional[int] = None) -> AsyncResult"
        in text
    )
    assert "science_calibrate: science_calibrate_task" in text
    assert "def __getitem__(self, name: Literal['science.calibrate']) -> science_calibrate_task" in text


BEAT_APP = '''
from datetime import timedelta
from celery import Celery
from celery.schedules import crontab, schedule, solar

app = Celery("exported")
app.conf.timezone = "Europe/Berlin"
app.conf.beat_schedule = {
    "every-10s": {"task": "datacenter.poll", "schedule": 10.0, "args": (1, "a"), "options": {"queue": "workflow.hpc", "expires": 10}},
    "every-90s": {"task": "datacenter.other", "schedule": timedelta(seconds=90), "kwargs": {"x": [1, 2]}},
    "aligned": {"task": "datacenter.aligned", "schedule": schedule(timedelta(minutes=5), relative=True)},
    "nightly": {"task": "datacenter.nightly", "schedule": crontab(minute=30, hour=2)},
    "workdays": {"task": "datacenter.workdays", "schedule": crontab(minute="*/15", hour="9-17", day_of_week="mon-fri")},
}
'''


def test_export_beat_writes_toml_the_celeriac_binary_runs(tmp_path, worker_bin, redis_url):
    (tmp_path / "beat_app.py").write_text(BEAT_APP)
    out = tmp_path / "beat.toml"
    env = {"PYTHONPATH": f"{SHIM}:{tmp_path}"}
    subprocess.run([sys.executable, "-m", "celeriac_shim", "export-beat", "beat_app:app", "-o", str(out)],
                   check=True, cwd=tmp_path, env={**__import__("os").environ, **env})
    text = out.read_text()
    import tomllib

    data = tomllib.loads(text)
    s = data["beat_schedule"]
    assert data["timezone"] == "Europe/Berlin"
    assert s["every-10s"] == {"task": "datacenter.poll", "schedule": 10, "args": [1, "a"],
                              "options": {"queue": "workflow.hpc", "expires": 10}}
    assert s["every-90s"]["schedule"] == 90 and s["every-90s"]["kwargs"] == {"x": [1, 2]}
    assert s["aligned"] == {"task": "datacenter.aligned", "schedule": 300, "relative": True}
    assert s["nightly"]["schedule"] == "30 2 * * *"
    assert s["workdays"]["schedule"] == "*/15 9-17 * * mon-fri"
    # The binary reads it: `beat --explain` prints every entry's next fire times.
    explained = subprocess.run(
        [worker_bin, "beat", "--config", str(out), "-b", redis_url, "-s", str(tmp_path / "state.json"), "--explain",
         "--count", "2"],
        capture_output=True, text=True, timeout=60,
    )
    assert explained.returncode == 0, explained.stderr
    for name in s:
        assert name in explained.stdout, explained.stdout


def test_solar_schedules_are_refused_with_a_message(tmp_path):
    (tmp_path / "solar_app.py").write_text(textwrap.dedent('''
        from celery import Celery
        from celery.schedules import solar
        # Built without its constructor, which needs the optional ephem library.
        dawn = solar.__new__(solar)
        dawn.event, dawn.lat, dawn.lon = "sunrise", 52.5, 13.4
        app = Celery("s")
        app.conf.beat_schedule = {"dawn": {"task": "t", "schedule": dawn}}
    '''))
    env = {**__import__("os").environ, "PYTHONPATH": f"{SHIM}:{tmp_path}"}
    r = subprocess.run([sys.executable, "-m", "celeriac_shim", "export-beat", "solar_app:app"],
                       capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 1
    assert "solar schedules" in r.stderr and "'dawn'" in r.stderr


def test_the_package_installs_with_pip(tmp_path):
    """`pip install ./python-shim` gives an importable `celeriac_shim` (built
    from a copy, so the source tree stays clean)."""
    import shutil

    src = tmp_path / "src"
    shutil.copytree(SHIM, src, ignore=shutil.ignore_patterns("tests", "__pycache__", "build", "*.egg-info"))
    target = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    probe = subprocess.run(
        [sys.executable, "-c", "import celeriac_shim, sys; print(celeriac_shim.__file__); print(celeriac_shim.__version__)"],
        capture_output=True, text=True, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr
    where, version = probe.stdout.split()
    assert where.startswith(str(target)) and version == "0.1.0"
