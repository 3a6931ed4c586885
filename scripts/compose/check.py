#!/usr/bin/env python3
"""Validates a compose file against the Compose Specification's JSON schema
(scripts/compose/compose-spec.json), plus the cross references the schema
cannot see. Exit 0 when valid; the problems on stderr otherwise.

    scripts/compose/check.py [docker-compose.yml]
"""

import json
import os
import re
import sys
from pathlib import Path

import jsonschema
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def interpolate(value):
    """`${VAR}`, `${VAR:-default}`, `${VAR-default}` as Compose resolves them
    (from the environment; `$$` is a literal `$`)."""
    if isinstance(value, str):
        def one(m):
            name, op, arg = m.group(1), m.group(2), m.group(3) or ""
            set_ = name in os.environ and (os.environ[name] != "" or op in (None, "-", "?", "+"))
            if op in (":-", "-"):
                return os.environ[name] if set_ else arg
            if op in (":+", "+"):
                return arg if set_ else ""
            return os.environ.get(name, "")
        return INTERPOLATION.sub(one, value).replace("$$", "$")
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


def problems(path: Path):
    doc = interpolate(yaml.safe_load(path.read_text()))
    schema = json.loads((HERE / "compose-spec.json").read_text())
    validator = jsonschema.Draft7Validator(schema)
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
        where = "/".join(str(p) for p in error.path) or "(top)"
        yield f"{where}: {error.message}"
    services = doc.get("services") or {}
    for name, service in services.items():
        deps = service.get("depends_on") or []
        for dep in deps if isinstance(deps, list) else deps.keys():
            if dep not in services:
                yield f"services/{name}/depends_on: no service named {dep!r}"
        if "image" not in service and "build" not in service:
            yield f"services/{name}: neither image nor build"
    prometheus = ROOT / "config/examples/compose/prometheus.yml"
    if prometheus.exists():
        conf = yaml.safe_load(prometheus.read_text())
        for job in conf.get("scrape_configs", []):
            for static in job.get("static_configs", []):
                for target in static.get("targets", []):
                    host = target.rsplit(":", 1)[0]
                    if host not in services:
                        yield f"{prometheus.name}: job {job.get('job_name')!r} scrapes {target}, not a service"


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docker-compose.yml"
    found = list(problems(path))
    for p in found:
        print(f"{path.name}: {p}", file=sys.stderr)
    if found:
        return 1
    print(f"{path.name}: valid against the Compose Specification schema")
    return 0


if __name__ == "__main__":
    sys.exit(main())
