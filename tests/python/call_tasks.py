#!/usr/bin/env python3
"""Sends tasks by name with Python Celery, then waits for each result.

    call_tasks.py --broker URL --backend URL [--timeout S] < calls.json

stdin: a JSON list of {"name", "args"?, "kwargs"?, "options"?} (options are
`apply_async`'s: queue, countdown, priority, time_limit, ...). Prints one JSON
line per call, as get_results.py does, after all were sent. `--no-wait` prints
only the ids. Exit 1 if any result did not arrive in time.
"""

import argparse
import json
import sys

from celery import Celery

from get_results import wait_line


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--no-wait", action="store_true")
    a = p.parse_args()
    app = Celery("caller", broker=a.broker, backend=a.backend)
    app.conf.result_extended = True
    sent = [
        app.send_task(c["name"], args=c.get("args", []), kwargs=c.get("kwargs", {}), **c.get("options", {}))
        for c in json.load(sys.stdin)
    ]
    status = 0
    for res in sent:
        line = {"id": res.id} if a.no_wait else wait_line(res, a.timeout)
        status |= line.get("state") == "TIMEOUT"
        print(json.dumps(line, default=str), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
