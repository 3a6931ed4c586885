"""What Celery 5.7's canvas code does when a worker applies a signature:
the next step of a chain, a link, a chord body, an errback group. Writes
client/tests/fixtures/worker_apply.json, which client/src/canvas.rs's
`plans_match_what_celery_applies` compares celeriac's plans with.

    .venv/bin/python client/tests/python/worker_apply.py

No broker is used: `Task.apply_async` (what `Signature.apply_async` ends in)
and the backend's `set_chord_size`/`apply_chord` are recorded instead. Each
case first freezes a canvas as the producer does (ids pinned: they start with
00000007-), takes the signature a worker would be handed (a step of the
producer message's `chain`, a chord body, ...), then applies it exactly as
the worker does (celery/app/trace.py, celery/backends/redis.py and base.py).
Ids made while applying are random; the test numbers them by first
appearance on both sides.
"""

import itertools
import json
import sys
from pathlib import Path

from celery import Celery, chain, chord, group, signature
from celery.app import task as task_module
from celery.result import GroupResult

app = Celery("worker_apply", broker="memory://", backend="cache+memory://", set_as_current=True)
app._local.oid = "reply-oid"  # the reply_to frozen into signatures



@app.task(name="t.add")
def add(x, y):
    return x + y


@app.task(name="t.identity")
def identity(x):
    return x


@app.task(name="t.fail")
def fail(*args):
    raise ValueError("fail")


@app.task(name="t.tsum")
def tsum(xs):
    return sum(xs)


@app.task(name="t.echo")
def echo(*args, **kwargs):
    return args


OPS = []


def record_apply_async(self, args=None, kwargs=None, **options):
    options = {k: v for k, v in options.items() if k not in ("producer", "add_to_parent")}
    OPS.append({"send": [self.name, list(args or ()), dict(kwargs or {}), options]})
    return self.AsyncResult(options.get("task_id") or "none")


task_module.Task.apply_async = record_apply_async
app.backend.set_chord_size = lambda gid, size: OPS.append({"chord_size": [gid, size]})
app.backend.apply_chord = lambda args, body, **kw: OPS.append({"apply_chord": GroupResult(*args).as_tuple()})

_pinned = itertools.count(1)


def pinned_ids():
    """Ids of the producer side: 00000007-0000-4000-8000-<n>."""
    import celery.canvas
    import kombu.utils.uuid

    original = celery.canvas.uuid

    def fake():
        return f"00000007-0000-4000-8000-{next(_pinned):012x}"

    class Ctx:
        def __enter__(self):
            celery.canvas.uuid = fake
            kombu.utils.uuid.uuid = fake

        def __exit__(self, *exc):
            celery.canvas.uuid = original
            kombu.utils.uuid.uuid = original

    return Ctx()


def produced(canvas):
    """The messages the producer sends for `canvas` (recorded, ids pinned)."""
    OPS.clear()
    with pinned_ids():
        canvas.apply_async()
    out = [op["send"] for op in OPS if "send" in op]
    OPS.clear()
    return out


def jsonable(value):
    return json.loads(json.dumps(value, default=lambda o: dict(o) if isinstance(o, dict) else repr(o)))


def case(name, sig, args, options, apply):
    """Records what applying `sig` with `args` and `options` does."""
    sig_value = jsonable(dict(sig))
    OPS.clear()
    apply(signature(json.loads(json.dumps(sig_value)), app=app), args, options)
    return {"name": name, "sig": sig_value, "args": jsonable(args), "options": jsonable(options), "ops": jsonable(OPS)}


def step(sig, args, options):
    """trace.py: `_chsig.apply_async((retval,), chain=chain[:-1], parent_id=..., root_id=..., priority=...)`."""
    sig.apply_async(tuple(args), **options)


def delay(sig, args, options):
    """redis.py: `callback.delay(resl)`."""
    sig.delay(*args)


