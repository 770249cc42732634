"""`make bench`: every benchmark in turn, each in its own process, figures printed as they come.

    .venv/bin/python bench/run_all.py            # the end-to-end figures the README records
    .venv/bin/python bench/run_all.py --all      # also the per-component benches

Nothing here passes or fails on a figure: targets are judged by reading the output (README,
"Benchmarks"), on a machine that is otherwise idle.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent

END_TO_END = [
    ["ingest_bench.py"],  # Binance -> SQLite: throughput, latency, RSS
    ["vs_cryptofeed.py"],  # Redis / PostgreSQL / Kafka through the daemon, against cryptofeed 2.4
    ["polymarket_whale_latency.py"],  # whale trade seen -> event in Kafka
]
COMPONENTS = [
    ["ws_receive.py"],
    ["sqlite_sink.py"],
    ["postgres_sink.py"],
    ["redis_sink.py"],
    ["kafka_sink.py"],
    ["spool.py"],
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="also run the per-component benches")
    args = parser.parse_args()
    failed = []
    for bench in END_TO_END + (COMPONENTS if args.all else []):
        print(f"\n=== {' '.join(bench)} ===", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, str(BENCH / bench[0]), *bench[1:]])
        print(f"=== {bench[0]}: exit {code} after {time.monotonic() - started:.0f} s ===", flush=True)
        if code:
            failed.append(bench[0])
    if failed:
        print(f"\nbenches that did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
