"""The Celery app whose Python worker runs the canvases celeriac's client
sends (client/tests/python_worker.rs). Broker and backend come from
CELERIAC_TEST_BROKER.
"""

import os

from celery import Celery

app = Celery(
    "canvas_app",
    broker=os.environ.get("CELERIAC_TEST_BROKER", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("CELERIAC_TEST_BROKER", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    result_extended=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="tasks.add")
def add(x, y):
    return x + y


@app.task(name="tasks.mul")
def mul(x, y):
    return x * y


@app.task(name="tasks.tsum")
def tsum(values):
    return sum(values)


@app.task(name="tasks.echo", bind=True)
def echo(self, *args, **kwargs):
    """What it got, and the request fields the options set."""
    r = self.request
    return {
        "args": list(args),
        "kwargs": kwargs,
        "priority": (r.delivery_info or {}).get("priority"),
        "routing_key": (r.delivery_info or {}).get("routing_key"),
        "headers": {k: v for k, v in (r.headers or {}).items() if k.startswith("x-")} if r.headers else {},
        "timelimit": list(r.timelimit) if r.timelimit else None,
        "stamps": dict(r.stamps or {}),
    }


@app.task(name="tasks.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="tasks.on_error")
def on_error(task_id):
    return f"handled {task_id}"
