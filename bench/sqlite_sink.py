"""Throughput of the embedded SQLite sink, alone and behind the whole SinkRunner.

    .venv/bin/python bench/sqlite_sink.py                     # 1,000,000 trades, synchronous=normal
    .venv/bin/python bench/sqlite_sink.py -n 300000 --synchronous full
    .venv/bin/python bench/sqlite_sink.py --dir /var/lib/ingestd   # on the disk that will hold the data

1. Sink alone: `SqliteSink.write` called directly with pre-built batches of 1000, 5000 and 20000
   trades (20 symbols, ascending ids: the shape a feed produces), each size into a fresh file; then
   the same rows again (every one a duplicate: a replay), then book tops with 10 levels a side.
2. Sink alone beside a thread that keeps the GIL busy: the daemon at full load, where the trio
   thread decodes while the sink's worker thread writes. This is the figure that matters on 2 cores.
3. Whole runner, idle producer: a trio task sends pre-built chunks of 100 trades (one feed receive)
   through a Router into a SinkRunner (batch_size 5000, linger 50 ms) until the runner has drained
   and closed the sink: the pipeline's own overhead.
4. Whole runner, busy producer: the same, but the trio task first decodes every chunk from
   Binance-style JSON frames into Trade records, as a feed does, so both threads want the GIL.

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

from ingestd.model import BookTop, Trade, spread_bps  # noqa: E402
from ingestd.pipeline import Router, SinkRunner  # noqa: E402
from ingestd.sinks.sqlite import SqliteSink  # noqa: E402
from ingestd.stats import StatsRegistry  # noqa: E402
from _producer import CHUNK, GilHog, decode_frames, wire_frames  # noqa: E402

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
        best_bid, best_ask = bids[0], asks[0]
        out.append(
            BookTop(
                "binance", SYMBOLS[i % 20], i // 20, T0 + i, T0 + i + 900, best_bid[0], best_bid[1],
                best_ask[0], best_ask[1], spread_bps(best_bid[0], best_ask[0]), bids, asks,
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


def bench_sink_alone(directory: Path, trades: list[Trade], synchronous: str) -> None:
    n = len(trades)
    books = make_books(max(1, n // 10))
    print(f"1. sink alone: {n:,} trades, synchronous={synchronous}")
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
            f"   batch {batch_size:>6,}: {n / new:>9,.0f} trade rows/s new, {n / again:>9,.0f}/s all duplicates,"
            f" {len(books) / book_s:>8,.0f} book rows/s; {size_mb:,.0f} MB on disk"
        )


def bench_sink_beside_busy_thread(directory: Path, trades: list[Trade], synchronous: str) -> None:
    sink = SqliteSink("bench", directory / "contended.sqlite", synchronous=synchronous)
    sink.open()
    try:
        with GilHog():
            seconds = timed_writes(sink, trades, 5000)
    finally:
        sink.close()
    print(f"2. sink alone beside a GIL-busy thread, batch 5,000: {len(trades) / seconds:,.0f} trade rows/s")


async def run_pipeline(sink: SqliteSink, stats: StatsRegistry, chunks: list, decode) -> float:
    runner = SinkRunner(sink, stats, batch_size=5000, linger_s=0.05, capacity=256)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)  # the sink is open before the clock starts
        start = time.perf_counter()
        async with Router([runner]) as router:
            for chunk in chunks:
                await router.send(decode(chunk))
    return time.perf_counter() - start  # run() has returned: everything is committed


def bench_runner(directory: Path, trades: list[Trade], synchronous: str, *, busy_producer: bool) -> None:
    n = len(trades)
    if busy_producer:
        chunks, decode, label = wire_frames(trades), decode_frames, "4. whole runner, producer decoding JSON"
    else:
        chunks, decode, label = [trades[k : k + CHUNK] for k in range(0, n, CHUNK)], list, "3. whole runner"
    stats = StatsRegistry("bench")
    path = directory / f"runner-{busy_producer}.sqlite"
    sink = SqliteSink("bench", path, synchronous=synchronous, stats=stats)
    cpu0 = time.process_time()
    seconds = trio.run(run_pipeline, sink, stats, chunks, decode)
    cpu = time.process_time() - cpu0
    stored = stats.counters["sink.bench.rows_written"]
    assert stored == n, f"stored {stored} of {n}"
    batches = stats.counters["sink.bench.batches"]
    print(
        f"{label}: {n / seconds:,.0f} trade rows/s stored ({batches} batches of {n / batches:,.0f} on average;"
        f" process CPU {cpu / seconds:.0%} of one core)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="trades per run (default 1,000,000)")
    parser.add_argument("--synchronous", default="normal", choices=("off", "normal", "full"))
    parser.add_argument("--dir", type=Path, help="where to put the database files (default: a temp dir)")
    args = parser.parse_args()
    trades = make_trades(args.n)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)
        bench_sink_alone(directory, trades, args.synchronous)
        bench_sink_beside_busy_thread(directory, trades, args.synchronous)
        bench_runner(directory, trades, args.synchronous, busy_producer=False)
        bench_runner(directory, trades, args.synchronous, busy_producer=True)


if __name__ == "__main__":
    main()
