#!/usr/bin/env python3
"""Runs Celery canvases of the suite's tasks by name and prints what `.get()` gave.

    canvas_calls.py --broker URL --backend URL [--timeout S]

Prints one JSON object: {"<canvas>": {"result": ...} | {"exc_type": ..., "exc_args": [...]}}
for a chain, a group, a chord, a chord with a failing header task (and its
body), a task with a link callback (and that callback, its child), the
built-ins celery.map and celery.starmap, and celery.chord_unlock (the join
Celery sends for backends without a native one) over a finished group, with
and without a failed member (the callback gets the values, or fails with
ChordError).
"""

import argparse
import json

from celery import Celery, chain, chord, group
from celery.canvas import xmap, xstarmap


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--broker", required=True)
    p.add_argument("--backend", required=True)
    p.add_argument("--timeout", type=float, default=30.0)
    a = p.parse_args()
    app = Celery("canvas", broker=a.broker, backend=a.backend)

    def sig(name, *args, **options):
        return app.signature(f"t.integration.tasks.{name}", args=args, **options)

    sent = {
        # add(1, 2) = 3 -> add(3, 3) = 6 -> mul(6, 10) = 60
        "chain": chain(sig("add", 1, 2), sig("add", 3), sig("mul", 10)).apply_async(),
        "group": group(sig("add", i, i) for i in range(4)).apply_async(),
        "chord": chord([sig("add", i, i) for i in range(5)], sig("tsum")).apply_async(),
        "chord_failed": chord([sig("add", 1, 1), sig("fail")], sig("tsum")).apply_async(),
    }
    # link: identity gets the parent's result; link_error: the old-style
    # errback gets the failed task's id.
    linked = sig("add", 20, 22).set(link=sig("identity"))
    sent["link"] = linked.apply_async()
    sent["starmap"] = xstarmap(sig("add"), [(1, 1), (2, 2)], app=app).apply_async()
    sent["map"] = xmap(sig("identity"), [1, "a", None], app=app).apply_async()
    # chord_unlock over groups that already finished.
    for name, members in (("unlock", [sig("add", 1, 1), sig("add", 2, 2)]), ("unlock_failed", [sig("add", 1, 1), sig("fail")])):
        header = group(members).apply_async()
        header.join(timeout=a.timeout, propagate=False)
        body = sig("tsum").freeze()
        callback = sig("tsum").set(task_id=body.id)
        if name == "unlock_failed":
            callback = callback.set(link_error=[sig("identity")])
        app.send_task("celery.chord_unlock", args=[header.id, dict(callback)],
                      kwargs={"result": [r.as_tuple() for r in header.results], "interval": 0.1})
        sent[name] = app.AsyncResult(body.id)
    out = {}
    for name, res in sent.items():
        try:
            out[name] = {"result": res.get(timeout=a.timeout, disable_sync_subtasks=False)}
        except Exception as exc:  # the canvas's exception, re-raised by Celery
            out[name] = {"exc_type": type(exc).__name__, "exc_args": [str(x) for x in exc.args]}
    # A failed header task fails the chord body with ChordError; get() above
    # re-raised the header's own exception first, as Celery does.
    body = app.AsyncResult(sent["chord_failed"].id)
    body_exc = body.get(timeout=a.timeout, propagate=False)
    out["chord_failed_body"] = {"state": body.state, "exc_type": type(body_exc).__name__}
    # The link's own result: the child of the linked task.
    child = sent["link"].children[0] if sent["link"].children else None
    out["link_child"] = {"result": child.get(timeout=a.timeout) if child else None}
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
