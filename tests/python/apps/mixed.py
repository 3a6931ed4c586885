"""A Celery app for mixed-fleet tests: Python tasks that celeriac sends to, and
that report what they received.

Broker and backend come from CELERIAC_TEST_BROKER / CELERIAC_TEST_BACKEND.
Run a worker with:
    celery -A mixed worker --pool=solo -Q celery,workflow.hpc --without-gossip --without-mingle
"""

import os

from celery import Celery

app = Celery(
    "mixed",
    broker=os.environ.get("CELERIAC_TEST_BROKER", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("CELERIAC_TEST_BACKEND", os.environ.get("CELERIAC_TEST_BROKER")),
)
app.conf.update(
    result_extended=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    timezone=os.environ.get("CELERIAC_TEST_TZ", "UTC"),
)


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.echo", bind=True)
def echo(self, *args, **kwargs):
    """Returns what it got: args, kwargs and the request fields celeriac sets."""
    r = self.request
    return {
        "args": list(args),
        "kwargs": kwargs,
        "id": r.id,
        "retries": r.retries,
        "eta": str(r.eta) if r.eta else None,
        "expires": str(r.expires) if r.expires else None,
        "priority": (r.delivery_info or {}).get("priority"),
        "routing_key": (r.delivery_info or {}).get("routing_key"),
        "headers": {k: v for k, v in (r.headers or {}).items() if k.startswith("x-")} if r.headers else {},
        "timelimit": list(r.timelimit) if r.timelimit else None,
        "origin": r.origin,
    }


@app.task(name="tasks.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="tasks.mul")
def mul(x, y):
    return x * y
