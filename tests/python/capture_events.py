#!/usr/bin/env python3
"""Receives Celery events with Celery's own EventReceiver (as Flower and
`celery events` do) and prints each as a JSON line.

    capture_events.py --broker URL [--limit N] [--timeout S] [--types t1,t2]

Stops after N events of the wanted types, or after S seconds without one.
While it runs, Redis shows its PSUBSCRIBE (PUBSUB NUMPAT), which tests await
before they send anything.
"""

import argparse
import json
import socket
import sys

from celery import Celery


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--limit", type=int, default=1)
    p.add_argument("--timeout", type=float, default=20.0)
    p.add_argument("--types", default="")
    a = p.parse_args()
    wanted = {t for t in a.types.split(",") if t}
    app = Celery("events", broker=a.broker)
    seen = []

    def on_event(event):
        if wanted and event.get("type") not in wanted:
            return
        seen.append(event)
        print(json.dumps(event, default=str), flush=True)

    with app.connection_for_read() as conn:
        recv = app.events.Receiver(conn, handlers={"*": on_event})
        try:
            for _ in recv.itercapture(limit=None, timeout=a.timeout, wakeup=False):
                if len(seen) >= a.limit:
                    break
        except socket.timeout:
            pass
    return 0 if len(seen) >= a.limit else 1


if __name__ == "__main__":
    sys.exit(main())
