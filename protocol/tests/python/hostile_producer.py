"""Publishes hostile messages with kombu and Celery onto a Redis queue and
prints, one JSON object per line, each raw Redis list element beside what
Python makes of it, for protocol/tests/hostile_python.rs.

Each line: {"name", "envelope" (the list element, as kombu wrote it),
"kombu_json" / "kombu_all" (kombu decoding the body with accept_content
['json'] / ['json', 'msgpack', 'yaml']: "ok" or the exception's class),
"request" (Celery 5.7's worker Request built from the message: what it read,
or the exception's class), "priority" (kombu's _get_message_priority)}.
"""

import argparse
import datetime
import json
import math
import sys

import redis
from celery import Celery
from celery.worker.request import Request
from kombu import Connection, Producer, Queue
from kombu.serialization import prepare_accept_content

QUEUE = "hostile"
MIB = 1024 * 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--redis-url", required=True)
    args = parser.parse_args()

    app = Celery("hostile", broker=args.redis_url, set_as_current=False)
    app.conf.accept_content = ["json"]

    @app.task(name="hostile.noop")
    def noop(*a, **k):
        return None

    conn = Connection(args.redis_url)
    channel = conn.channel()
    queue = Queue(QUEUE, routing_key=QUEUE)
    producer = Producer(channel, routing_key=QUEUE)
    client = redis.Redis.from_url(args.redis_url)

    def task(**options):
        """Celery's own protocol 2 headers and body for a call of hostile.noop(1)."""
        message = app.amqp.as_task_v2("11111111-1111-4111-8111-111111111111", "hostile.noop", args=(1,), **options)
        return message.headers, message.body

    def pop_raw():
        for key in client.scan_iter(match=QUEUE + "*"):
            if client.type(key) == b"list":
                raw = client.rpop(key)
                if raw is not None:
                    return raw.decode()
        raise RuntimeError("nothing was published")

    def verdicts(raw):
        payload = json.loads(raw)
        out = {}
        for label, accept in (("kombu_json", ["json"]), ("kombu_all", ["json", "msgpack", "yaml"])):
            message = channel.Message(payload, channel=channel)
            message.accept = prepare_accept_content(accept)
            try:
                if message.errors:
                    raise message.errors[0][1]
                message.decode()
                out[label] = "ok"
            except BaseException as exc:  # RecursionError included
                out[label] = type(exc).__name__
        message = channel.Message(payload, channel=channel)
        try:
            request = Request(message, app=app, task=noop, body=message.body, headers=message.headers, decoded=False)
            out["request"] = {
                "ok": True,
                "time_limits": list(request.time_limits),
                "eta": request.eta.isoformat() if request.eta else None,
                "expires": request.expires.isoformat() if request.expires else None,
                "retries": request._request_dict.get("retries"),
            }
        except BaseException as exc:
            out["request"] = {"ok": False, "error": type(exc).__name__}
        try:
            out["priority"] = channel._get_message_priority(payload)
        except BaseException as exc:
            out["priority"] = type(exc).__name__
        return out

    def send(name, headers, body, **publish):
        producer.publish(body, routing_key=QUEUE, declare=[queue], headers=headers, **publish)
        raw = pop_raw()
        line = {"name": name, "envelope": raw}
        line.update(verdicts(raw))
        print(json.dumps(line), flush=True)

    def send_raw(name, body, content_type, content_encoding="utf-8", **publish):
        headers, _ = task()
        send(name, headers, body, content_type=content_type, content_encoding=content_encoding, **publish)

    prefix, suffix = b'[["', b'"], {}, {"callbacks": null, "errbacks": null, "chain": null, "chord": null}]'

    # Decompression bombs: zlib past the default 64 MiB, every method past 4 MiB.
    send_raw("zlib_bomb_80mib", prefix + b"a" * (80 * MIB) + suffix, "application/json", compression="zlib")
    for method in ("zlib", "bzip2", "lzma", "zstd", "brotli"):
        body = prefix + b"a" * (8 * MIB) + suffix
        send_raw(f"{method}_bomb_8mib", body, "application/json", compression=method)

    # Value expansion: a billion laughs in YAML, JSON nested deeply, a huge int.
    laughs = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, cur in zip("abcdefgh", "bcdefghi"):
        laughs.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 10) + "]")
    send_raw("yaml_billion_laughs", "\n".join(laughs).encode(), "application/x-yaml")
    send_raw("json_deep_100k", b"[" * 100_000 + b"]" * 100_000, "application/json")
    send_raw("json_deep_600", b"[" * 600 + b"]" * 600, "application/json")
    send_raw("json_int_5000_digits", b"[[" + b"7" * 5000 + b"], {}, {}]", "application/json")
    # msgpack: array32 / map32 headers claiming 2^32 - 1 elements.
    send_raw("msgpack_array32_header", b"\xdd\xff\xff\xff\xff\x01", "application/x-msgpack", "binary")
    send_raw("msgpack_map32_header", b"\x93\xdf\xff\xff\xff\xff\x80\x80", "application/x-msgpack", "binary")
    # A serializer outside accept_content.
    headers, body = task()
    send("pickle_body", headers, body, serializer="pickle")
    # A raw body over 1 MiB.
    send_raw("json_2mib", prefix + b"a" * (2 * MIB) + suffix, "application/json")

    # Headers Celery itself writes from odd options.
    far = datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=datetime.timezone(datetime.timedelta(hours=-5)))
    header_cases = [
        ("timelimit_nan_inf", {"time_limit": math.nan, "soft_time_limit": math.inf}),
        ("timelimit_1e300_negative", {"time_limit": 1e300, "soft_time_limit": -1}),
        ("timelimit_huge_int", {"time_limit": 10**30, "soft_time_limit": -(10**20)}),
        ("timelimit_string", {"time_limit": "10"}),
        ("retries_string", {"retries": "3"}),
        ("retries_nan", {"retries": math.nan}),
        ("eta_year_9999", {"eta": far}),
        ("eta_garbage", {"eta": "tomorrow"}),
        ("expires_garbage", {"expires": "2024-13-45T99:00:00"}),
        ("group_index_float", {"group_index": 1e300}),
    ]
    for name, options in header_cases:
        headers, body = task(**options)
        send(name, headers, body, serializer="json")
    # Headers Celery would not write, set directly.
    for name, key, value in [
        ("eta_number", "eta", 1e300),
        ("expires_list", "expires", ["2024-01-01T00:00:00"]),
        ("timelimit_three", "timelimit", [1, 2, 3]),
    ]:
        headers, body = task()
        headers[key] = value
        send(name, headers, body, serializer="json")
    # Priorities kombu clamps or ignores (inf makes kombu's own publish fail).
    for name, priority in [("priority_300", 300), ("priority_negative", -5), ("priority_1e300", 1e300),
                           ("priority_nan", math.nan), ("priority_text", "high"), ("priority_float", 3.9)]:
        headers, body = task()
        send(name, headers, body, serializer="json", priority=priority)


if __name__ == "__main__":
    sys.exit(main())
