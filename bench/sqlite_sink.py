"""Throughput of the embedded SQLite sink, alone and behind the whole SinkRunner.

    .venv/bin/python bench/sqlite_sink.py                     # 1,000,000 trades, synchronous=normal
    .venv/bin/python bench/sqlite_sink.py -n 300000 --synchronous full
    .venv/bin/python bench/sqlite_sink.py --dir /var/lib/ingestd   # on the disk that will hold the data

Sink alone: `SqliteSink.write` called directly with pre-built batches of 1000, 5000 and 20000 trades
(20 symbols, ascending ids: the shape a feed produces), each into a fresh file; then the same rows
again (every one a duplicate: a replay) and book tops. Whole runner: a trio task sends pre-built
chunks of 100 trades (one feed receive) through a Router into a SinkRunner (batch_size 5000, linger
50 ms) as fast as the pipeline takes them, until the runner has drained and closed the sink.

Records are built before the clock starts: building them is the feed's cost, not the sink's.
Figures are printed, never judged: compare them on the same machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio  # noqa: E402

from ingestd.model import BookTop, Record, Trade, spread_bps  # noqa: E402
from ingestd.pipeline import Router, SinkRunner  # noqa: E402
from ingestd.sinks.sqlite import SqliteSink  # noqa: E402
from ingestd.stats import StatsRegistry  # noqa: E402

SYMBOLS = [f"SYM{i:02d}USDT" for i in range(20)]
T0 = 1_700_000_000_000_000


def make_trades(n: int) -> list[Trade]:
    return [
        Trade("binance", SYMBOLS[i % 20], i // 20, 65_000.0 + i * 0.01, 0.001, "buy", T0 + i, T0 + i + 900)
        for i in range(n)
    ]


def make_books(n: int, levels: int = 10) -> list[BookTop]:
    out = []
    for i in range(n):
        bids = [(100.0 - k * 0.01, 1.0 + k) for k in range(levels)]
        asks = [(100.01 + k * 0.01, 1.0 + k) for k in range(levels)]
        out.append(
            BookTop(
                "binance", SYMBOLS[i % 20], i // 20, T0 + i, T0 + i + 900, bids[0][0], bids[0][1],
                asks[0][0], asks[0][1], spread_bps(bids[0][0], asks[0][0]), bids, asks,
            )
        )
    return out


def timed_writes(sink: SqliteSink, records: list, batch_size: int) -> float:
    """Seconds to write `records` in batches of `batch_size` (slices taken before timing)."""
    batches = [records[k : k + batch_size] for k in range(0, len(records), batch_size)]
    start = time.perf_counter()
    for batch in batches:
        sink.write(batch)
    return time.perf_counter() - start


def bench_sink_alone(directory: Path, n: int, synchronous: str) -> None:
    trades = make_trades(n)
    books = make_books(max(1, n // 10))
    print(f"sink alone: {n:,} trades, synchronous={synchronous}")
    for batch_size in (1000, 5000, 20000):
        path = directory / f"alone-{batch_size}.sqlite"
        stats = StatsRegistry("bench")
        sink = SqliteSink("bench", path, synchronous=synchronous, stats=stats)
        sink.open()
        try:
            new = timed_writes(sink, trades, batch_size)
            again = timed_writes(sink, trades, batch_size)
            book_s = timed_writes(sink, books, batch_size)
        finally:
            sink.close()
        assert stats.counters["sink.bench.rows_written"] == n + len(books)
        assert stats.counters["sink.bench.duplicates_skipped"] == n
        size_mb = sum(p.stat().st_size for p in directory.glob(f"{path.name}*")) / 1e6
        print(
            f"  batch {batch_size:>6,}: {n / new:>9,.0f} trade rows/s new, {n / again:>9,.0f}/s all duplicates,"
            f" {len(books) / book_s:>8,.0f} book rows/s ({len(books[0].bids)} levels); {size_mb:,.0f} MB on disk"
        )


async def run_pipeline(sink: SqliteSink, stats: StatsRegistry, chunks: list[list[Record]]) -> float:
    runner = SinkRunner(sink, stats, batch_size=5000, linger_s=0.05, capacity=256)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)  # the sink is open before the clock starts
        start = time.perf_counter()
        async with Router([runner]) as router:
            for chunk in chunks:
                await router.send(chunk)
    return time.perf_counter() - start  # run() has returned: everything is committed


def bench_runner(directory: Path, n: int, synchronous: str, chunk_size: int = 100) -> None:
    trades = make_trades(n)
    chunks: list[list[Record]] = [trades[k : k + chunk_size] for k in range(0, n, chunk_size)]
    stats = StatsRegistry("bench")
    sink = SqliteSink("bench", directory / "runner.sqlite", synchronous=synchronous, stats=stats)
    cpu0 = time.process_time()
    seconds = trio.run(run_pipeline, sink, stats, chunks)
    cpu = time.process_time() - cpu0
    stored = stats.counters["sink.bench.rows_written"]
    assert stored == n, f"stored {stored} of {n}"
    batches = stats.counters["sink.bench.batches"]
    print(
        f"whole runner: {n:,} trades in chunks of {chunk_size} -> {n / seconds:,.0f} trade rows/s stored"
        f" ({batches} batches, {n / batches:,.0f} records each; process CPU {cpu / seconds:.0%} of one core)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="trades per run (default 1,000,000)")
    parser.add_argument("--synchronous", default="normal", choices=("off", "normal", "full"))
    parser.add_argument("--dir", type=Path, help="where to put the database files (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        bench_sink_alone(Path(tmp), args.n, args.synchronous)
        bench_runner(Path(tmp), args.n, args.synchronous)


if __name__ == "__main__":
    main()
