"""A Celery app for celeriac beat's tests: the tasks beat sends (a slow poll
that records when each run starts and ends), and RedBeat's settings for
running `celery beat -S redbeat.RedBeatScheduler` against the same Redis.

Broker, backend and RedBeat's Redis come from CELERIAC_TEST_BROKER,
CELERIAC_TEST_BACKEND and CELERIAC_TEST_REDBEAT.
"""

import os
import time

import redis
from celery import Celery

BROKER = os.environ.get("CELERIAC_TEST_BROKER", "redis://127.0.0.1:6379/0")
app = Celery("beat_app", broker=BROKER, backend=os.environ.get("CELERIAC_TEST_BACKEND", BROKER))
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    timezone="UTC",
    redbeat_redis_url=os.environ.get("CELERIAC_TEST_REDBEAT", BROKER),
    redbeat_lock_timeout=float(os.environ.get("CELERIAC_TEST_REDBEAT_LOCK", "5")),
    beat_max_loop_interval=1,
)


def _log():
    return redis.Redis.from_url(os.environ.get("CELERIAC_TEST_BACKEND", BROKER))


@app.task(name="beat_app.slow_poll", bind=True)
def slow_poll(self, seconds):
    """A poll that takes `seconds`; its start and end land in the list `beat_app:runs`."""
    log = _log()
    log.rpush("beat_app:runs", f"start {self.request.id} {time.time()}")
    time.sleep(seconds)
    log.rpush("beat_app:runs", f"end {self.request.id} {time.time()}")
    return seconds


@app.task(name="beat_app.tick")
def tick(*args, **kwargs):
    return "tick"


# `celery beat` (the default PersistentScheduler) runs the entries given as
# JSON in CELERIAC_TEST_BEAT_SCHEDULE, so tests can compare its messages with
# celeriac's: {"name": {"task": ..., "schedule": seconds, "args": [...], "options": {...}}}.
if os.environ.get("CELERIAC_TEST_BEAT_SCHEDULE"):
    import json as _json

    app.conf.beat_schedule = _json.loads(os.environ["CELERIAC_TEST_BEAT_SCHEDULE"])
