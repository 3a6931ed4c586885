"""The Python Celery side of scripts/bench: an app with the bench tasks.

- ``bench.noop()`` does nothing;
- ``bench.stamp(sent)`` returns ``time.time()`` at its start, so the harness
  measures enqueue-to-start from the stored result.

The broker comes from ``BENCH_BROKER``, the result backend from
``BENCH_BACKEND`` (unset: results ignored). Every task is ``acks_late``, as the
celeriac and rusty-celery workers are run in the bench.
"""

import os
import time

from celery import Celery

backend = os.environ.get("BENCH_BACKEND") or None
app = Celery("bench_app", broker=os.environ["BENCH_BROKER"], backend=backend)
app.conf.update(
    task_acks_late=True,
    task_ignore_result=backend is None,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
)


@app.task(name="bench.noop")
def noop():
    return None


@app.task(name="bench.stamp")
def stamp(sent):
    return time.time()
