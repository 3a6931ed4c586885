#!/usr/bin/env python3
"""Sends one remote-control command with Celery's own client
(`app.control.broadcast(..., reply=True)`, what `celery control` and Flower
use) and prints the replies as one JSON list of {node: reply}.

    control_call.py --broker URL --method NAME [--arguments JSON] [--destination a,b] [--timeout S]

For what the `celery` command line cannot send: an unknown command (the CLI
refuses it before sending), `revoke` with `terminate=True` as Flower sends it.
"""

import argparse
import json
import sys

from celery import Celery


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--arguments", default="{}")
    p.add_argument("--destination", default=None)
    p.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args()
    app = Celery("control", broker=a.broker)
    destination = a.destination.split(",") if a.destination else None
    replies = app.control.broadcast(
        a.method,
        arguments=json.loads(a.arguments),
        destination=destination,
        reply=True,
        timeout=a.timeout,
        limit=len(destination) if destination else None,
    )
    print(json.dumps(replies, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
