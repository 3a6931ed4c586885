"""An app's ``beat_schedule`` as celeriac beat TOML
(``python -m celeriac_shim export-beat module:app``).

Each entry becomes a ``[beat_schedule.<name>]`` table with ``task``,
``schedule``, ``args``, ``kwargs``, ``options`` and ``relative``:

- a number of seconds, a ``timedelta`` or ``celery.schedules.schedule``:
  the number of seconds;
- ``celery.schedules.crontab``: its five fields as written
  (``minute hour day_of_month month_of_year day_of_week``), with the
  crontab's time zone when it has its own;
- ``celery.schedules.solar`` is refused with a message: celeriac beat has no
  sunrise/sunset schedule.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import json
import math
import re
from typing import Any, Dict, List, Tuple

from celery import Celery
from celery.schedules import crontab, schedule, solar


class ExportError(ValueError):
    """An entry celeriac beat cannot run as written."""


_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(name: str) -> str:
    return name if _BARE_KEY.match(name) else json.dumps(name)


def _toml_value(value: Any, where: str) -> str:
    if value is None:
        raise ExportError(f"{where}: None has no TOML form; leave the key out")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExportError(f"{where}: {value!r} has no TOML form")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, _dt.timedelta):
        return _toml_value(value.total_seconds(), where)
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            raise ExportError(f"{where}: a naive datetime is ambiguous; give it a time zone")
        return json.dumps(value.isoformat())
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v, f"{where}[{i}]") for i, v in enumerate(value)) + "]"
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            if v is None:
                continue
            items.append(f"{_key(str(k))} = {_toml_value(v, f'{where}.{k}')}")
        return "{ " + ", ".join(items) + " }" if items else "{}"
    raise ExportError(f"{where}: a {type(value).__name__} has no TOML form ({value!r})")


def _seconds(value: float, where: str) -> str:
    if not math.isfinite(value) or value <= 0:
        raise ExportError(f"{where}: the interval must be a positive number of seconds, not {value!r}")
    return repr(int(value)) if float(value).is_integer() else repr(float(value))


def _schedule(entry: Dict[str, Any], where: str) -> Tuple[str, List[str]]:
    """The ``schedule`` value and any extra lines (``timezone``, ``relative``)."""
    sched = entry.get("schedule")
    extra: List[str] = []
    if isinstance(sched, solar):
        raise ExportError(
            f"{where}: solar schedules ({sched.event} at {sched.lat}, {sched.lon}) are not supported by celeriac beat; "
            "use a crontab at the time you need, or keep this entry in celery beat"
        )
    if isinstance(sched, crontab):
        fields = [sched._orig_minute, sched._orig_hour, sched._orig_day_of_month,
                  sched._orig_month_of_year, sched._orig_day_of_week]
        text = " ".join(str(f).replace(" ", "") for f in fields)
        tz = getattr(sched, "tz", None)
        if tz is not None and getattr(sched, "nowfun", None) is not None:
            name = getattr(tz, "key", None) or getattr(tz, "zone", None)
            if name:
                extra.append(f"timezone = {json.dumps(name)}")
        return json.dumps(text), extra
    if isinstance(sched, schedule):
        if sched.relative:
            extra.append("relative = true")
        return _seconds(sched.run_every.total_seconds(), where), extra
    if isinstance(sched, _dt.timedelta):
        return _seconds(sched.total_seconds(), where), extra
    if isinstance(sched, (int, float)) and not isinstance(sched, bool):
        return _seconds(float(sched), where), extra
    raise ExportError(f"{where}: a schedule of type {type(sched).__name__} is not supported by celeriac beat")


def export(app: Celery) -> str:
    """The TOML text of ``app.conf.beat_schedule``; raises :class:`ExportError`
    naming every entry that cannot be exported."""
    lines = [
        "# beat_schedule of the Celery app "
        f"{app.main!r}, exported by `python -m celeriac_shim export-beat`.",
        f"timezone = {json.dumps(str(app.conf.timezone or 'UTC'))}",
        "",
    ]
    errors = []
    for name, entry in (app.conf.beat_schedule or {}).items():
        where = f"beat_schedule[{name!r}]"
        try:
            if "task" not in entry:
                raise ExportError(f"{where}: no task")
            sched, extra = _schedule(entry, where)
            block = [f"[beat_schedule.{_key(name)}]", f"task = {json.dumps(entry['task'])}", f"schedule = {sched}"]
            block.extend(extra)
            if entry.get("relative"):
                block.append("relative = true")
            if entry.get("args"):
                block.append(f"args = {_toml_value(list(entry['args']), where + '.args')}")
            if entry.get("kwargs"):
                block.append(f"kwargs = {_toml_value(dict(entry['kwargs']), where + '.kwargs')}")
            options = {k: v for k, v in (entry.get("options") or {}).items() if v is not None}
            if options:
                block.append(f"options = {_toml_value(options, where + '.options')}")
            lines.extend(block + [""])
        except ExportError as e:
            errors.append(str(e))
    if errors:
        raise ExportError("\n".join(errors))
    return "\n".join(lines)


def load_app(spec: str) -> Celery:
    """The app named by ``module:attribute`` (``module`` alone: its ``app`` or ``celery``)."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    if attr:
        app = getattr(module, attr)
    else:
        app = getattr(module, "app", None) or getattr(module, "celery", None)
    if not isinstance(app, Celery):
        raise ExportError(f"{spec}: not a Celery app; name it as module:attribute")
    return app
