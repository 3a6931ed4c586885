"""Reading a celeriac task manifest (``celeriac tasks --json``).

A manifest is ``{"manifest_version": 1, "celeriac": "<version>", "tasks":
[...]}``; each task has ``name``, ``set``, ``queue``, ``options``,
``params`` (``name``, ``annotation``, ``kind`` = ``positional`` or
``keyword``, ``required``), ``var_positional``, ``var_keyword`` and ``rust``
(the Rust extractor types, for people).
"""

from __future__ import annotations

import inspect
import json
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

SUPPORTED_VERSIONS = (1,)


class ManifestError(ValueError):
    """The manifest cannot be used (not JSON, wrong shape, newer format)."""


@dataclass(frozen=True)
class Param:
    """One declared parameter of a Rust task."""

    name: str
    annotation: str = "Any"
    keyword: bool = False
    required: bool = True


@dataclass(frozen=True)
class TaskSpec:
    """One Rust task as the manifest describes it."""

    name: str
    queue: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    params: List[Param] = field(default_factory=list)
    var_positional: bool = False
    var_keyword: bool = False
    task_set: str = ""
    rust: str = ""

    def signature(self) -> inspect.Signature:
        """The Python signature callers must match."""
        P = inspect.Parameter
        positional = [
            P(p.name, P.POSITIONAL_OR_KEYWORD, annotation=p.annotation)
            for p in self.params
            if not p.keyword
        ]
        keyword = [
            P(p.name, P.KEYWORD_ONLY, default=None, annotation=p.annotation)
            for p in self.params
            if p.keyword
        ]
        params = list(positional)
        if self.var_positional:
            params.append(P("args", P.VAR_POSITIONAL))
        params.extend(keyword)
        if self.var_keyword:
            params.append(P("kwargs", P.VAR_KEYWORD))
        return inspect.Signature(params)

    @property
    def identifier(self) -> str:
        """The name as a Python identifier (``science.calibrate`` → ``science_calibrate``)."""
        out = "".join(c if c.isalnum() or c == "_" else "_" for c in self.name)
        return out if out and not out[0].isdigit() else f"_{out}"


@dataclass(frozen=True)
class Manifest:
    """A whole manifest."""

    tasks: List[TaskSpec]
    celeriac: str = ""

    def by_name(self) -> Dict[str, TaskSpec]:
        return {t.name: t for t in self.tasks}


def _param(raw: Any, task: str) -> Param:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise ManifestError(f"task {task!r}: a parameter is not an object with a name: {raw!r}")
    if not raw["name"].isidentifier():
        raise ManifestError(f"task {task!r}: parameter name {raw['name']!r} is not a Python identifier")
    return Param(
        name=raw["name"],
        annotation=str(raw.get("annotation") or "Any"),
        keyword=raw.get("kind") == "keyword",
        required=bool(raw.get("required", raw.get("kind") != "keyword")),
    )


def _task(raw: Any) -> TaskSpec:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str) or not raw["name"]:
        raise ManifestError(f"a task entry without a name: {raw!r}")
    name = raw["name"]
    queue = raw.get("queue")
    if queue is not None and not isinstance(queue, str):
        raise ManifestError(f"task {name!r}: queue must be a string, not {queue!r}")
    return TaskSpec(
        name=name,
        queue=queue,
        options=dict(raw.get("options") or {}),
        params=[_param(p, name) for p in raw.get("params") or []],
        var_positional=bool(raw.get("var_positional")),
        var_keyword=bool(raw.get("var_keyword")),
        task_set=str(raw.get("set") or ""),
        rust=str(raw.get("rust") or ""),
    )


def load_manifest(source: Union["Manifest", dict, str, "os.PathLike[str]"]) -> Manifest:
    """A manifest from a :class:`Manifest`, a dict, a file path or a JSON text."""
    if isinstance(source, Manifest):
        return source
    if isinstance(source, os.PathLike) or (isinstance(source, str) and os.path.isfile(source)):
        with open(source, encoding="utf-8") as f:
            source = f.read()
    if isinstance(source, str):
        try:
            source = json.loads(source)
        except json.JSONDecodeError as e:
            raise ManifestError(f"the manifest is neither a file nor JSON: {e}") from e
    if not isinstance(source, dict) or not isinstance(source.get("tasks"), list):
        raise ManifestError("a manifest is an object with a 'tasks' list (from `celeriac tasks --json`)")
    version = source.get("manifest_version", 1)
    if version not in SUPPORTED_VERSIONS:
        raise ManifestError(
            f"manifest_version {version} is newer than this celeriac_shim understands; upgrade celeriac-shim"
        )
    return Manifest(tasks=[_task(t) for t in source["tasks"]], celeriac=str(source.get("celeriac") or ""))
