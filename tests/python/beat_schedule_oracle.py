#!/usr/bin/env python3
"""Next fire times of random crontabs by the pinned Celery's own
`celery.schedules.crontab`, for celeriac's schedule tests to compare against.

    beat_schedule_oracle.py [--seed N] [--cases N]
    beat_schedule_oracle.py --intervals [--seed N] [--cases N]

Prints one JSON line per case:
    {"cron": "m h dom mon dow", "tz": "Europe/Berlin", "after": <epoch s>,
     "next": <epoch s>}
`after` is the last run (an aware datetime in the zone, as Celery's beat
holds it); `next` is `last_run_at + remaining_delta`, the instant Celery's
beat would send the next run at. Each random start is followed by a few
steps of the chain (the next run becomes the last run), as a running beat
walks it. Starts are drawn around the daylight-saving changes of
Europe/Berlin and America/New_York, and at random over 2020-2031.

With --intervals, the cases are `schedule(every, relative=...)` instead:
    {"every": <seconds>, "relative": true, "tz": ..., "after": ..., "next": ...}
where `next` is now + `remaining_estimate(after)` with now = after.
"""

import argparse
import json
import random
import sys
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

from celery import Celery
from celery.schedules import crontab, schedule

ZONES = ["Europe/Berlin", "America/New_York", "Europe/Berlin", "America/New_York",
         "UTC", "Asia/Kolkata", "Australia/Lord_Howe", "Europe/London"]

MINUTES = ["*", "*/5", "*/15", "0", "30", "0,30", "5-10", "50-10", "*/7", "15,45", "59", "1-59/20"]
HOURS = ["*", "*", "*/2", "2", "1-3", "9-17", "0", "2,3", "22-2", "3", "1", "*/3", "23"]
DAYS = ["*", "*", "*", "*", "1", "15", "1-7", "*/10", "29", "31", "8-14"]
MONTHS = ["*", "*", "*", "*", "jan", "3", "10", "*/3", "2-4", "nov"]
WEEKDAYS = ["*", "*", "*", "mon-fri", "0", "6", "sat,sun", "fri-mon", "2", "sun"]


def transitions(zone, years):
    """UTC instants where the zone's offset changes (found by bisection)."""
    tz = ZoneInfo(zone)
    found = []
    for year in years:
        t = datetime(year, 1, 1, tzinfo=timezone.utc)
        end = datetime(year + 1, 1, 1, tzinfo=timezone.utc)
        step = timedelta(hours=6)
        while t < end:
            a, b = t, t + step
            if a.astimezone(tz).utcoffset() != b.astimezone(tz).utcoffset():
                while b - a > timedelta(minutes=1):
                    mid = a + (b - a) / 2
                    if a.astimezone(tz).utcoffset() == mid.astimezone(tz).utcoffset():
                        a = mid
                    else:
                        b = mid
                found.append(b)
            t += step
    return found


def start_instant(rnd, zone, near, start, end):
    """A random instant, 70 % of them within 8 hours of a daylight-saving change."""
    if zone in near and rnd.random() < 0.7:
        return rnd.choice(near[zone]) + timedelta(seconds=rnd.randint(-8 * 3600, 8 * 3600))
    return start + (end - start) * rnd.random()


def intervals(a, rnd, near, start, end) -> None:
    apps = {}
    for _ in range(a.cases):
        zone = rnd.choice(ZONES)
        every = rnd.choice([1, 30, 60, 90, 300, 900, 3600, 5400, 7200, 86400, 172800])
        relative = rnd.random() < 0.8
        t = start_instant(rnd, zone, near, start, end)
        if zone not in apps:
            apps[zone] = Celery("oracle", set_as_current=False)
            apps[zone].conf.timezone = zone
        last = t.astimezone(ZoneInfo(zone))
        sched = schedule(every, relative=relative, app=apps[zone], nowfun=lambda: last)
        nxt = last.astimezone(timezone.utc) + sched.remaining_estimate(last)
        print(json.dumps({"every": every, "relative": relative, "tz": zone, "after": last.timestamp(),
                          "next": nxt.timestamp()}))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--cases", type=int, default=3000)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--intervals", action="store_true")
    a = p.parse_args()
    rnd = random.Random(a.seed)
    apps = {}
    near = {z: transitions(z, range(2024, 2029)) for z in ("Europe/Berlin", "America/New_York")}
    start, end = datetime(2020, 1, 1, tzinfo=timezone.utc), datetime(2031, 1, 1, tzinfo=timezone.utc)
    if a.intervals:
        intervals(a, rnd, near, start, end)
        return 0
    made = 0
    while made < a.cases:
        expr = " ".join([rnd.choice(MINUTES), rnd.choice(HOURS), rnd.choice(DAYS), rnd.choice(MONTHS),
                         rnd.choice(WEEKDAYS)])
        zone = rnd.choice(ZONES)
        t = start_instant(rnd, zone, near, start, end)
        if rnd.random() < 0.3:
            t = t.replace(second=0, microsecond=0)
        try:
            cron = crontab.from_string(expr)
        except ValueError:
            continue
        if zone not in apps:
            apps[zone] = Celery("oracle", set_as_current=False)
            apps[zone].conf.timezone = zone
        cron.app = apps[zone]
        tz = ZoneInfo(zone)
        last = t.astimezone(tz)
        for _ in range(a.steps):
            run_at, delta, _now = cron.remaining_delta(last)
            nxt = (run_at + delta).astimezone(timezone.utc)
            print(json.dumps({"cron": expr, "tz": zone, "after": last.timestamp(), "next": nxt.timestamp()}))
            made += 1
            # A running beat's next last_run_at is the send time: that instant, read in the zone.
            last = datetime.fromtimestamp(nxt.timestamp(), tz)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
