"""The Python Celery 5.7 side of celeriac's Redis result-backend tests.

``tests/tests/redis_backend.rs`` runs this file as ``python backend_peer.py
<command>`` with a JSON request on stdin (``url``: broker and backend URL,
``conf``: Celery settings, plus the command's fields) and reads one line of
kombu JSON from stdout. It is also the Celery app of the worker those tests
start (``celery -A backend_peer worker``), configured by the environment
variables ``CELERIAC_PEER_URL`` and ``CELERIAC_PEER_CONF`` (JSON).

Commands:
- ``read``: ``AsyncResult(id).get()`` (or just the state, with ``"get": false``)
  for each item, with what was raised and the ``result_extended`` fields;
- ``store``: ``backend.mark_as_done/mark_as_failure/mark_as_revoked/
  mark_as_retry/mark_as_started/store_result`` for each item, in order;
  ``{"op": "await_subscriber", "key": ...}`` first waits until something is
  subscribed to that channel;
- ``set_chord_size``, ``chord_part`` (``backend.on_chord_part_return`` with a
  request as a worker builds it), ``group_save``, ``group_restore``, ``keys``;
- ``send``: the producer side of the worker test (chords split between the
  ``celery`` queue and a ``rust`` queue no Python worker reads, plain tasks).
"""

import json
import os
import sys
import time

from celery import Celery, chord, states
from celery.app.task import Context
from celery.exceptions import TaskRevokedError
from celery.result import AsyncResult, GroupResult
from kombu.utils.json import dumps, loads

app = Celery("backend_peer")


class CustomError(Exception):
    """A user-defined exception: Python must rebuild it from its module."""


def configure(url, conf):
    app.conf.update(broker_url=url, result_backend=url, **(conf or {}))


configure(os.environ.get("CELERIAC_PEER_URL", "redis://localhost:6379/0"),
          json.loads(os.environ.get("CELERIAC_PEER_CONF") or "{}"))


@app.task(name="peer.add")
def add(x, y):
    return x + y


@app.task(name="peer.tsum")
def tsum(values):
    return sum(values)


@app.task(name="peer.fail")
def fail(message):
    raise ValueError(message)


@app.task(name="peer.fail_custom")
def fail_custom(message):
    raise CustomError(message, 7)


@app.task(name="peer.echo")
def echo(value):
    return value


EXCEPTIONS = {
    "ValueError": ValueError,
    "KeyError": KeyError,
    "RuntimeError": RuntimeError,
    "CustomError": CustomError,
    "TaskRevokedError": TaskRevokedError,
}


def make_exception(spec):
    return EXCEPTIONS[spec["type"]](*spec.get("args", []))


def describe_exception(exc):
    cls = type(exc)
    return {
        "type": cls.__name__,
        "qualname": cls.__qualname__,
        "module": cls.__module__,
        "args": list(exc.args),
        "is_exception": isinstance(exc, Exception),
        "repr": repr(exc),
    }


def make_request(spec):
    """A task request as the worker builds it (only the fields backends read)."""
    fields = dict(spec or {})
    if "queue" in fields:
        fields["delivery_info"] = {"routing_key": fields.pop("queue")}
    if "hostname" not in fields and "worker" in fields:
        fields["hostname"] = fields.pop("worker")
    if "name" in fields:
        fields["task"] = fields.pop("name")
    fields.setdefault("children", [])
    return Context(fields)


def body_signature(body_id):
    return tsum.s().set(queue="body", task_id=body_id)


def cmd_read(req):
    out = []
    for item in req["items"]:
        res = AsyncResult(item["id"], app=app)
        entry = {"id": item["id"]}
        if item.get("get", True):
            try:
                entry["value"] = res.get(timeout=item.get("timeout", 10), disable_sync_subtasks=False)
            except Exception as exc:  # what get() re-raises is the point
                entry["raised"] = describe_exception(exc)
        entry["state"] = res.state
        result = res.result
        if isinstance(result, BaseException):
            entry["result_exc"] = describe_exception(result)
        else:
            entry["result"] = result
        meta = res._get_task_meta()
        entry["date_done"] = meta.get("date_done")
        entry["traceback"] = res.traceback
        for field in ("name", "args", "kwargs", "worker", "queue", "retries"):
            entry[field] = getattr(res, field, None)
        out.append(entry)
    return out


