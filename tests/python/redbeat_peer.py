#!/usr/bin/env python3
"""RedBeat's own classes, for celeriac beat's interop tests.

    redbeat_peer.py --redis URL create NAME TASK (--every S | --crontab "m h dom mon dow")
                    [--args JSON] [--kwargs JSON] [--options JSON]
    redbeat_peer.py --redis URL read NAME [NAME ...]
    redbeat_peer.py --redis URL delete NAME
    redbeat_peer.py --redis URL broken
    redbeat_peer.py --redis URL definition NAME JSON
    redbeat_peer.py --redis URL truthiness

`create` saves an entry with `RedBeatSchedulerEntry(...).save()`, as an
application adds a schedule at run time. `read` loads entries with
`RedBeatSchedulerEntry.from_key` and prints, per entry, one JSON line: what
RedBeat understands of it (task, args, kwargs, options, schedule, last run,
run count, RedBeat's `due_at` (its zset score), whether it is due now, and
in how many seconds `is_due` says to look again).

`broken` writes, with redis-py, every broken shape an entry can take in
RedBeat's layout (wrong JSON types, NaN/inf/1e300/negative numbers, text
that is not UTF-8 or not JSON, deep nesting, fields of megabytes, keys of
the wrong type, zset members that are not UTF-8) beside good entries with
odd scores (inf, -inf, 1e300) and a hash of 10 000 fields, and prints one
JSON object: the broken keys with a fragment of the reason celeriac should
give, the good entries (each sends its label as its only argument to queue
`good`), and whether Redis refused a NaN score. `definition` overwrites an
entry's definition with JSON text. `truthiness` writes entries whose
`enabled` is each JSON value Python may read as true or false and prints,
per entry, whether RedBeat (Python) finds it enabled.
"""

import argparse
import json
import sys
import time
from datetime import timezone

import redis
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


def interval(every=1.0):
    return {"__type__": "interval", "every": every, "relative": False}


def definition(entry_name, **over):
    d = {"name": entry_name, "task": "beat_app.tick", "args": [entry_name], "kwargs": {}, "options": {"queue": "broken"},
         "schedule": interval(), "enabled": True}
    d.update(over)
    return d


def crontab_with(**fields):
    c = {"__type__": "crontab", "minute": "*", "hour": "*", "day_of_week": "*", "day_of_month": "*",
         "month_of_year": "*"}
    c.update(fields)
    return c


def rrule_with(**fields):
    r = {"__type__": "rrule", "freq": 5, "interval": 1, "dtstart": int(time.time()), "dtstart_tz": 0, "count": None}
    r.update(fields)
    return r


def datetime_with(**fields):
    d = {"__type__": "datetime", "year": 2026, "month": 1, "day": 1, "hour": 0, "minute": 0, "second": 0,
         "microsecond": 0, "timezone": "UTC"}
    d.update(fields)
    return d


