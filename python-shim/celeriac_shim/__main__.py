"""``python -m celeriac_shim``: ``stubs MANIFEST`` writes a typed ``.pyi``;
``export-beat module:app`` writes an app's ``beat_schedule`` as celeriac beat
TOML. Both print to stdout unless ``-o FILE`` is given."""

from __future__ import annotations

import argparse
import os
import sys


def _write(text: str, path: str) -> None:
    if path == "-":
        sys.stdout.write(text)
    else:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m celeriac_shim", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("stubs", help="write a typed .pyi for the tasks of a manifest (celeriac tasks --json)")
    s.add_argument("manifest", help="the manifest file (or - for stdin)")
    s.add_argument("-o", "--output", default="-", help="where to write the stub (default: stdout)")
    e = sub.add_parser("export-beat", help="write an app's beat_schedule as celeriac beat TOML")
    e.add_argument("app", help="module:attribute of the Celery app")
    e.add_argument("-o", "--output", default="-", help="where to write the TOML (default: stdout)")
    a = p.parse_args(argv)
    if a.command == "stubs":
        from .manifest import ManifestError, load_manifest
        from .stubs import render

        try:
            manifest = load_manifest(sys.stdin.read() if a.manifest == "-" else a.manifest)
        except (OSError, ManifestError) as err:
            print(f"celeriac_shim stubs: {err}", file=sys.stderr)
            return 1
        _write(render(manifest), a.output)
        return 0
    from .beat_export import ExportError, export, load_app

    sys.path.insert(0, os.getcwd())
    try:
        text = export(load_app(a.app))
    except (ImportError, ExportError) as err:
        print(f"celeriac_shim export-beat: {err}", file=sys.stderr)
        return 1
    _write(text, a.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
