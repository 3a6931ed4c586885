#!/usr/bin/env python3
"""Parses a Prometheus text exposition from stdin with prometheus_client's own
parser (what a scrape must get through) and prints each family as a JSON line:

    {"name", "type", "samples": [[sample_name, {labels}, value], ...]}

Exit 1 (with the parser's error on stderr) if the text does not parse.
"""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def main() -> int:
    text = sys.stdin.read()
    try:
        families = list(text_string_to_metric_families(text))
    except Exception as exc:  # the parser's error is the finding
        print(f"unparseable exposition: {exc!r}", file=sys.stderr)
        return 1
    for f in families:
        samples = [[s.name, s.labels, s.value] for s in f.samples]
        print(json.dumps({"name": f.name, "type": f.type, "samples": samples}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