def write_broken(r: "redis.Redis", prefix: str):
    """Writes the catalogue; returns (broken [{key, expect}], good [labels], NaN refused)."""
    schedule_key = prefix + ":schedule"
    now = time.time()
    broken, good = [], []

    def put(label, fields, expect, score=None):
        key = prefix + "bad-" + label
        r.delete(key)
        r.hset(key, mapping=fields)
        r.zadd(schedule_key, {key: now if score is None else score})
        broken.append({"key": key, "expect": expect})

    def put_definition(label, expect, **over):
        put(label, {"definition": json.dumps(definition("bad-" + label, **over))}, expect)

    put("not-json", {"definition": b'{"name": '}, "not JSON")
    put("not-utf8", {"definition": b"\xff\xfe{}"}, "not UTF-8")
    put("not-object", {"definition": b"[1, 2]"}, "not a JSON object")
    put_definition("task-number", "task 42", task=42)
    put_definition("no-schedule", "no schedule", schedule=None)
    put_definition("args-text", "args \"abc\" is not a list", args="abc")
    put_definition("kwargs-list", "kwargs [1] is not an object", kwargs=[1])
    put_definition("options-text", "options \"q\" is not an object", options="q")
    put_definition("expires-1e300", "options.expires", options={"queue": "broken", "expires": 1e300})
    put_definition("countdown-negative", "options.countdown", options={"countdown": -1})
    put_definition("priority-1e300", "options.priority", options={"priority": 1e300})
    put_definition("eta-garbage", "options.eta", options={"eta": "soon-ish"})
    put_definition("headers-list", "options.headers", options={"headers": [1, 2]})
    put_definition("every-nan", "not JSON", schedule=interval(float("nan")))
    put_definition("every-inf", "not JSON", schedule=interval(float("inf")))
    put_definition("every-1e300", "every=1e300", schedule=interval(1e300))
    put_definition("every-negative", "every=-5", schedule=interval(-5))
    put_definition("every-zero", "every=0", schedule=interval(0))
    put_definition("every-tiny", "every=1e-300", schedule=interval(1e-300))
    put_definition("every-text", "every=\"10\"", schedule=interval("10"))
    put_definition("every-bool", "every=true", schedule=interval(True))
    put_definition("every-huge-int", "every", schedule=interval(10 ** 400))
    put_definition("cron-minute-1e300", "is not a whole number", schedule=crontab_with(minute=1e300))
    put_definition("cron-minute-negative", "minute -1", schedule=crontab_with(minute=-1))
    put_definition("cron-step-zero", "above 0", schedule=crontab_with(minute="*/0"))
    put_definition("cron-nested", "hour [[1]]", schedule=crontab_with(hour=[[1]]))
    put_definition("cron-dow-7", "Sunday is 0", schedule=crontab_with(day_of_week=7))
    put_definition("cron-object", "minute {", schedule=crontab_with(minute={"a": 1}))
    put_definition("cron-never", "never occurs", schedule=crontab_with(day_of_month=31, month_of_year=2))
    put_definition("rrule-freq", "freq 99", schedule=rrule_with(freq=99))
    put_definition("rrule-dtstart-1e300", "dtstart", schedule=rrule_with(dtstart=1e300))
    put_definition("rrule-interval-zero", "interval 0", schedule=rrule_with(interval=0))
    put_definition("rrule-count-negative", "count -1", schedule=rrule_with(count=-1))
    put_definition("rrule-tz-1e300", "dtstart_tz", schedule=rrule_with(dtstart_tz=1e300))
    put_definition("type-solar", "solar", schedule={"__type__": "solar", "event": "sunrise"})
    put_definition("schedule-list", "schedule [1]", schedule=[1])
    deep = []
    for _ in range(100):
        deep = [deep]
    put_definition("args-deep-100", "nest", args=deep)
    put("args-deep-100000", {"definition": b'{"args": ' + b"[" * 100000 + b"]" * 100000 + b"}"}, "not JSON")
    put_definition("definition-2mb", "bytes", args=["x" * 2_000_000])
    put_definition("name-mismatch", "is not the key's name", name="someone-else")
    ok = json.dumps(definition("x"))

    def with_meta(label, meta, expect):
        d = json.dumps(definition("bad-" + label))
        put(label, {"definition": d, "meta": meta if isinstance(meta, bytes) else json.dumps(meta)}, expect)

    with_meta("meta-not-json", b"{", "meta is not JSON")
    with_meta("meta-not-object", [1], "meta [1]")
    with_meta("meta-year-1e300", {"last_run_at": datetime_with(year=1e300)}, "year")
    with_meta("meta-year-huge", {"last_run_at": datetime_with(year=10 ** 30)}, "year")
    with_meta("meta-microsecond-huge", {"last_run_at": datetime_with(microsecond=10 ** 12)}, "microsecond")
    with_meta("meta-month-13", {"last_run_at": datetime_with(month=13)}, "datetime")
    with_meta("meta-zone-unknown", {"last_run_at": datetime_with(timezone="Mars/Olympus")}, "Mars/Olympus")
    with_meta("meta-zone-1e300", {"last_run_at": datetime_with(timezone=1e300)}, "out of range")
    with_meta("meta-last-run-text", {"last_run_at": "yesterday"}, "datetime")
    with_meta("meta-count-negative", {"last_run_at": None, "total_run_count": -1}, "total_run_count -1")
    with_meta("meta-count-text", {"last_run_at": None, "total_run_count": "x"}, "total_run_count")
    with_meta("meta-count-1e300", {"last_run_at": None, "total_run_count": 1e300}, "total_run_count")

    def with_field(label, name, value, expect):
        put(label, {"definition": json.dumps(definition("bad-" + label)), name: value}, expect)

    with_field("celeriac-negative", "celeriac", '{"max_catch_up": -1}', "celeriac field")
    with_field("celeriac-unknown", "celeriac", '{"no_overlapp": true}', "celeriac field")
    with_field("celeriac-deadline-1e300", "celeriac", '{"starting_deadline": 1e300}', "starting_deadline")
    with_field("celeriac-catch-up-huge", "celeriac", '{"catch_up": "all", "max_catch_up": 4000000000}',
               "max_catch_up")
    with_field("run-list", "celeriac_run", "[]", "celeriac_run")
    with_field("run-count-overflow", "celeriac_run", '{"missed": 1e300}', "celeriac_run")
    with_field("run-pending-garbage", "celeriac_run", json.dumps({"pending": {"slot": "x" * 5000, "task_id": "$"}}),
               "pending send")
    with_field("celeriac-list", "celeriac", '["Europe/Berlin", true]', "not an object")
    put("no-definition", {"meta": json.dumps({"last_run_at": None})}, "no definition")
    for kind in ("string", "list"):
        key = prefix + "bad-type-" + kind
        r.delete(key)
        if kind == "string":
            r.set(key, ok)
        else:
            r.rpush(key, ok)
        r.zadd(schedule_key, {key: now})
        broken.append({"key": key, "expect": "a Redis " + kind + ", not a hash"})
    member = prefix.encode() + b"bad-\xff"
    r.hset(member, mapping={"definition": ok})
    r.zadd(schedule_key, {member: now})
    broken.append({"key": prefix + "bad-\\xff", "expect": "not UTF-8"})

    def put_good(label, score=None, **fields):
        key = prefix + label
        d = definition(label, options={"queue": "good"})
        d.update(fields.pop("over", {}))
        r.delete(key)
        r.hset(key, mapping={"definition": json.dumps(d), **fields})
        r.zadd(schedule_key, {key: now if score is None else score})
        good.append(label)

    put_good("good-score-inf", score=float("inf"))
    put_good("good-score-neginf", score=float("-inf"))
    put_good("good-score-1e300", score=1e300)
    put_good("good-huge-hash", **{f"junk-{i}": "x" * 100 for i in range(10_000)})
    put_good("good-enabled-text", over={"enabled": "yes"})
    try:
        r.zadd(schedule_key, {prefix + "good-score-inf": float("nan")})
        nan_refused = False
    except redis.ResponseError:
        nan_refused = True
    return broken, good, nan_refused


