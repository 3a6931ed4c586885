"""pytest plugin: Celery's integration suite against an external worker process.

Loaded with ``-p celeriac_suite_plugin`` (after ``-p celery.contrib.pytest``) by
``run.py``. Celery's ``celery_session_worker`` fixture starts an in-process worker
through ``celery.contrib.testing.worker.start_worker``; the suite's conftest
re-imports that fixture, so the fixture itself cannot be overridden, but the
function it calls can. ``pytest_configure`` replaces it with
``start_external_worker``, which

- runs the command line in ``CELERIAC_SUITE_WORKER`` (placeholders ``{broker}``,
  ``{backend}``, ``{hostname}``, ``{concurrency}``, ``{python}``), its output
  appended to ``CELERIAC_SUITE_WORKER_LOG``;
- names the worker ``anon_nodename()`` of this process (``gen<pid>@<host>``), the
  name Celery's in-process worker would have;
- is ready when the task ``celery.ping`` sent through the suite's app returns
  ``"pong"`` (the in-process worker's own check); a pidbox ``ping`` to the node is
  then tried, and required only with ``CELERIAC_SUITE_PIDBOX=require``;
- stops the worker at teardown with SIGTERM (warm shutdown), SIGKILL after
  ``CELERIAC_SUITE_STOP_TIMEOUT`` seconds. The worker stays in pytest's process
  group, which ``run.py`` ends, so no worker outlives a killed run.

Two more things the in-process worker gave the suite:

- ``Manager.wait_until_idle`` (the ``manager`` fixture's teardown) purges the
  queue, then loops on ``inspect().active()``. With no worker answering remote
  control, ``inspect().active()`` waits its 1 s timeout, returns ``None`` and the
  teardown dies on ``None.values()`` (caught and logged by the fixture), so every
  test paid 1 s and a warning. The replacement asks only our node
  (``destination``, ``limit=1``, so an answer ends the wait) when it answered the
  pidbox ping; otherwise it waits until the Redis broker holds no message of the
  worker's: the queue is empty and the ``unacked`` hash (prefetched, ETA and
  late-ack messages) is empty. A task already executing is not seen by that.
- A hung test must not hang the run (many tests call ``result.get()`` without a
  timeout). Each test's call gets ``CELERIAC_SUITE_TEST_TIMEOUT`` seconds (default
  60) and then fails. pytest-timeout would not do: pytest's ``subtests`` (used by
  ``test_revoked_by_headers_complex_canvas``) swallow its one-shot failure and the
  next subtest hangs for good; this timer fires again every 2 s until the call
  returns. ``run.py`` passes ``-p no:timeout``, so the suite's own ``timeout``
  markers (300 s) stay inert.

Exclusions (``exclusions.txt`` beside this file, or ``CELERIAC_SUITE_EXCLUSIONS``)
are applied in ``pytest_collection_modifyitems``: ``deselect`` lines are tests no
external worker can pass; ``celeriac`` lines are, when ``CELERIAC_SUITE_WORKER_KIND``
is ``celeriac``, strict xfails for what celeriac does not do yet (a test that then
passes fails the run, so its line gets removed); ``slow <test> <seconds> <reason>``
lines give a test that is slow by design (it waits out timeouts to prove that
something does not happen) a longer per-test limit than
``CELERIAC_SUITE_TEST_TIMEOUT``, with any worker. With ``CELERIAC_SUITE_CHECK_STALE=1``
(set by ``run.py`` for a whole-file run) a line that matches no collected test is
an error.
"""

import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
KINDS = ("deselect", "celeriac", "slow")


def _env_float(name, default):
    value = os.environ.get(name)
    return float(value) if value else default


@dataclass
class ExternalWorker:
    """What the ``celery_session_worker`` fixture yields instead of a WorkController."""

    hostname: str
    command: list
    pid: int
    log_path: str
    answers_pidbox: bool = False
    proc: subprocess.Popen = field(default=None, repr=False)
    #: Node names of the other workers of a mixed fleet on the same queue.
    peers: list = field(default_factory=list)


#: The running worker, for the ``wait_until_idle`` replacement.
CURRENT = None


def _log_tail(path, lines=40):
    try:
        with open(path, "rb") as f:
            data = f.read()[-16000:]
    except OSError:
        return "(no worker log)"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def _wait_for_pong(app, proc, log_path, timeout):
    """Send one ``celery.ping`` and wait for ``"pong"``, failing early if the worker exits."""
    from celery.exceptions import TimeoutError as CeleryTimeout
    from celery.result import allow_join_result

    result = app.send_task("celery.ping")
    deadline = time.monotonic() + timeout
    with allow_join_result():
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"the external worker exited with {proc.returncode} before it answered "
                    f"celery.ping; its log ({log_path}) ends:\n{_log_tail(log_path)}")
            try:
                value = result.get(timeout=0.5)
            except CeleryTimeout:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the external worker did not answer celery.ping within {timeout} s; "
                        f"its log ({log_path}) ends:\n{_log_tail(log_path)}") from None
                continue
            if value != "pong":
                raise RuntimeError(f"celery.ping returned {value!r}, not 'pong'")
            return


