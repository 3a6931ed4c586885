"""Celery app for tests/tests/redis_transport.rs: the Python worker peer.

Run as ``celery -A redis_transport_app worker`` with this directory on
PYTHONPATH. Configured from the environment:

- ``CELERIAC_BROKER_URL``: the broker;
- ``CELERIAC_TRANSPORT_OPTIONS``: JSON ``broker_transport_options``;
- ``CELERIAC_SIDE_URL``: a Redis URL where tasks leave their side effects;
- ``CELERIAC_ACKS_LATE=1``: ``task_acks_late``;
- ``CELERIAC_PREFETCH_MULTIPLIER``: ``worker_prefetch_multiplier`` (default 4).

Tasks:

- ``record(value)``: RPUSH ``celeriac:test:recorded`` json(value);
- ``block(value)``: RPUSH ``celeriac:test:started`` json(value), then wait
  (up to 10 minutes) for a key nobody pushes: a task that holds its message.
"""

import json
import os

import redis
from celery import Celery

app = Celery("redis_transport_app", broker=os.environ["CELERIAC_BROKER_URL"])
app.conf.broker_transport_options = json.loads(os.environ.get("CELERIAC_TRANSPORT_OPTIONS", "{}"))
app.conf.task_acks_late = os.environ.get("CELERIAC_ACKS_LATE") == "1"
app.conf.worker_prefetch_multiplier = int(os.environ.get("CELERIAC_PREFETCH_MULTIPLIER", "4"))
app.conf.broker_connection_retry_on_startup = True
app.conf.task_ignore_result = True

# redis-py 8 defaults to a 5 s socket timeout, too short for block().
_side = redis.Redis.from_url(os.environ.get("CELERIAC_SIDE_URL", os.environ["CELERIAC_BROKER_URL"]), socket_timeout=None)


@app.task(name="record")
def record(value):
    _side.rpush("celeriac:test:recorded", json.dumps(value))
    return value


@app.task(name="block")
def block(value):
    _side.rpush("celeriac:test:started", json.dumps(value))
    _side.blpop("celeriac:test:never", timeout=600)
    return value
