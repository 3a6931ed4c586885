"""Python's enqueue rate for scripts/bench: ``apply_async`` in a loop.

    python produce.py <broker-url> <queue> <count>

Sends one task to warm the connection, then ``count`` more, timing only those;
prints ``{"count": .., "seconds": ..}``.
"""

import json
import os
import sys
import time

os.environ["BENCH_BROKER"] = sys.argv[1]

from bench_app import noop  # noqa: E402


def main():
    queue, count = sys.argv[2], int(sys.argv[3])
    noop.apply_async(queue=queue)
    start = time.perf_counter()
    for _ in range(count):
        noop.apply_async(queue=queue)
    seconds = time.perf_counter() - start
    print(json.dumps({"count": count, "seconds": seconds}))


if __name__ == "__main__":
    main()
