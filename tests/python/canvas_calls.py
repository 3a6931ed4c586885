#!/usr/bin/env python3
"""Runs Celery canvases of the suite's tasks by name and prints what `.get()` gave.

    canvas_calls.py --broker URL --backend URL [--timeout S]

Prints one JSON object: {"<canvas>": {"result": ...} | {"exc_type": ..., "exc_args": [...]}}
for a chain, a group, a chord, a chord with a failing header task (and its
body), and a task with a link callback (and that callback, its child).
"""

import argparse
import json

from celery import Celery, chain, chord, group


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
