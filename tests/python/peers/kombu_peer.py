"""Python Celery/kombu as a peer of the Rust Redis transport tests.

Usage: ``python kombu_peer.py COMMAND`` with a JSON request on stdin; prints a
JSON answer on stdout. The broker URL and transport options come from the
request (``url``, ``transport_options``).

Commands:

- ``send``: ``app.send_task`` for each of ``tasks`` (``name``, ``args``, and
  optional ``priority``, ``queue``); answers the task ids;
- ``drain``: a kombu consumer of ``queues`` (prefetch ``prefetch``) takes
  ``count`` messages (or stops after ``timeout`` seconds), acking each (or
  requeueing each with ``requeue``); answers one record per
  message in arrival order: ``id``, ``tag``, ``queue``, ``redelivered``,
  ``raw`` (the element as kombu read it, re-serialized as kombu would);
- ``unacked_values``: for each ``[raw, exchange, routing_key]`` of ``items``,
  the ``unacked`` value kombu's ``QoS.append`` writes:
  ``dumps([loads(raw), exchange, routing_key])``;
- ``redelivered``: for each raw element of ``items``, what kombu's
  ``_do_restore_message`` pushes: the payload with ``headers.redelivered`` and
  ``delivery_info.redelivered`` set;
- ``publish_fanout``: publishes ``body`` on fanout exchange ``exchange`` with
  ``routing_key``;
- ``publish_direct``: publishes ``body`` on direct exchange ``exchange`` with
  ``routing_key`` and ``priority``, declaring nothing (the test wrote the
  bindings).
"""

import json
import sys
import time

from kombu import Connection, Exchange, Queue
from kombu.utils.json import dumps, loads


def connection(req):
    return Connection(req["url"], transport_options=req.get("transport_options", {}))


def send(req):
    from celery import Celery

    app = Celery("peer", broker=req["url"])
    app.conf.broker_transport_options = req.get("transport_options", {})
    ids = []
    for task in req["tasks"]:
        options = {k: task[k] for k in ("priority", "queue") if k in task}
        ids.append(app.send_task(task["name"], task.get("args", []), **options).id)
    return ids


def drain(req):
    out = []
    with connection(req) as conn:
        queues = [Queue(q, Exchange(q, "direct"), routing_key=q) for q in req["queues"]]

        def on_message(body, message):
            raw = message._raw if hasattr(message, "_raw") else message.payload
            out.append({
                "id": message.headers.get("id"),
                "tag": message.delivery_tag,
                "queue": message.delivery_info.get("routing_key"),
                "redelivered": bool(message.delivery_info.get("redelivered")),
                "raw": dumps(raw),
            })
            if req.get("requeue"):
                message.requeue()
            else:
                message.ack()

        deadline = time.monotonic() + req.get("timeout", 20)
        with conn.Consumer(queues, callbacks=[on_message], prefetch_count=req.get("prefetch", 1)):
            while len(out) < req["count"] and time.monotonic() < deadline:
                try:
                    conn.drain_events(timeout=0.2)
                except TimeoutError:
                    pass
    return out


def unacked_values(req):
    return [dumps([loads(raw), ex, rk]) for raw, ex, rk in req["items"]]


def redelivered(req):
    out = []
    for raw in req["items"]:
        payload = loads(raw)
        payload["headers"]["redelivered"] = True
        payload["properties"]["delivery_info"]["redelivered"] = True
        out.append(dumps(payload))
    return out


def publish_fanout(req):
    with connection(req) as conn:
        exchange = Exchange(req["exchange"], "fanout")
        producer = conn.Producer(exchange=exchange)
        producer.publish(req["body"], routing_key=req.get("routing_key", ""), serializer="json")
    return "ok"


def publish_direct(req):
    with connection(req) as conn:
        exchange = Exchange(req["exchange"], "direct")
        producer = conn.Producer(exchange=exchange, auto_declare=False)
        producer.publish(
            req["body"],
            routing_key=req["routing_key"],
            priority=req.get("priority", 0),
            serializer="json",
            declare=[],
        )
    return "ok"


COMMANDS = {
    "send": send,
    "drain": drain,
    "unacked_values": unacked_values,
    "redelivered": redelivered,
    "publish_fanout": publish_fanout,
    "publish_direct": publish_direct,
}

if __name__ == "__main__":
    request = json.load(sys.stdin)
    json.dump(COMMANDS[sys.argv[1]](request), sys.stdout)