TRACE = {"parent_id": "00000007-0000-4000-8000-0000000000aa", "root_id": "00000007-0000-4000-8000-0000000000bb",
         "priority": None}


def next_step(message):
    """The last entry of a message's `chain` and the rest: what the worker pops."""
    rest = list(message[3]["chain"])
    return rest.pop(), rest


def cases():
    out = []

    # test_nested_group_chain: a chord header part that is a chain ending in a group.
    first = produced(chain(add.si(1, 0), group(add.si(1, 100), chain(add.si(1, 200), group(add.si(1, 1000), add.si(1, 2000)))), add.si(1, 10)))[0]
    chord_sig, rest = next_step(first)
    out.append(case("chord_header_chain_ending_in_group", chord_sig, [1], dict(TRACE, chain=rest), step))
    # ... and the inner chain's first step, then its group, as the worker pops them.
    OPS.clear()
    with pinned_ids():
        signature(chord_sig, app=app).apply_async((1,), chain=rest, **{k: v for k, v in TRACE.items() if k != "chain"})
    inner = [op["send"] for op in OPS if "send" in op and op["send"][3].get("chain")]
    OPS.clear()
    group_sig, group_rest = next_step(inner[0])
    out.append(case("group_ending_a_chain_in_a_chord_header", group_sig, [201], dict(TRACE, chain=group_rest), step))

    # test_chain_chord_chain_chord: a chord header part that is a chain ending in a chord.
    first = produced(chain(identity.si(1), chord([identity.si(2), chain(identity.si(3), chord([identity.si(4), identity.si(5)], identity.si(6)))], identity.si(7))))[0]
    chord_sig, rest = next_step(first)
    out.append(case("chord_header_chain_ending_in_chord", chord_sig, [1], dict(TRACE, chain=rest), step))

    # test_nested_chord_group_chain_group_tail: the group of a chain in a chord header.
    first = produced(chord(group(chain(identity.s(42), group(identity.s(), identity.s()))), identity.s()))[0]
    group_sig, rest = next_step(first)
    out.append(case("group_tail_of_a_chain_in_a_chord_header", group_sig, [42], dict(TRACE, chain=rest), step))

    # A chord body that is a group with its own link_error, under the chord's link_error.
    body = group(identity.si(1), fail.si())
    body.link_error(echo.si("group errback"))
    c = chord([identity.si(0)], body)
    c.link_error(echo.si("chord errback"))
    message = produced(c)[0]
    out.append(case("group_body_with_link_error", message[3]["chord"], [[0]], {}, delay))

    # A chord inside a group chord body, the group with a link_error.
    inner = chord([identity.si(1)], identity.si(2))
    body = group(inner, identity.si(3))
    body.link_error(echo.si("group errback"))
    message = produced(chord([identity.si(0)], body))[0]
    out.append(case("group_body_holding_a_chord", message[3]["chord"], [[0]], {}, delay))

    # A chain body: the worker completing the chord applies it.
    message = produced(chord([add.s(1, 1)], chain(tsum.s(), add.s(10))))[0]
    out.append(case("chain_body", message[3]["chord"], [[2]], {}, delay))

    # Errbacks sent as a group (backends/base.py `_call_task_errbacks`).
    errbacks = group([echo.si("e1"), echo.s()])
    out.append(case("errback_group", errbacks, ["00000007-0000-4000-8000-0000000000cc"],
                    {"parent_id": "00000007-0000-4000-8000-0000000000cc",
                     "root_id": "00000007-0000-4000-8000-0000000000bb"}, step))

    # A link (no chain option) that is a chain.
    link = chain(add.s(1), add.s(2))
    out.append(case("link_chain", link, [5], {k: v for k, v in TRACE.items()}, step))
    return out


if __name__ == "__main__":
    target = Path(__file__).resolve().parent.parent / "fixtures" / "worker_apply.json"
    data = {"celery": __import__("celery").__version__, "cases": cases()}
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(data['cases'])} cases to {target}", file=sys.stderr)
