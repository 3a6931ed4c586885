#!/usr/bin/env python3
"""RedBeat's own classes, for celeriac beat's interop tests.

    redbeat_peer.py --redis URL create NAME TASK (--every S | --crontab "m h dom mon dow")
                    [--args JSON] [--kwargs JSON] [--options JSON]
    redbeat_peer.py --redis URL read NAME [NAME ...]
    redbeat_peer.py --redis URL delete NAME

`create` saves an entry with `RedBeatSchedulerEntry(...).save()`, as an
application adds a schedule at run time. `read` loads entries with
`RedBeatSchedulerEntry.from_key` and prints, per entry, one JSON line: what
RedBeat understands of it (task, args, kwargs, options, schedule, last run,
run count, RedBeat's `due_at` (its zset score), whether it is due now, and
in how many seconds `is_due` says to look again).
"""

import argparse
import json
import sys
import time
from datetime import timezone

from celery import Celery
from celery.schedules import crontab, schedule
from redbeat import RedBeatSchedulerEntry


def app_for(url: str, prefix: str) -> Celery:
    app = Celery("redbeat_peer", broker=url, set_as_current=False)
    app.conf.update(redbeat_redis_url=url, redbeat_key_prefix=prefix, timezone="UTC")
    return app


def describe(sched):
    if isinstance(sched, crontab):
        return {"type": "crontab", "minute": sorted(sched.minute), "hour": sorted(sched.hour),
                "day_of_week": sorted(sched.day_of_week), "day_of_month": sorted(sched.day_of_month),
                "month_of_year": sorted(sched.month_of_year)}
    if isinstance(sched, schedule):
        return {"type": "interval", "every": sched.run_every.total_seconds(), "relative": bool(sched.relative)}
    return {"type": type(sched).__name__, "repr": repr(sched)}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--redis", required=True)
    p.add_argument("--prefix", default="redbeat:")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("create")
    c.add_argument("name")
    c.add_argument("task")
    c.add_argument("--every", type=float)
    c.add_argument("--crontab")
    c.add_argument("--args", default="[]")
    c.add_argument("--kwargs", default="{}")
    c.add_argument("--options", default="{}")
    r = sub.add_parser("read")
    r.add_argument("names", nargs="+")
    d = sub.add_parser("delete")
    d.add_argument("name")
    a = p.parse_args()
    app = app_for(a.redis, a.prefix)

    if a.cmd == "create":
        sched = schedule(a.every) if a.every else crontab.from_string(a.crontab)
        entry = RedBeatSchedulerEntry(a.name, a.task, sched, args=json.loads(a.args), kwargs=json.loads(a.kwargs),
                                      options=json.loads(a.options), app=app)
        entry.save()
        print(json.dumps({"key": entry.key}))
    elif a.cmd == "read":
        for name in a.names:
            entry = RedBeatSchedulerEntry.from_key(a.prefix + name, app=app)
            now = time.time()
            due, next_in = entry.is_due()
            last = entry.last_run_at
            due_at = entry.due_at
            print(json.dumps({
                "name": entry.name, "task": entry.task, "args": list(entry.args or []), "kwargs": entry.kwargs,
                "options": entry.options, "enabled": entry.enabled, "schedule": describe(entry.schedule),
                "last_run_at": last.astimezone(timezone.utc).timestamp() if last else None,
                "total_run_count": entry.total_run_count,
                "due_at": due_at.astimezone(timezone.utc).timestamp() if due_at else None,
                "is_due": bool(due), "next_in": next_in, "now": now,
            }))
    elif a.cmd == "delete":
        RedBeatSchedulerEntry(a.name, app=app).delete()
    return 0


if __name__ == "__main__":
    sys.exit(main())
