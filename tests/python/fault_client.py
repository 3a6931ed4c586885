#!/usr/bin/env python3
"""The Python side of the fault suite (cli/tests/faults.rs).

    fault_client.py send    --broker URL --queue Q --name TASK [--args JSON] [--count N]
    fault_client.py check   --broker URL --backend URL [--timeout S]      < ids.json
    fault_client.py ping    --broker URL --node NAME [--timeout S]
    fault_client.py hostile --broker URL --queue Q

send: Celery's send_task N times; prints the ids as a JSON list.
check: for every id, waits for a final state; one still not final at the
  timeout is looked for in the queues and in kombu's `unacked`. Prints a JSON
  object id -> SUCCESS/FAILURE/... or QUEUED/UNACKED/MISSING.
ping: `celery inspect ping` to one node; prints {"pong": true/false}.
hostile: publishes, with kombu's producer exactly as any Python peer could,
  one message of every hostile class, and prints [{"class", "id"}]: the ids
  are the task ids the messages carry (where they carry one).
"""

import argparse
import json
import sys
import time
import uuid
import zlib

import redis
from celery import Celery
from kombu import Connection, Exchange, Producer


def app_for(a):
    app = Celery("faults", broker=a.broker, backend=getattr(a, "backend", None) or a.broker)
    app.conf.broker_connection_retry_on_startup = True
    return app


def cmd_send(a):
    app = app_for(a)
    args = json.loads(a.args)
    ids = [app.send_task(a.name, args=args, queue=a.queue).id for _ in range(a.count)]
    print(json.dumps(ids))


def where(r, task_id):
    """QUEUED, UNACKED or MISSING: where a task's message is, if anywhere."""
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        if kind == b"list":
            for raw in r.lrange(key, 0, -1):
                if task_id.encode() in raw:
                    return "QUEUED"
    for _, raw in r.hscan_iter("unacked"):
        if task_id.encode() in raw:
            return "UNACKED"
    return "MISSING"


def cmd_check(a):
    app = app_for(a)
    ids = json.load(sys.stdin)
    deadline = time.monotonic() + a.timeout
    states = {}
    pending = list(ids)
    while pending and time.monotonic() < deadline:
        still = []
        for task_id in pending:
            state = app.AsyncResult(task_id).state
            if state in ("SUCCESS", "FAILURE", "REVOKED"):
                states[task_id] = state
            else:
                still.append(task_id)
        pending = still
        if pending:
            time.sleep(0.2)
    r = redis.Redis.from_url(a.broker)
    for task_id in pending:
        states[task_id] = where(r, task_id)
    print(json.dumps(states))


def cmd_ping(a):
    app = app_for(a)
    replies = app.control.inspect(destination=[a.node], timeout=a.timeout).ping() or {}
    print(json.dumps({"pong": replies.get(a.node) == {"ok": "pong"}}))


def task_headers(task_id, name="t.integration.tasks.add"):
    return {
        "lang": "py", "task": name, "id": task_id, "shadow": None, "eta": None, "expires": None,
        "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
        "root_id": task_id, "parent_id": None, "argsrepr": "()", "kwargsrepr": "{}",
        "origin": "hostile@test", "ignore_result": False, "replaced_task_nesting": 0,
        "stamped_headers": None, "stamps": {},
    }


def nested(depth):
    text = "[" * depth + "]" * depth
    return text


def cmd_hostile(a):
    sent = []
    with Connection(a.broker) as conn:
        producer = Producer(conn.channel(), exchange=Exchange("", type="direct"), routing_key=a.queue)

        def publish(cls, body, *, headers=None, content_type="application/json", encoding="utf-8", **kw):
            task_id = str(uuid.uuid4())
            h = task_headers(task_id)
            h.update(headers or {})
            producer.publish(
                body, routing_key=a.queue, headers=h, content_type=content_type,
                content_encoding=encoding, serializer=None, **kw,
            )
            sent.append({"class": cls, "id": h["id"] if isinstance(h["id"], str) else None})

        good = json.dumps([[1, 2], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
        # Content types outside accept_content: refused before decoding.
        publish("msgpack", b"\x93\x92\x01\x02\x80\x80", content_type="application/x-msgpack", encoding="binary")
        publish("pickle", b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00]\x94.",
                content_type="application/x-python-serialize", encoding="binary")
        publish("unknown content type", good, content_type="text/x-evil")
        # Size: over worker_max_message_size raw, and a small zlib bomb.
        publish("too large", json.dumps([["x" * (2 * 1024 * 1024)], {}, {}]))
        bomb = zlib.compress(b"[[\"" + b"0" * (200 * 1024 * 1024) + b"\"], {}, {}]", 9)
        publish("zlib bomb", bomb, headers={"compression": "application/x-gzip"}, encoding="binary")
        # Expansion: deep nesting.
        publish("deep json", "[[" + nested(100000) + "], {}, {}]")
        # Bodies that are not [args, kwargs, embed].
        publish("body not a list", json.dumps({"hello": "world"}))
        publish("body wrong shape", json.dumps([1, 2, 3, 4]))
        publish("not json", b"\xff\xfe{{{", encoding="binary")
        # Headers of the wrong type or out of any range.
        publish("retries wrong type", good, headers={"retries": "many"})
        publish("eta wrong type", good, headers={"eta": 12})
        publish("expires garbage", good, headers={"expires": "not-a-date"})
        publish("timelimit wrong shape", good, headers={"timelimit": "soon"})
        publish("huge retries", good, headers={"retries": 10**30})
        publish("huge group_index", good, headers={"group_index": -(10**30)})
        publish("nan timelimit", good, headers={"timelimit": [float("nan"), float("inf")]})
        publish("eta year 9999", good, headers={"eta": "9999-12-31T23:59:59+14:00"})
        publish("id not a string", good, headers={"id": ["x"] * 3})
    print(json.dumps(sent))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("send")
    s.add_argument("--broker", required=True)
    s.add_argument("--queue", required=True)
    s.add_argument("--name", required=True)
    s.add_argument("--args", default="[]")
    s.add_argument("--count", type=int, default=1)
    c = sub.add_parser("check")
    c.add_argument("--broker", required=True)
    c.add_argument("--backend", required=True)
    c.add_argument("--timeout", type=float, default=60.0)
    g = sub.add_parser("ping")
    g.add_argument("--broker", required=True)
    g.add_argument("--node", required=True)
    g.add_argument("--timeout", type=float, default=5.0)
    h = sub.add_parser("hostile")
    h.add_argument("--broker", required=True)
    h.add_argument("--queue", required=True)
    a = p.parse_args()
    {"send": cmd_send, "check": cmd_check, "ping": cmd_ping, "hostile": cmd_hostile}[a.cmd](a)


if __name__ == "__main__":
    main()
