"""A Celery app whose worker runs `t.integration.tasks.identity` with every
serializer, to compare what a Python worker stores with what celeriac stores
(cli/tests/result_values.rs).

Broker and backend: CELERIAC_TEST_BROKER. Serializer of results and task
messages: CELERIAC_TEST_SERIALIZER (json, msgpack or yaml).
"""

import os

from celery import Celery

serializer = os.environ.get("CELERIAC_TEST_SERIALIZER", "json")
app = Celery(
    "types_app",
    broker=os.environ.get("CELERIAC_TEST_BROKER", "redis://127.0.0.1:6379/0"),
    backend=os.environ.get("CELERIAC_TEST_BROKER", "redis://127.0.0.1:6379/0"),
)
app.conf.update(
    task_serializer=serializer,
    result_serializer=serializer,
    accept_content=["json", "msgpack", "yaml"],
    result_accept_content=["json", "msgpack", "yaml"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="t.integration.tasks.identity")
def identity(x):
    return x
