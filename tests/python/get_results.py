#!/usr/bin/env python3
"""Waits for task results with Python Celery and prints them as JSON lines.

    get_results.py --backend URL [--timeout S] ID...

Each line: {"id", "state", "result" | "exc_type", "exc_module", "exc_args", "done_at"}
(`done_at`: the record's date_done as a POSIX timestamp).
Exit 1 if any result did not arrive in time.
"""

import argparse
import json
import sys

from celery import Celery
from celery.exceptions import TimeoutError as CeleryTimeout


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("ids", nargs="+")
    a = p.parse_args()
    app = Celery("reader", broker=a.backend, backend=a.backend)
    status = 0
    for task_id in a.ids:
        line = wait_line(app.AsyncResult(task_id), a.timeout)
        status |= line["state"] == "TIMEOUT"
        print(json.dumps(line, default=str), flush=True)
    return status


def wait_line(res, timeout: float) -> dict:
    """What `res.get()` gave: the value, or the exception Celery re-raised."""
    line = {"id": res.id}
    try:
        value = res.get(timeout=timeout, propagate=True, disable_sync_subtasks=False)
        line.update(state=res.state, result=value)
    except CeleryTimeout:
        line.update(state="TIMEOUT")
    except Exception as exc:  # the task's exception, re-raised by Celery
        line.update(state=res.state, exc_type=type(exc).__name__, exc_module=type(exc).__module__,
                    exc_args=[str(x) for x in exc.args])
    if line["state"] != "TIMEOUT" and res.date_done is not None:
        line["done_at"] = res.date_done.timestamp()
    return line


if __name__ == "__main__":
    sys.exit(main())
