#!/usr/bin/env python3
"""Sends `t.integration.tasks.identity(v)` for values of every type a
serializer carries, to one queue, and reports what came back: the type and
repr `AsyncResult.get()` gives, and the stored record decoded by kombu (its
volatile fields dropped), one JSON line per value. Also a two-step chain, so
a callback's argument is checked too.

    result_types.py --broker URL --queue Q --serializer json|msgpack|yaml

Run once against a Python worker's queue and once against celeriac's: the
outputs must be equal (cli/tests/result_values.rs).
"""

import argparse
import datetime
import decimal
import json
import uuid

import redis
from celery import Celery, chain

UTC = datetime.timezone.utc
EST = datetime.timezone(datetime.timedelta(hours=-5))

COMMON = [
    "text", "ünïcode ✓", 42, -(2**63), 2**63 - 1, 1.5, -0.0, True, None,
    [1, "two", [3.0]], {"k": {"nested": [None, False]}},
]
VALUES = {
    "json": COMMON + [
        2**70, -(2**80),
        b"bytes\x00\xff", bytes(range(256)),
        datetime.datetime(2024, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        datetime.datetime(2024, 1, 2, 3, 4, 5),
        datetime.datetime(1999, 12, 31, 23, 59, 59, tzinfo=EST),
        datetime.date(2024, 2, 29), datetime.time(3, 4, 5), datetime.time(23, 59, 59, 999999),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        decimal.Decimal("1.10"), decimal.Decimal("-0.000001"), decimal.Decimal("1E+3"),
        {"when": datetime.date(2024, 1, 1), "ids": [uuid.UUID(int=1), uuid.UUID(int=2)]},
        (1, 2, "tuple"),
    ],
    "msgpack": COMMON + [b"bytes\x00\xff", {"b": b"\x01"}, (1, 2)],
    "yaml": COMMON + [
        2**70,
        b"bytes\x00\xff",
        datetime.datetime(2024, 1, 2, 3, 4, 5, 678901),
        datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        datetime.date(2024, 2, 29),
        {"when": datetime.date(2024, 1, 1)},
    ],
}
VOLATILE = ("task_id", "date_done")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--serializer", required=True)
    a = p.parse_args()
    app = Celery("types", broker=a.broker, backend=a.broker)
    app.conf.update(
        task_serializer=a.serializer,
        result_serializer=a.serializer,
        accept_content=["json", "msgpack", "yaml"],
        result_accept_content=["json", "msgpack", "yaml"],
    )
    r = redis.Redis.from_url(a.broker)
    sent = [(v, app.send_task("t.integration.tasks.identity", args=[v], queue=a.queue)) for v in VALUES[a.serializer]]
    if a.serializer != "yaml":  # PyYAML's safe_dump cannot write a Signature
        identity = app.signature("t.integration.tasks.identity", queue=a.queue)
        first = VALUES[a.serializer][-1]
        chained = chain(identity.clone(args=(first,)), identity.clone()).apply_async()
        sent.append(("chain", chained))
    for value, res in sent:
        got = res.get(timeout=30)
        raw = r.get("celery-task-meta-" + res.id)
        record = app.backend.decode(raw)
        for k in VOLATILE:
            record.pop(k, None)
        record.pop("parent_id", None)
        record.pop("children", None)
        print(json.dumps({
            "sent": repr(value),
            "type": type(got).__name__,
            "repr": repr(got),
            "stored": repr(record),
        }), flush=True)


if __name__ == "__main__":
    main()
