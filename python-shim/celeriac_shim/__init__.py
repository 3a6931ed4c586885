"""The Python side of a mixed Celery/celeriac fleet.

celeriac workers speak Celery's own protocol, so plain ``app.send_task(name, ...)``
already calls a Rust task from Python. This package will add what makes that
pleasant: routing Rust task names to the queues celeriac workers consume, typed
stubs generated from a worker's task manifest, and export of a Celery
``beat_schedule`` to celeriac beat's TOML.

Nothing beyond the version lives here yet.
"""

__version__ = "0.1.0"
