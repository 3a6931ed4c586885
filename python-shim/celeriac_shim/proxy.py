"""Rust tasks as routed Celery tasks in a Python app (:func:`attach`).

Each proxy is a :class:`celery.Task` registered under the Rust task's name.
It never runs in Python: calling it directly raises. ``delay``,
``apply_async`` and signatures send it to the task's queue (the manifest's
``queue``, unless the call names another), after checking the arguments
against the manifest's parameters: a missing, extra or ill-typed argument
raises :class:`TypeError` before anything is sent. Arguments are sent the way
the Rust task reads them: declared positional parameters in ``args`` (even if
the caller named them), keyword parameters in ``kwargs``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

from celery import Celery, Task

from .manifest import Manifest, TaskSpec, load_manifest


def _type_ok(value: Any, annotation: str) -> bool:
    """Whether ``value`` fits a manifest annotation (the simple ones are checked;
    anything else is taken)."""
    a = annotation.strip()
    m = re.fullmatch(r"Optional\[(.*)\]", a)
    if m:
        return value is None or _type_ok(value, m.group(1))
    m = re.fullmatch(r"List\[(.*)\]", a)
    if m:
        return isinstance(value, (list, tuple)) and all(_type_ok(v, m.group(1)) for v in value)
    if a.startswith("Dict[") or a == "dict":
        return isinstance(value, dict)
    if a == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if a == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if a == "bool":
        return isinstance(value, bool)
    if a == "str":
        return isinstance(value, str)
    if a == "list":
        return isinstance(value, (list, tuple))
    if a == "None":
        return value is None
    return True


class RustTask(Task):
    """A task that runs on celeriac workers; see the module docs."""

    #: The manifest entry (set on each generated subclass).
    spec: TaskSpec
    #: The signature callers must match.
    celeriac_signature: inspect.Signature
    #: Checked here, not by Celery's own `typing` check (the proxy's `run` takes anything).
    typing = False

    def run(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(
            f"{self.name} is a Rust task: it runs on celeriac workers; call .delay() or .apply_async() to send it"
        )

    def celeriac_bind(self, args: Tuple[Any, ...], kwargs: Mapping[str, Any]) -> Tuple[list, dict]:
        """Checks a call against the manifest; returns the ``(args, kwargs)`` to send."""
        try:
            bound = self.celeriac_signature.bind(*args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{self.name}{self.celeriac_signature}: {e}") from None
        send_args: list = []
        send_kwargs: dict = {}
        for name, param in self.celeriac_signature.parameters.items():
            if name not in bound.arguments:
                continue
            value = bound.arguments[name]
            if param.kind is param.VAR_POSITIONAL:
                send_args.extend(value)
                continue
            if param.kind is param.VAR_KEYWORD:
                send_kwargs.update(value)
                continue
            annotation = param.annotation if isinstance(param.annotation, str) else "Any"
            if param.kind is param.KEYWORD_ONLY and value is None:
                continue  # the default: left out, as the Rust side reads a missing key as None
            if not _type_ok(value, annotation):
                raise TypeError(
                    f"{self.name}: argument {name!r} must be {annotation}, not {type(value).__name__} ({value!r})"
                )
            if param.kind is param.KEYWORD_ONLY:
                send_kwargs[name] = value
            else:
                send_args.append(value)
        return send_args, send_kwargs

    def apply_async(self, args=None, kwargs=None, **options):  # noqa: D102 (Celery's)
        send_args, send_kwargs = self.celeriac_bind(tuple(args or ()), dict(kwargs or {}))
        if self.spec.queue and not any(k in options for k in ("queue", "exchange", "routing_key")):
            options["queue"] = self.spec.queue
        return super().apply_async(send_args, send_kwargs, **options)


class RustTasks(Mapping[str, RustTask]):
    """The proxies :func:`attach` made: by name (``rust["science.calibrate"]``)
    and by identifier (``rust.science_calibrate``)."""

    def __init__(self, tasks: Dict[str, RustTask]):
        self._tasks = tasks
        self._ids = {t.spec.identifier: t for t in tasks.values()}

    def __getitem__(self, name: str) -> RustTask:
        return self._tasks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tasks)

    def __len__(self) -> int:
        return len(self._tasks)

    def __getattr__(self, identifier: str) -> RustTask:
        try:
            return self.__dict__["_ids"][identifier]
        except KeyError:
            raise AttributeError(f"no Rust task with the identifier {identifier!r}") from None


def _add_routes(app: Celery, routes: Dict[str, Dict[str, str]]) -> None:
    """Adds ``{name: {"queue": q}}`` routes to ``task_routes``, keeping the app's own first."""
    if not routes:
        return
    current = app.conf.task_routes
    if current is None:
        app.conf.task_routes = dict(routes)
    elif isinstance(current, dict):
        merged = dict(routes)
        merged.update(current)  # the app's own routes win
        app.conf.task_routes = merged
    elif isinstance(current, (list, tuple)):
        app.conf.task_routes = tuple(current) + (dict(routes),)
    else:  # one router (a function or a dotted name)
        app.conf.task_routes = (current, dict(routes))
    # The router is cached once built; build it again with the new routes.
    app.amqp.__dict__.pop("router", None)
    app.amqp.flush_routes()


def attach(app: Celery, manifest: Any, *, routes: bool = True, replace: bool = False) -> RustTasks:
    """Registers every task of ``manifest`` (see :func:`load_manifest`) in
    ``app`` as a :class:`RustTask` proxy; returns them.

    A name the app already has (a Python task) is left alone unless
    ``replace``. With ``routes``, ``task_routes`` gain a route for every Rust
    task that names a queue (the app's own routes win).
    """
    m: Manifest = load_manifest(manifest)
    made: Dict[str, RustTask] = {}
    route_table: Dict[str, Dict[str, str]] = {}
    for spec in m.tasks:
        if spec.name in app.tasks and not replace and not isinstance(app.tasks[spec.name], RustTask):
            continue
        cls = type(
            f"RustTask_{spec.identifier}",
            (RustTask,),
            {
                "name": spec.name,
                "spec": spec,
                "celeriac_signature": spec.signature(),
                "ignore_result": bool(spec.options.get("ignore_result") or False),
                "__module__": __name__,
                "__doc__": f"Rust task {spec.name}{spec.signature()} (celeriac, task set {spec.task_set!r}).",
            },
        )
        made[spec.name] = app.register_task(cls())
        if spec.queue:
            route_table[spec.name] = {"queue": spec.queue}
    if routes:
        _add_routes(app, route_table)
    return RustTasks(made)
