"""Throughput of the PostgreSQL sink against a throwaway local server, alone and behind the SinkRunner.

    .venv/bin/python bench/postgres_sink.py               # 400,000 trades per run
    .venv/bin/python bench/postgres_sink.py -n 1000000
    .venv/bin/python bench/postgres_sink.py --fast-server # fsync=off: the sink's own ceiling

The server is tests/pg_server.py's: a fresh cluster in a temp dir on a loopback port, by default with
PostgreSQL's durable defaults (fsync=on, synchronous_commit=on: every batch's COMMIT waits for the WAL
flush), so the figures are durable rates. Each run gets a fresh database, migrated by `open()`.

1. Sink alone: `PostgresSink.write` called directly with pre-built batches of 1000, 5000 and 20000
   trades (20 symbols, ascending ids: the shape a feed produces), then the same rows again (every
   one a duplicate: a replay), then book tops with 10 levels a side; with the optimistic plain-INSERT
   fast path (the default) and with `ON CONFLICT DO NOTHING` only.
2. Sink alone beside a thread that keeps the GIL busy: the daemon at full load, where the trio
   thread decodes while the sink's worker thread writes.
3. Whole runner, busy producer: a trio task decodes Binance-style JSON trade frames into Trade
   records, 100 per chunk, and sends them through a Router into a SinkRunner (batch_size 5000,
   linger 50 ms) until the runner has drained and closed the sink: feed-side decode + pipeline +
   sink, the daemon's path minus the network.

Figures are printed, never judged: compare them on the same machine, and mind the load averages
printed around them (other work on the box moves them a lot). The server runs on the same cores as
the client, so the sink's figures include the server's work.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio  # noqa: E402

from ingestd.config import PostgresSinkConfig  # noqa: E402
from ingestd.model import BookTop, Trade, spread_bps  # noqa: E402
from ingestd.pipeline import Router, SinkRunner  # noqa: E402
from ingestd.sinks.postgres import PostgresSink  # noqa: E402
from ingestd.stats import StatsRegistry  # noqa: E402
from _producer import GilHog, decode_frames, wire_frames  # noqa: E402
from tests.pg_server import PgServer  # noqa: E402

SYMBOLS = [f"SYM{i:02d}USDT" for i in range(20)]
T0 = (time.time_ns() // 1000) - 3_600_000_000  # an hour ago: today's (or yesterday's) partition


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


def timed_writes(sink: PostgresSink, records: list, batch_size: int) -> float:
    """Seconds to write `records` in batches of `batch_size` (slices taken before timing)."""
    batches = [records[k : k + batch_size] for k in range(0, len(records), batch_size)]
    start = time.perf_counter()
    for batch in batches:
        sink.write(batch)
    return time.perf_counter() - start


class Bench:
    def __init__(self, server: PgServer) -> None:
        self.server = server

    def sink(self, stats: StatsRegistry | None = None, **kwargs) -> PostgresSink:
        db = self.server.create_database("bench")
        cfg = PostgresSinkConfig(
            name="bench", type="postgres", host=db.host, port=db.port, dbname=db.dbname, user=db.user,
            retention_days=0,
        )
        sink = PostgresSink("bench", cfg, stats=stats, **kwargs)
        sink.open()
        return sink

    def sink_alone(self, trades: list[Trade]) -> None:
        n = len(trades)
        books = make_books(max(1, n // 10))
        print(f"1. sink alone: {n:,} trades per run")
        for optimistic in (True, False):
            label = "plain INSERT first" if optimistic else "ON CONFLICT only  "
            for batch_size in (1000, 5000, 20000):
                stats = StatsRegistry("bench")
                sink = self.sink(stats, optimistic=optimistic)
                try:
                    new = timed_writes(sink, trades, batch_size)
                    again = timed_writes(sink, trades, batch_size)
                    book_s = timed_writes(sink, books, batch_size)
                finally:
                    sink.close()
                assert stats.counters["sink.bench.rows_written"] == n + len(books)
                assert stats.counters["sink.bench.duplicates_skipped"] == n
                print(
                    f"   {label} batch {batch_size:>6,}: {n / new:>9,.0f} trade rows/s new,"
                    f" {n / again:>9,.0f}/s all duplicates, {len(books) / book_s:>8,.0f} book rows/s"
                )

    def beside_busy_thread(self, trades: list[Trade]) -> None:
        sink = self.sink()
        try:
            with GilHog():
                seconds = timed_writes(sink, trades, 5000)
        finally:
            sink.close()
        print(f"2. sink alone beside a GIL-busy thread, batch 5,000: {len(trades) / seconds:,.0f} trade rows/s")

    def whole_runner(self, trades: list[Trade]) -> None:
        n = len(trades)
        stats = StatsRegistry("bench")
        sink = self.sink(stats)
        sink.close()  # the runner opens it (open() is where the migrations ran; now a no-op)
        chunks = wire_frames(trades)
        cpu0 = time.process_time()
        seconds = trio.run(run_pipeline, sink, stats, chunks)
        cpu = time.process_time() - cpu0
        stored = stats.counters["sink.bench.rows_written"]
        assert stored == n, f"stored {stored} of {n}"
        batches = stats.counters["sink.bench.batches"]
        print(
            f"3. whole runner, producer decoding JSON: {n / seconds:,.0f} trade rows/s stored durably"
            f" ({batches} batches of {n / batches:,.0f} on average; this process's CPU {cpu / seconds:.0%} of one core)"
        )


async def run_pipeline(sink: PostgresSink, stats: StatsRegistry, chunks: list) -> float:
    runner = SinkRunner(sink, stats, batch_size=5000, linger_s=0.05, capacity=256)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)  # the sink is open before the clock starts
        start = time.perf_counter()
        async with Router([runner]) as router:
            for chunk in chunks:
                await router.send(decode_frames(chunk))
    return time.perf_counter() - start  # run() has returned: everything is committed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=400_000, help="trades per run (default 400,000)")
    parser.add_argument("--fast-server", action="store_true", help="fsync=off on the server (not durable)")
    args = parser.parse_args()
    trades = make_trades(args.n)
    server = PgServer(durable=not args.fast_server)
    try:
        print(f"server: {server.bindir.parent.name} at {server.host}:{server.port},"
              f" {'fsync=off (not durable)' if args.fast_server else 'durable defaults (fsync=on, synchronous_commit=on)'}")
        print("load average before: {:.2f} {:.2f} {:.2f} (on {} cores)".format(*os.getloadavg(), os.cpu_count()))
        bench = Bench(server)
        bench.sink_alone(trades)
        bench.beside_busy_thread(trades)
        bench.whole_runner(trades)
        print("load average after:  {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
