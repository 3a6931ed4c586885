"""The Python side of a mixed Celery/celeriac fleet.

celeriac workers speak Celery's own protocol, so ``app.send_task(name, ...)``
already calls a Rust task from Python. This package adds what makes that
pleasant, from the task manifest a celeriac binary prints
(``celeriac tasks --json``, or ``my-worker tasks --json`` from a binary made
with ``celeriac::main_with``):

- :func:`attach` registers every Rust task in a Celery app as a routed proxy:
  ``app.tasks["science.calibrate"].delay(42, detector="d7")`` goes to the
  task's queue, wrong arguments fail in Python before anything is sent, and
  ``task_routes`` gain the Rust queues;
- ``python -m celeriac_shim stubs MANIFEST`` writes a typed ``.pyi``;
- ``python -m celeriac_shim export-beat module:app`` writes an app's
  ``beat_schedule`` as celeriac beat TOML.
"""

from .manifest import Manifest, TaskSpec, load_manifest
from .proxy import RustTask, RustTasks, attach

__all__ = ["Manifest", "TaskSpec", "load_manifest", "RustTask", "RustTasks", "attach"]
__version__ = "0.1.0"
