"""The Celery app a Python reference worker runs for Celery's integration suite.

``celery -A python_worker_app worker ...`` (``run.py --worker python``) gives the
external-worker mechanism a worker known to be right: the app is configured as the
suite's ``celery_session_app`` (``t/integration/conftest.py``: its ``celery_config``
over ``celery.contrib.testing.app.DEFAULT_TEST_CONFIG``), with the suite's tasks,
its class-based task and ``celery.ping``. A test that fails against this worker
cannot pass with any external worker; ``exclusions.txt`` lists those.
"""

import os

from celery.contrib.testing.app import TestApp

app = TestApp(
    config={
        "broker_url": os.environ["TEST_BROKER"],
        "result_backend": os.environ["TEST_BACKEND"],
        "result_extended": True,
        "task_create_missing_queues": False,
        "worker_hijack_root_logger": True,  # the test app's False would hide the log
    },
    enable_logging=True,
    set_as_current=True,
)
app.set_default()
app.loader.import_task_module("t.integration.tasks")

from t.integration.tasks import ClassBasedAutoRetryTask  # noqa: E402 (needs the app set)

app.register_task(ClassBasedAutoRetryTask)
