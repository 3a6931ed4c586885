#!/usr/bin/env python3
"""Python Celery/kombu on RabbitMQ, for celeriac's AMQP interop tests.

    amqp_peer.py --broker URL declare < queues.json
        Declares each queue as Celery would (kombu Queue.declare on a fresh
        channel each): [{"name", "exchange"?, "exchange_type"?, "routing_key"?,
        "queue_arguments"?}]. Prints one line per queue: "ok" or the broker's
        refusal (e.g. PRECONDITION_FAILED ...).

    amqp_peer.py --broker URL [--backend URL] send < calls.json
        app.send_task for each {"name", "args"?, "kwargs"?, "options"?} with the
        app's task_queues from --queues JSON (quorum queues make Celery use native
        delayed delivery for countdowns); prints each task id.

    amqp_peer.py --broker URL get QUEUE
        basic_get one message from QUEUE and print its delivery info, properties
        and headers as JSON (null if the queue is empty).
"""

import argparse
import json
import sys

from celery import Celery
from kombu import Connection, Exchange, Queue


def queues_from(spec):
    out = []
    for q in spec:
        ex = Exchange(q.get("exchange", q["name"]), type=q.get("exchange_type", "direct"))
        out.append(Queue(q["name"], ex, routing_key=q.get("routing_key", q["name"]),
                         queue_arguments=q.get("queue_arguments")))
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--backend", default=None)
    p.add_argument("--queues", default="[]")
    p.add_argument("command")
    p.add_argument("queue", nargs="?")
    a = p.parse_args()
    if a.command == "declare":
        with Connection(a.broker) as conn:
            for q in queues_from(json.load(sys.stdin)):
                try:
                    with conn.channel() as ch:
                        q.bind(ch).declare()
                    print("ok", flush=True)
                except Exception as e:  # the broker's refusal, as text
                    print(f"{type(e).__name__}: {e}", flush=True)
        return 0
    if a.command == "send":
        app = Celery("amqp_peer", broker=a.broker, backend=a.backend)
        queues = queues_from(json.loads(a.queues))
        if queues:
            app.conf.task_queues = queues
        for c in json.load(sys.stdin):
            r = app.send_task(c["name"], args=c.get("args", []), kwargs=c.get("kwargs", {}), **c.get("options", {}))
            print(r.id, flush=True)
        return 0
    if a.command == "get":
        with Connection(a.broker) as conn:
            with conn.channel() as ch:
                m = ch.basic_get(a.queue, no_ack=True)
                if m is None:
                    print("null")
                    return 0
                print(json.dumps({
                    "delivery_info": {k: m.delivery_info.get(k) for k in ("exchange", "routing_key", "redelivered")},
                    "properties": {k: v for k, v in m.properties.items() if k != "application_headers"},
                    "headers": m.headers,
                    "body": m.body if isinstance(m.body, str) else m.body.decode("utf-8", "replace"),
                }, default=str))
        return 0
    print(f"unknown command {a.command}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
