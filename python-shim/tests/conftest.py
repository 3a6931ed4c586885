"""Fixtures of the shim's suite: a private redis-server, a real celeriac
worker binary (the example `science-worker`, a user's own binary made with
`celeriac::main_with`), its task manifest, and a Celery app on that Redis.

The binary is `$CELERIAC_SHIM_WORKER`, else `target/debug/science-worker`
(`cargo build -p celeriac-example-worker`). Without it or redis-server the
tests are skipped, unless CI or CELERIAC_REQUIRE_PEERS=1 is set: then they fail.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from celery import Celery

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "python-shim"))


def _required() -> bool:
    return bool(os.environ.get("CI")) or os.environ.get("CELERIAC_REQUIRE_PEERS") == "1"


def _missing(what: str):
    if _required():
        pytest.fail(f"{what} is missing (CELERIAC_REQUIRE_PEERS=1)")
    pytest.skip(f"{what} is missing")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="session")
def worker_bin() -> str:
    path = os.environ.get("CELERIAC_SHIM_WORKER") or str(
        Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target")) / "debug" / "science-worker"
    )
    if not os.access(path, os.X_OK):
        _missing(f"the celeriac worker binary {path} (cargo build -p celeriac-example-worker)")
    return path


@pytest.fixture(scope="session")
def redis_url():
    server = shutil.which("redis-server")
    if not server:
        _missing("redis-server")
    d = tempfile.mkdtemp(prefix="celeriac-shim-")
    port = _free_port()
    proc = subprocess.Popen(
        [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", d],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(200):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.02)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def manifest_path(worker_bin, tmp_path_factory) -> Path:
    out = subprocess.run([worker_bin, "tasks", "--json"], check=True, capture_output=True, text=True).stdout
    path = tmp_path_factory.mktemp("manifest") / "tasks.json"
    path.write_text(out)
    return path


@pytest.fixture(scope="session")
def worker(worker_bin, redis_url, tmp_path_factory):
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    proc = subprocess.Popen(
        [worker_bin, "worker", "-b", redis_url, "--result-backend", redis_url, "-Q", "celery,science",
         "-n", "shim@%h", "-c", "2"],
        stdout=open(log, "w"),
        stderr=subprocess.PIPE,
        text=True,
    )
    ready = threading.Event()

    def pump():
        with open(log, "a") as f:
            for line in proc.stderr:
                f.write(line)
                if " ready." in line:
                    ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(30):
        proc.kill()
        pytest.fail(f"the celeriac worker did not start:\n{log.read_text()}")
    yield proc
    proc.terminate()
    proc.wait(30)


@pytest.fixture()
def app(redis_url):
    a = Celery("shim-test", broker=redis_url, backend=redis_url)
    a.conf.broker_connection_retry_on_startup = True
    yield a
    a.close()


@pytest.fixture()
def redis_client(redis_url):
    import redis

    return redis.Redis.from_url(redis_url)


def load(path: Path) -> dict:
    return json.loads(path.read_text())
