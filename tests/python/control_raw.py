#!/usr/bin/env python3
"""Sends remote-control requests of any shape, hostile ones included, the way
kombu's Mailbox does (fanout to `celery.pidbox`, replies collected from the
caller's reply queue), and prints what came back.

    control_raw.py --broker URL [--timeout S]  < requests.jsonl

Each input line is one request:

    {"name": "...", "body": {...}, "reply": true, "limit": 2}
    {"name": "...", "raw": "not json at all"}

`body` is the request dict itself (`method`, `arguments`, `destination`,
`pattern`, `matcher` ...), sent as JSON; with `reply`, a `ticket` and
`reply_to` are added and replies are collected until `limit` nodes answered
or `--timeout` passed. `raw` is published as is with a JSON content type.
Inside `body`, a few markers build what JSON cannot carry or what is too
large to pass around:

    {"$float": "nan"}          float('nan') (also "inf", "-inf")
    {"$int": "1000...000"}     a Python int of any size
    {"$repeat": ["x", N]}      "x" * N
    {"$ids": ["prefix-", N]}   ["prefix-0", ..., "prefix-<N-1>"]
    {"$list": [item, N]}       [item] * N
    {"$nest": N}               [[[...]]] N levels deep

For each request one JSON line goes out: {"name", "replies", "seconds"}.
"""

import argparse
import json
import sys
import time

from celery import Celery
from kombu import Producer
from kombu.common import maybe_declare
from kombu.utils.uuid import uuid


def build(value):
    """The value with its markers expanded."""
    if isinstance(value, dict):
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "$float":
                return float(arg)
            if key == "$int":
                return int(arg)
            if key == "$repeat":
                return arg[0] * arg[1]
            if key == "$ids":
                return [f"{arg[0]}{i}" for i in range(arg[1])]
            if key == "$list":
                return [build(arg[0])] * arg[1]
            if key == "$nest":
                nested = []
                for _ in range(arg):
                    nested = [nested]
                return nested
        return {k: build(v) for k, v in value.items()}
    if isinstance(value, list):
        return [build(v) for v in value]
    return value


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--timeout", type=float, default=5.0)
    a = p.parse_args()
    app = Celery("control_raw", broker=a.broker)
    with app.connection_for_write() as conn:
        mailbox = app.control.mailbox(conn)
        chan = conn.default_channel
        producer = Producer(chan, auto_declare=False)
        for line in sys.stdin:
            if not line.strip():
                continue
            req = json.loads(line)
            started = time.monotonic()
            ticket = None
            headers = {"clock": mailbox.clock.forward(), "expires": 0}
            if "raw" in req:
                producer.publish(
                    req["raw"],
                    exchange=mailbox.exchange.name,
                    declare=[mailbox.exchange],
                    content_type="application/json",
                    content_encoding="utf-8",
                    headers=headers,
                )
            else:
                body = build(req["body"])
                if req.get("reply"):
                    ticket = uuid()
                    maybe_declare(mailbox.reply_queue(chan))
                    body["ticket"] = ticket
                    body["reply_to"] = {"exchange": mailbox.reply_exchange.name, "routing_key": mailbox.oid}
                producer.publish(
                    body,
                    exchange=mailbox.exchange.name,
                    declare=[mailbox.exchange],
                    serializer="json",
                    headers=headers,
                )
            replies = []
            if ticket:
                replies = mailbox._collect(ticket, limit=req.get("limit"), timeout=a.timeout, channel=chan)
            out = {"name": req.get("name"), "replies": replies, "seconds": time.monotonic() - started}
            print(json.dumps(out, default=repr), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