def _wait_for_nodes(app, nodes, proc, log_path, timeout):
    """Wait until every node of a mixed fleet answers a pidbox ping."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"a worker of the fleet exited with {proc.returncode}; its log "
                               f"({log_path}) ends:\n{_log_tail(log_path)}")
        replies = app.control.ping(destination=nodes, timeout=1.0) or []
        answered = {name for reply in replies for name in reply}
        if all(node in answered for node in nodes):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"workers {sorted(set(nodes) - answered)} did not answer a pidbox ping "
                               f"within {timeout} s")


def _stop(proc, timeout):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        sys.stderr.write(f"celeriac_suite_plugin: the worker did not stop within {timeout} s; killing it\n")
        proc.kill()
    proc.wait()


@contextmanager
def start_external_worker(app, concurrency=1, pool="solo", loglevel=None, logfile=None,
                          perform_ping_check=True, ping_task_timeout=10.0, shutdown_timeout=10.0,
                          **kwargs):
    """Drop-in for ``celery.contrib.testing.worker.start_worker``: an external worker process."""
    global CURRENT
    from celery.contrib.testing import worker as testing_worker
    from celery.utils.nodenames import anon_nodename

    template = os.environ.get("CELERIAC_SUITE_WORKER")
    if not template:
        raise RuntimeError("CELERIAC_SUITE_WORKER (the external worker's command line) is not set")
    hostname = kwargs.get("hostname") or anon_nodename()
    # The suite's worker runs prefork with concurrency 1; an external one gets a few slots
    # so that the tests that fill the queue with sleeping tasks still finish in time.
    concurrency = int(os.environ.get("CELERIAC_SUITE_CONCURRENCY", "4"))
    command = shlex.split(template.format(
        broker=app.conf.broker_url, backend=app.conf.result_backend, hostname=hostname,
        concurrency=concurrency, python=sys.executable))
    log_path = os.environ.get("CELERIAC_SUITE_WORKER_LOG") or os.path.join(
        os.environ.get("TMPDIR", "/tmp"), f"celeriac-suite-worker-{os.getpid()}.log")

    app.finalize()
    app.set_current()
    app.set_default()
    testing_worker.test_worker_starting.send(sender=app)
    with open(log_path, "ab") as log:
        log.write(f"\n=== {' '.join(command)}\n".encode())
        log.flush()
        # In pytest's process group: run.py ends that group, so no worker outlives a killed run.
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    worker = ExternalWorker(hostname=hostname, command=command, pid=proc.pid, log_path=log_path, proc=proc)
    peer_procs = []
    peer_template = os.environ.get("CELERIAC_SUITE_WORKER_PEER")
    if peer_template:
        # A mixed fleet: a second worker (another implementation) on the same queue.
        peer_host = f"py-{hostname}"
        peer_command = shlex.split(peer_template.format(
            broker=app.conf.broker_url, backend=app.conf.result_backend, hostname=hostname,
            concurrency=concurrency, python=sys.executable))
        with open(f"{log_path}.peer", "ab") as log:
            log.write(f"\n=== {' '.join(peer_command)}\n".encode())
            log.flush()
            peer_procs.append(subprocess.Popen(peer_command, stdin=subprocess.DEVNULL, stdout=log,
                                               stderr=subprocess.STDOUT))
        worker.peers.append(peer_host)
    try:
        _wait_for_pong(app, proc, log_path, _env_float("CELERIAC_SUITE_READY_TIMEOUT", 60.0))
        if peer_procs:
            _wait_for_nodes(app, [hostname, *worker.peers], peer_procs[0], f"{log_path}.peer",
                            _env_float("CELERIAC_SUITE_READY_TIMEOUT", 60.0))
        pidbox = os.environ.get("CELERIAC_SUITE_PIDBOX", "optional")
        if pidbox != "off":
            replies = app.control.ping(destination=[hostname], timeout=_env_float("CELERIAC_SUITE_PIDBOX_TIMEOUT", 2.0))
            worker.answers_pidbox = any(hostname in reply for reply in replies or ())
            if pidbox == "require" and not worker.answers_pidbox:
                raise RuntimeError(f"the external worker {hostname} did not answer a pidbox ping")
        sys.stderr.write(
            f"\nceleriac_suite_plugin: external worker {hostname} (pid {proc.pid}) ready; "
            f"answers remote control: {worker.answers_pidbox}; log: {log_path}\n")
        CURRENT = worker
        yield worker
    finally:
        CURRENT = None
        _stop(proc, _env_float("CELERIAC_SUITE_STOP_TIMEOUT", 20.0))
        for peer in peer_procs:
            _stop(peer, _env_float("CELERIAC_SUITE_STOP_TIMEOUT", 20.0))
        testing_worker.test_worker_stopped.send(sender=app, worker=worker)


def wait_until_idle(self):
    """``Manager.wait_until_idle`` for an external worker (see the module docstring)."""
    deadline = time.monotonic() + _env_float("CELERIAC_SUITE_IDLE_TIMEOUT", 30.0)
    control = self.app.control
    with self.app.connection() as connection:
        while control.purge(connection=connection):
            pass
        worker = CURRENT
        if worker is not None and worker.answers_pidbox:
            nodes = [worker.hostname, *worker.peers]
            inspect = control.inspect(destination=nodes, limit=len(nodes), timeout=5.0,
                                      connection=connection)
            while True:
                replies = inspect.active() or {}
                if all(node in replies and not replies[node] for node in nodes):
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the worker still reports active tasks: {replies!r}")
                time.sleep(0.1)
        broker = self.app.conf.broker_url or ""
        if not broker.startswith(("redis://", "rediss://")):
            return
        import redis

        client = redis.Redis.from_url(broker)
        try:
            while True:
                queued = client.llen(self.app.conf.task_default_queue)
                unacked = client.hlen("unacked")
                if queued == 0 and unacked == 0:
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the broker still holds messages: {queued} queued, {unacked} unacked")
                time.sleep(0.1)
        finally:
            client.close()


@dataclass
class Exclusion:
    kind: str
    test: str
    reason: str
    line: int
    matched: int = 0


def load_exclusions(path):
    """``<kind> <test id> <reason>`` lines; ``#`` starts a comment line."""
    exclusions = []
    for number, raw in enumerate(Path(path).read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3 or parts[0] not in KINDS:
            raise pytest.UsageError(f"{path}:{number}: expected '<{'|'.join(KINDS)}> <test id> <reason>'")
        if parts[0] == "slow":
            seconds = parts[2].split(None, 1)[0]
            try:
                float(seconds)
            except ValueError:
                raise pytest.UsageError(f"{path}:{number}: expected 'slow <test id> <seconds> <reason>'") from None
        exclusions.append(Exclusion(parts[0], parts[1], parts[2], number))
    return exclusions


def _matches(exclusion, item):
    """The id names the test (``file::class::name``) or one parametrization of it."""
    nodeid = item.nodeid.split("/")[-1]  # t/integration/test_tasks.py::... -> test_tasks.py::...
    return nodeid == exclusion.test or nodeid.split("[", 1)[0] == exclusion.test


def pytest_configure(config):
    from celery.contrib.testing import manager, worker

    worker.start_worker = start_external_worker
    manager.ManagerMixin.wait_until_idle = wait_until_idle


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    """Fail a test whose call runs past CELERIAC_SUITE_TEST_TIMEOUT (see the module docstring)."""
    # A test slow by design (a ``slow`` line in the exclusions) gets its own, longer limit.
    limit = max(_env_float("CELERIAC_SUITE_TEST_TIMEOUT", 60.0), getattr(item, "celeriac_slow_limit", 0.0))

    def expired(signum, frame):
        signal.setitimer(signal.ITIMER_REAL, 2.0)  # again, should a subtest swallow this one
        pytest.fail(f"Timeout: the test ran for more than {limit:.0f} s (CELERIAC_SUITE_TEST_TIMEOUT)",
                    pytrace=True)

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    path = os.environ.get("CELERIAC_SUITE_EXCLUSIONS") or HERE / "exclusions.txt"
    exclusions = load_exclusions(path)
    kind = os.environ.get("CELERIAC_SUITE_WORKER_KIND", "")
    collected_files = {item.nodeid.split("::", 1)[0].split("/")[-1] for item in items}
    keep, deselected = [], []
    for item in items:
        hit = None
        for exclusion in exclusions:
            if _matches(exclusion, item):
                exclusion.matched += 1
                if exclusion.kind == "slow":
                    item.celeriac_slow_limit = float(exclusion.reason.split(None, 1)[0])
                    if os.environ.get("CELERIAC_SUITE_SKIP_SLOW") == "1":
                        # scripts/test's budget: these pass, but wait out minutes of timeouts.
                        item.add_marker(pytest.mark.skip(reason=f"slow by design: {exclusion.reason}"))
                    continue
                hit = hit or exclusion
        if hit is not None and hit.kind == "deselect":
            deselected.append(item)
            continue
        if hit is not None and hit.kind == "celeriac" and kind in ("celeriac", "mixed"):
            if os.environ.get("CELERIAC_SUITE_SKIP_TODO") == "1":
                # Tests with subtests cannot be strict xfails (a failed subtest
                # fails the test), and each would wait out its timeout.
                item.add_marker(pytest.mark.skip(reason=f"celeriac (not yet): {hit.reason}"))
            else:
                item.add_marker(pytest.mark.xfail(reason=f"celeriac: {hit.reason}", strict=True))
        keep.append(item)
    stale = [e for e in exclusions if not e.matched and e.test.split("::", 1)[0] in collected_files]
    if stale and os.environ.get("CELERIAC_SUITE_CHECK_STALE") == "1":
        listing = "\n".join(f"  {path}:{e.line}: {e.test}" for e in stale)
        raise pytest.UsageError(f"exclusions that match no collected test:\n{listing}")
    if deselected:
        config.hook.pytest_deselected(items=deselected)
    items[:] = keep
