#!/usr/bin/env python3
"""Run Celery's own integration suite, ``t/integration/test_tasks.py`` and ``test_inspect.py``, against an external worker.

    .venv/bin/python tests/python/celery_suite/run.py --worker celeriac --celeriac target/debug/celeriac
    .venv/bin/python tests/python/celery_suite/run.py --worker python          # the reference run
    .venv/bin/python tests/python/celery_suite/run.py --worker mixed           # celeriac and Python on one queue
    .venv/bin/python tests/python/celery_suite/run.py --broker amqp            # on RabbitMQ
    .venv/bin/python tests/python/celery_suite/run.py --worker 'CMD {broker} ...' [-- pytest args]

``scripts/celery-suite`` calls this. Without ``--celeriac`` (or ``CELERIAC_BIN``),
``--worker celeriac`` first runs ``cargo build -p celeriac`` and takes
``$CARGO_TARGET_DIR/debug/celeriac`` (default ``target/``).

Python (the pinned Celery in ``.venv``) is the producer and the result reader; the
worker is the command line given (see ``celeriac_suite_plugin.py`` for how it is
started, awaited and stopped). The suite comes from the pinned Celery's sdist,
unpacked by ``scripts/setup`` into ``.cache/celery-<version>/``.

This starts a private redis-server on a free loopback port for broker and result
backend (``TEST_BROKER``/``TEST_BACKEND`` and ``REDIS_HOST``/``REDIS_PORT``, as the
suite reads them); with ``--broker amqp`` the broker is the RabbitMQ node named by
``CELERIAC_TEST_AMQP_URL`` (``scripts/test`` starts one) and Redis keeps the results, runs pytest on the suite with ``-p celery.contrib.pytest -p
celeriac_suite_plugin``, applies ``exclusions.txt``, and exits with pytest's status.
The worker's output goes to ``<log dir>/worker-<kind>.log`` (default
``target/celery-suite/``) and its tail is printed when the run fails.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))

from capture import RedisServer  # noqa: E402  (tests/fixtures/capture.py; importing it has no side effects)

SUITE_FILES = ["t/integration/test_tasks.py", "t/integration/test_inspect.py"]
#: Celery's canvas tests (run on their own: see scripts/test).
CANVAS_FILES = ["t/integration/test_canvas.py"]

#: Worker command lines; the plugin fills in {broker}, {backend}, {hostname}, {concurrency}, {python}.
PYTHON_WORKER = ("{python} -m celery -A python_worker_app -b {broker} --result-backend {backend} worker "
                 "-n {hostname} -c {concurrency} -P prefork -Q celery -l info "
                 "--without-gossip --without-mingle --without-heartbeat")
CELERIAC_WORKER = ("{celeriac} worker -b {{broker}} --result-backend {{backend}} -n {{hostname}} "
                   "-c {{concurrency}} --tasks builtin,conformance -Q celery -l info")


def celery_version() -> str:
    text = (ROOT / "python-shim" / "requirements-dev.txt").read_text()
    match = re.search(r"^celery==(\S+)$", text, re.M)
    if not match:
        raise SystemExit("run.py: no celery== pin in python-shim/requirements-dev.txt")
    return match.group(1)


def end_group(leader: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM to the process group of ``leader`` (a warm shutdown for a worker), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(leader.pid, sig)
        except ProcessLookupError:
            break
        if sig == signal.SIGTERM:
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and group_alive(leader.pid):
                leader.poll()  # reap the leader so that only live members count
                time.sleep(0.1)
    leader.poll()


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", default="celeriac",
                        help="'celeriac' (default), 'python', 'mixed' (a celeriac and a Python worker "
                        "on the same queue), or a command line template")
    parser.add_argument("--celeriac", help="the celeriac binary (default: $CELERIAC_BIN, "
                        "else cargo build -p celeriac and target/debug/celeriac)")
    parser.add_argument("--broker", choices=("redis", "amqp"), default="redis",
                        help="the broker: a private redis-server (default), or RabbitMQ at $CELERIAC_TEST_AMQP_URL")
    parser.add_argument("--log-dir", default=str(ROOT / "target" / "celery-suite"))
    parser.add_argument("--timeout", type=float, default=600.0, help="limit for the whole pytest run, seconds")
    parser.add_argument("--files", nargs="+", default=SUITE_FILES,
                        help=f"the suite's test files to run (default: {' '.join(SUITE_FILES)})")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --), e.g. -k test_fail")
    args = parser.parse_args()

    suite = ROOT / ".cache" / f"celery-{celery_version()}"
    if not (suite / ".unpacked").exists():
        print(f"run.py: {suite} is missing; run scripts/setup", file=sys.stderr)
        return 2

    env = dict(os.environ)
    if args.worker in ("celeriac", "mixed"):
        binary = args.celeriac or os.environ.get("CELERIAC_BIN")
        if not binary:
            # A fresh clone has no binary yet, and a stale one would test old code.
            subprocess.run(["cargo", "build", "--quiet", "--locked", "-p", "celeriac"], cwd=ROOT, check=True)
            binary = str(Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target") / "debug" / "celeriac")
        if not os.access(binary, os.X_OK):
            print(f"run.py: the celeriac binary {binary} is not there", file=sys.stderr)
            return 2
        kind, template = args.worker, CELERIAC_WORKER.format(celeriac=os.path.abspath(binary))
        # conftest's celery_config: the worker stores extended results.
        env.setdefault("CELERIAC_RESULT_EXTENDED", "true")
        if args.worker == "mixed":
            # A mixed fleet: a Python worker on the same queue, beside the celeriac one.
            env["CELERIAC_SUITE_WORKER_PEER"] = PYTHON_WORKER.replace("{hostname}", "py-{hostname}")
    elif args.worker == "python":
        kind, template = "python", PYTHON_WORKER
    else:
        kind, template = "custom", args.worker

    log_dir = Path(args.log_dir).resolve()  # pytest runs in the suite's directory
    log_dir.mkdir(parents=True, exist_ok=True)
    worker_log = log_dir / f"worker-{kind}-{args.broker}.log"
    amqp_url = os.environ.get("CELERIAC_TEST_AMQP_URL", "")
    if args.broker == "amqp" and not amqp_url:
        print("run.py: --broker amqp needs CELERIAC_TEST_AMQP_URL (scripts/test starts a node)", file=sys.stderr)
        return 2
    worker_log.unlink(missing_ok=True)

    with RedisServer() as redis:
        env.update({
            "TEST_BROKER": amqp_url if args.broker == "amqp" else redis.url,
            "TEST_BACKEND": redis.url,
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(redis.port),
            # the plugin and the reference worker's app; the suite's t package
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), str(suite), env.get("PYTHONPATH")])),
            "CELERIAC_SUITE_WORKER": template,
            "CELERIAC_SUITE_WORKER_KIND": kind,
            "CELERIAC_SUITE_WORKER_LOG": str(worker_log),
            "CELERIAC_SUITE_CHECK_STALE": "0" if args.pytest_args or args.files not in (SUITE_FILES, CANVAS_FILES) else "1",
        })
        command = [sys.executable, "-m", "pytest", "-p", "celery.contrib.pytest", "-p", "celeriac_suite_plugin",
                   "-p", "no:cacheprovider", "-p", "no:timeout", "-q", "-rfEXxs", *args.files, *args.pytest_args]
        print(f"run.py: {' '.join(command)}\n  in {suite}, broker {env['TEST_BROKER']}, backend {redis.url}, "
              f"worker ({kind}): {template}",
              flush=True)
        # pytest and the worker it starts get a process group of their own, ended below
        # whatever happens, so that a hung or interrupted run leaves no worker behind.
        pytest = subprocess.Popen(command, cwd=suite, env=env, start_new_session=True)
        try:
            status = pytest.wait(args.timeout)
        except subprocess.TimeoutExpired:
            print(f"run.py: the suite did not finish within {args.timeout:.0f} s", file=sys.stderr)
            status = 1
        finally:
            end_group(pytest)
    if status != 0:
        try:
            tail = worker_log.read_text(errors="replace").splitlines()[-60:]
        except OSError:
            tail = ["(none)"]
        print(f"\nrun.py: the worker's log ({worker_log}) ends:\n" + "\n".join(tail), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