def cmd_store(req):
    backend = app.backend
    done = []
    for item in req["items"]:
        op = item["op"]
        task_id = item.get("id")
        request = make_request(item.get("request")) if item.get("request") else None
        if op == "await_subscriber":
            deadline = time.monotonic() + item.get("timeout", 10)
            while backend.client.pubsub_numsub(item["key"])[0][1] < 1:
                if time.monotonic() > deadline:
                    raise SystemExit(f"nobody subscribed to {item['key']}")
                time.sleep(0.005)
        elif op == "done":
            backend.mark_as_done(task_id, item.get("result"), request=request)
        elif op == "failure":
            backend.mark_as_failure(task_id, make_exception(item["exc"]), traceback=item.get("traceback"),
                                    request=request, call_errbacks=False)
        elif op == "revoked":
            backend.mark_as_revoked(task_id, item.get("reason", "revoked"), request=request)
        elif op == "retry":
            backend.mark_as_retry(task_id, make_exception(item["exc"]), traceback=item.get("traceback"),
                                  request=request)
        elif op == "started":
            backend.mark_as_started(task_id, pid=item.get("pid", 1), hostname=item.get("hostname", "py@peer"))
        elif op == "store_result":
            backend.store_result(task_id, item.get("result"), item["state"], request=request)
        else:
            raise SystemExit(f"unknown store op {op!r}")
        done.append(op)
    return done


def cmd_set_chord_size(req):
    app.backend.set_chord_size(req["group"], req["size"])
    return True


def cmd_chord_part(req):
    """``on_chord_part_return`` for each part, as ``mark_as_done``/``mark_as_failure`` call it."""
    for item in req["items"]:
        request = Context({
            "id": item["id"],
            "group": item["group"],
            "group_index": item.get("index"),
            "chord": body_signature(item["body_id"]),
            "delivery_info": {},
        })
        state = item.get("state", states.SUCCESS)
        result = make_exception(item["exc"]) if "exc" in item else item.get("result")
        if item.get("store", False):
            app.backend.store_result(item["id"], result, state, request=request)
        app.backend.on_chord_part_return(request, state, result)
    return True


def build_group(spec):
    members = [build_group(m) if isinstance(m, dict) else AsyncResult(m, app=app) for m in spec["members"]]
    return GroupResult(spec["group"], members, app=app)


def cmd_group_save(req):
    build_group(req).save()
    return True


def cmd_group_restore(req):
    restored = GroupResult.restore(req["group"], app=app)
    return None if restored is None else restored.as_tuple()


def cmd_keys(req):
    backend = app.backend
    key = lambda k: k.decode() if isinstance(k, bytes) else k  # noqa: E731
    return {
        "task": key(backend.get_key_for_task(req["task"])),
        "group": key(backend.get_key_for_group(req["group"])),
        "chord_join": key(backend.get_key_for_group(req["group"], ".j")),
    }


def cmd_send(req):
    """Sends chords whose header tasks go partly to ``rust``, and plain tasks."""
    out = {"chords": [], "tasks": {}}
    for spec in req.get("chords", []):
        rust = set(spec["rust_indices"])
        header = [add.s(i, i).set(queue="rust" if i in rust else "celery") for i in range(spec["n"])]
        result = chord(header, body_signature(spec["body_id"])).apply_async()
        out["chords"].append({
            "group": result.parent.id,
            "body": result.id,
            "header": [r.id for r in result.parent.results],
        })
    for name, (task, args) in {"add": (add, (2, 3)), "fail": (fail, ("bad",)),
                               "fail_custom": (fail_custom, ("odd",))}.items():
        if name in req.get("tasks", []):
            out["tasks"][name] = task.apply_async(args, queue="celery").id
    return out


COMMANDS = {
    "read": cmd_read,
    "store": cmd_store,
    "set_chord_size": cmd_set_chord_size,
    "chord_part": cmd_chord_part,
    "group_save": cmd_group_save,
    "group_restore": cmd_group_restore,
    "keys": cmd_keys,
    "send": cmd_send,
}


def main():
    command = sys.argv[1]
    req = loads(sys.stdin.read() or "{}")
    configure(req["url"], req.get("conf"))
    print(dumps(COMMANDS[command](req)))
    sys.stdout.flush()


if __name__ == "__main__":
    # Run as the module ``backend_peer``, so the tasks and CustomError have the
    # names a worker importing this file gives them.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import backend_peer

    backend_peer.main()
