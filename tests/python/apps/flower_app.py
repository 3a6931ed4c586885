"""The app Flower runs with (`celery -A flower_app flower`) when it watches
celeriac workers: stubs named like celeriac's tasks.

Flower's rate-limit and time-limit buttons (/api/task/rate-limit/<name>,
/api/task/timeout/<name>) and its apply endpoints look the task up in Flower's
own app first and answer 404 "Unknown task" for a name it has not imported,
whichever worker runs it. Declaring the Rust tasks' names here is enough; the
stubs never run. Broker from CELERIAC_TEST_BROKER.
"""

import os

from celery import Celery

app = Celery("flower_app", broker=os.environ.get("CELERIAC_TEST_BROKER", "redis://127.0.0.1:6379/0"))


@app.task(name="t.integration.tasks.add")
def add(x, y):
    raise NotImplementedError("runs on celeriac")


@app.task(name="t.integration.tasks.sleeping")
def sleeping(i, **_):
    raise NotImplementedError("runs on celeriac")