# `enabled` values and Python's verdict on them, written by `truthiness`.
ENABLED_VALUES = [True, False, None, 0, 1, 0.0, 2.5, "", "no", [], [0], {}, {"a": 1}]


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
    sub.add_parser("broken")
    f = sub.add_parser("definition")
    f.add_argument("name")
    f.add_argument("json")
    sub.add_parser("truthiness")
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
    elif a.cmd == "broken":
        broken, good, nan_refused = write_broken(redis.Redis.from_url(a.redis), a.prefix)
        print(json.dumps({"broken": broken, "good": good, "nan_refused": nan_refused}))
    elif a.cmd == "definition":
        redis.Redis.from_url(a.redis).hset(a.prefix + a.name, "definition", a.json)
    elif a.cmd == "truthiness":
        r = redis.Redis.from_url(a.redis)
        for i, value in enumerate(ENABLED_VALUES):
            name = f"enabled-{i}"
            d = definition(name, enabled=value)
            r.hset(a.prefix + name, "definition", json.dumps(d))
            r.zadd(a.prefix + ":schedule", {a.prefix + name: time.time() + 3600})
            entry = RedBeatSchedulerEntry.from_key(a.prefix + name, app=app)
            print(json.dumps({"name": name, "value": value, "enabled": not not entry.enabled,
                              "is_due": entry.is_due()[0] if not entry.enabled else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
