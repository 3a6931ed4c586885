#!/usr/bin/env python3
"""Streams Celery events as JSON lines, received with Celery's own
EventReceiver (as Flower and `celery events` do), until one of a given type
arrives.

    watch_events.py --broker URL [--until worker-offline] [--hostname NODE] [--timeout S]

Every event (task.multi batches are split by the receiver) is printed at once,
flushed, with the receiver's `local_received`. Exits 0 after printing an event
of type `--until` (from `--hostname`, if given), 1 after S seconds without
any event. While it runs, Redis shows its PSUBSCRIBE (PUBSUB NUMPAT), which
tests await before they act.
"""

import argparse
import json
import socket
import sys

from celery import Celery


class Done(Exception):
    pass


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--until", default="worker-offline")
    p.add_argument("--hostname", default=None)
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    app = Celery("watch", broker=a.broker)

    def on_event(event):
        print(json.dumps(event, default=str), flush=True)
        if event.get("type") == a.until and a.hostname in (None, event.get("hostname")):
            raise Done()

    with app.connection_for_read() as conn:
        recv = app.events.Receiver(conn, handlers={"*": on_event})
        try:
            recv.capture(limit=None, timeout=a.timeout, wakeup=False)
        except Done:
            return 0
        except socket.timeout:
            return 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
