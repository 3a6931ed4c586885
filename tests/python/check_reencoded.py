#!/usr/bin/env python3
"""Check celeriac's re-encodings with the real kombu and Celery.

    check_reencoded.py --redis-url URL --messages FILE [--results FILE]

At least one of --messages and --results is needed.

--messages FILE is a JSON object mapping a message fixture name
(tests/fixtures/messages/<name>.json) to the Redis envelope string celeriac wrote for
it. Each envelope is LPUSHed onto a fresh scratch list and consumed by a real kombu
Consumer on the Redis transport (every serializer accepted, pickle included). What
kombu hands the consumer must equal the fixture's ``decoded``: headers, properties
(the keys the fixture has; ``delivery_tag`` only has to be present), delivery_info,
content_type, content_encoding and ``message.decode()``.

--results FILE maps a result fixture name (tests/fixtures/results/<name>.json) to the
string celeriac stored. It is SET at the fixture's key and read back by Celery's
RedisBackend: ``AsyncResult.state``, ``.result``, ``.traceback``, ``.get()`` for ready
states, and the decoded meta; exceptions must match by type name, module and args.
Group records are read with ``GroupResult.restore``, chord counters as Celery's
chord join parses them.

Prints one line per item and a closing "N passed, N failed" line. Exit status 0 only
if every item passed; 1 on any mismatch, an unknown fixture name or an empty input;
2 on bad usage. One process, one broker connection, one backend.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "fixtures"

# capture.py defines FixtureError, the user-defined exception some result fixtures
# name (exc_module "capture"); Celery only rebuilds classes of imported modules.
sys.path.insert(0, str(FIXTURES))
import capture  # noqa: E402

EXCEPTION_STATES = {"FAILURE", "RETRY", "REVOKED"}
READY_STATES = {"SUCCESS", "FAILURE", "REVOKED"}
MAX_DIFFS = 8


class UnknownFixture(Exception):
    pass


def load_fixture(kind: str, name: str) -> dict:
    from kombu.utils.json import loads

    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        raise UnknownFixture(f"bad fixture name {name!r}")
    path = FIXTURES / kind / f"{name}.json"
    if not path.is_file():
        raise UnknownFixture(f"no fixture {kind}/{name}.json")
    return loads(path.read_text(encoding="utf-8"))


def short(v, limit=120) -> str:
    text = repr(v)
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def diff(want, got, path: str = "$") -> list[str]:
    """Differences between two decoded Python values, strict about types.

    Lists and tuples are interchangeable (JSON has only arrays); bool is not int;
    floats compare by repr (so -0.0 != 0.0); datetimes and times by isoformat (so
    the UTC offset and naive/aware must match too)."""
    if isinstance(want, (list, tuple)) and isinstance(got, (list, tuple)):
        if len(want) != len(got):
            return [f"{path}: length {len(want)} != {len(got)}: want {short(want)}, got {short(got)}"]
        out = []
        for i, (w, g) in enumerate(zip(want, got)):
            out += diff(w, g, f"{path}[{i}]")
        return out
    if type(want) is not type(got):
        return [f"{path}: want {type(want).__name__} {short(want)}, got {type(got).__name__} {short(got)}"]
    if isinstance(want, dict):
        out = [f"{path}: missing key {k!r}" for k in want if k not in got]
        out += [f"{path}: unexpected key {k!r} = {short(got[k])}" for k in got if k not in want]
        for k in want:
            if k in got:
                out += diff(want[k], got[k], f"{path}.{k}")
        return out
    if isinstance(want, float):
        return [] if repr(want) == repr(got) else [f"{path}: want {want!r}, got {got!r}"]
    if isinstance(want, (dt.datetime, dt.time)):
        return [] if want.isoformat() == got.isoformat() else [f"{path}: want {want.isoformat()}, got {got.isoformat()}"]
    return [] if want == got else [f"{path}: want {short(want)}, got {short(got)}"]


def exception_view(value):
    if isinstance(value, BaseException):
        return {"exc_type": type(value).__qualname__, "exc_message": list(value.args),
                "exc_module": type(value).__module__}
    return value


class Checker:
    def __init__(self, redis_url: str):
        self.url = redis_url
        self.reader = capture.KombuReader(redis_url)
        self.client = self.reader.client
        self._app = None

    @property
    def app(self):
        if self._app is None:
            from celery import Celery

            self._app = Celery("check_reencoded", broker=self.url, backend=self.url, set_as_current=False)
            self._app.conf.broker_connection_retry_on_startup = True
        return self._app

    def _reset_reader(self):
        try:
            self.reader.close()
        except Exception:
            pass
        self.reader = capture.KombuReader(self.url)
        self.client = self.reader.client

    # ---- messages

    def check_message(self, name: str, envelope) -> list[str]:
        from kombu.utils.json import loads

        fixture = load_fixture("messages", name)
        want = fixture["decoded"]
        if not isinstance(envelope, str):
            return [f"envelope must be a string, got {type(envelope).__name__}"]
        try:
            parsed = loads(envelope)  # what kombu's BRPOP reader does first
        except ValueError as e:
            return [f"envelope is not kombu JSON: {e}"]
        if not isinstance(parsed, dict) or not isinstance(parsed.get("properties"), dict):
            return ["envelope is not an object with a properties object"]
        if "delivery_tag" not in parsed["properties"]:
            return ["envelope properties have no delivery_tag"]
        try:
            message = self.reader.receive(envelope.encode("utf-8"), timeout=10)
        except Exception as e:  # kombu could not even build the message
            self._reset_reader()
            return [f"kombu consumer failed: {type(e).__name__}: {e}"]

        problems = diff(want["headers"], message.headers, "headers")
        got_props = message.properties
        for key, value in want["properties"].items():
            if key == "delivery_tag":
                if not isinstance(got_props.get(key), str) or not got_props[key]:
                    problems.append("properties.delivery_tag: missing or not a string")
            elif key not in got_props:
                problems.append(f"properties: missing key {key!r}")
            else:
                problems += diff(value, got_props[key], f"properties.{key}")
        problems += diff(want["delivery_info"], message.delivery_info, "delivery_info")
        problems += diff(want["content_type"], message.content_type, "content_type")
        problems += diff(want["content_encoding"], message.content_encoding, "content_encoding")
        if "payload" in want:
            try:
                payload = message.decode()
            except Exception as e:
                problems.append(f"payload: message.decode() raised {type(e).__name__}: {e}")
            else:
                problems += diff(want["payload"], payload, "payload")
        return problems

    # ---- results

    def check_result(self, name: str, value) -> list[str]:
        from celery.result import AsyncResult, GroupResult
        from kombu.utils.json import loads

        fixture = load_fixture("results", name)
        if not isinstance(value, str):
            return [f"value must be a string, got {type(value).__name__}"]
        key = fixture["key"]
        kind = fixture.get("kind", "task")
        want = fixture["python"]
        self.client.set(key, value.encode("utf-8"))
        app = self.app
        backend = app.backend
        backend._cache.clear()
        problems = []
        if kind == "task":
            task_id = key[len("celery-task-meta-"):]
            try:
                res = AsyncResult(task_id, app=app, backend=backend)
                state, result, traceback = res.state, res.result, res.traceback
            except Exception as e:
                return [f"Celery could not read the record: {type(e).__name__}: {e}"]
            problems += diff(want["status"], state, "state")
            problems += diff(want["result"], exception_view(result), "result")
            if want["status"] in EXCEPTION_STATES and not isinstance(result, BaseException):
                problems.append(f"result: want an exception, got {short(result)}")
            problems += diff(want["traceback"], traceback, "traceback")
            if want["status"] in READY_STATES:
                try:
                    got = res.get(propagate=False, timeout=10, disable_sync_subtasks=False)
                except Exception as e:
                    problems.append(f"get(): raised {type(e).__name__}: {e}")
                else:
                    problems += diff(want["result"], exception_view(got), "get()")
                finally:
                    backend.remove_pending_result(res)
            # every meta field Python stored must read back the same
            backend._cache.clear()
            meta = backend.get_task_meta(task_id, cache=False)
            for k, v in (fixture.get("meta") or {}).items():
                if k not in meta:
                    problems.append(f"meta: missing key {k!r}")
                else:
                    problems += diff(v, exception_view(meta[k]), f"meta.{k}")
        elif kind == "group":
            group_id = key[len("celery-taskset-meta-"):]
            try:
                restored = GroupResult.restore(group_id, app=app, backend=backend)
            except Exception as e:
                return [f"GroupResult.restore raised {type(e).__name__}: {e}"]
            if restored is None:
                return ["GroupResult.restore found nothing"]
            problems += diff(want["group_id"], restored.id, "group_id")
            problems += diff(want["children"], [r.id for r in restored.results], "children")
            problems += diff(loads(fixture["value"]), loads(value), "value")
        elif kind == "chord_size":
            try:
                got = int(self.client.get(key))  # as RedisBackend.on_chord_part_return reads it
            except (TypeError, ValueError) as e:
                return [f"chord size is not an integer: {e}"]
            problems += diff(want["chord_size"], got, "chord_size")
        else:
            problems.append(f"fixture has unknown kind {kind!r}")
        return problems

    def close(self):
        if self._app is not None:
            pending = getattr(self._app.backend, "_pending_results", None)
            for mapping in pending or ():
                mapping.clear()
            self._app.close()
        self.reader.close()


def run(redis_url: str, messages: dict | None, results: dict | None, out=sys.stdout) -> int:
    """Check every entry; print one line each and a summary. Returns the exit status."""
    items = [("message", n, v) for n, v in (messages or {}).items()]
    items += [("result", n, v) for n, v in (results or {}).items()]
    if not items:
        print("check_reencoded: empty input: nothing to check", file=out)
        print("check_reencoded: 0 passed, 1 failed", file=out)
        return 1
    passed = failed = 0
    checker = Checker(redis_url)
    try:
        for kind, name, value in items:
            try:
                problems = (checker.check_message if kind == "message" else checker.check_result)(name, value)
            except UnknownFixture as e:
                problems = [f"unknown fixture: {e}"]
            except Exception as e:  # a crash in the check is a failure of this item
                problems = [f"checker error: {type(e).__name__}: {e}"]
            if problems:
                failed += 1
                print(f"FAIL {kind} {name}: {len(problems)} difference(s)", file=out)
                for p in problems[:MAX_DIFFS]:
                    print(f"       {p}", file=out)
                if len(problems) > MAX_DIFFS:
                    print(f"       ... {len(problems) - MAX_DIFFS} more", file=out)
            else:
                passed += 1
                print(f"ok   {kind} {name}", file=out)
    finally:
        checker.close()
    print(f"check_reencoded: {passed} passed, {failed} failed", file=out)
    return 0 if failed == 0 else 1


def _load_map(path: str, what: str):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise SystemExit(f"{what} file {path}: expected a JSON object of name -> string")
    return data


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Check celeriac re-encodings with real kombu/Celery.")
    parser.add_argument("--redis-url", required=True, help="a scratch Redis (keys are written there)")
    parser.add_argument("--messages", help="JSON object: message fixture name -> envelope string")
    parser.add_argument("--results", help="JSON object: result fixture name -> stored value string")
    args = parser.parse_args(argv)
    if not args.messages and not args.results:
        parser.error("give --messages, --results or both")
    messages = _load_map(args.messages, "messages") if args.messages else {}
    results = _load_map(args.results, "results") if args.results else None
    empty = [path for path, data in ((args.messages, messages), (args.results, results))
             if path and not data]
    if empty:
        print(f"check_reencoded: empty input: {', '.join(empty)} has no entries")
        print("check_reencoded: 0 passed, 1 failed")
        return 1
    return run(args.redis_url, messages, results)


if __name__ == "__main__":
    raise SystemExit(main())
