"""Throughput of the disk spool, alone and behind a SinkRunner whose sink is down.

    .venv/bin/python bench/spool.py                       # 1,000,000 trades, in a temporary dir
    .venv/bin/python bench/spool.py -n 300000 --dir /var/lib/ingestd   # on the disk that will hold it

1. Spool alone: `Spool.append` of pre-built batches (1000 and 5000 trades; 5000 is the daemon's
   batch_size), with fdatasync per append (the default) and without; then the replay, `peek` +
   `commit` until empty (decode included, no sink). Then book tops with 10 levels a side.
2. Whole runner, sink down: a trio task sends chunks of 100 trades through a Router into a
   SinkRunner whose sink always fails (spool_after_s = 0), until everything is on disk: the
   diverted path's own cost (batching in pending, the spooler, the thread hops, fsync).
3. Whole runner, sink back: the same runner's spool replayed into a sink that takes everything
   without doing anything: replay's own cost.

Figures are printed, never judged: compare them on the same machine.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio  # noqa: E402

from ingestd.model import BookTop, Record, Trade  # noqa: E402
from ingestd.pipeline import Router, SinkRunner  # noqa: E402
from ingestd.sinks.base import Sink, SinkError  # noqa: E402
from ingestd.sinks.spool import Spool  # noqa: E402
from ingestd.stats import StatsRegistry  # noqa: E402

SYMBOLS = [f"SYM{i}USDT" for i in range(20)]


def make_trades(n: int) -> list[Record]:
    base = 1_700_000_000_000_000
    return [Trade("binance", SYMBOLS[i % 20], 1_000_000 + i, 60000.5 + i % 100, 0.013, "buy", base + i, base + i + 900)
            for i in range(n)]


def make_books(n: int) -> list[Record]:
    levels = [(60000.0 - i * 0.5, 1.25 + i) for i in range(10)]
    return [BookTop("binance", SYMBOLS[i % 20], 5_000_000 + i, 1, 2, 60000.0, 1.25, 60000.5, 2.5, 0.08, levels, levels)
            for i in range(n)]


def row(label: str, records: int, nbytes: int, seconds: float, ops: int) -> None:
    print(f"  {label:<34} {records / seconds:>12,.0f} rec/s {nbytes / seconds / 2**20:>9,.1f} MB/s"
          f" {ops / seconds:>9,.0f} entries/s   ({nbytes / records:.0f} B/rec on disk)")


def bench_alone(base: Path, records: list[Record], batch: int, fsync: bool, label: str) -> None:
    d = base / f"alone-{label}-{batch}-{fsync}"
    spool = Spool(d, name="bench", max_bytes=1 << 40, fsync=fsync)
    spool.open()
    batches = [records[i : i + batch] for i in range(0, len(records), batch)]
    t0 = time.perf_counter()
    for b in batches:
        spool.append(b)
    appended = time.perf_counter() - t0
    nbytes = spool.bytes
    row(f"append {label} x{batch} fsync={'on' if fsync else 'off'}", len(records), nbytes, appended, len(batches))
    t0 = time.perf_counter()
    n = 0
    while (got := spool.peek()) is not None:
        n += len(got)
        spool.commit()
    replayed = time.perf_counter() - t0
    assert n == len(records)
    row(f"replay {label} x{batch}", n, nbytes, replayed, len(batches))
    spool.close()
    shutil.rmtree(d)


class DownThenUp(Sink):
    name = "bench"

    def __init__(self) -> None:
        self.up = False
        self.stored = 0

    def open(self) -> None:
        pass

    def write(self, batch: Sequence[Record]) -> None:
        if not self.up:
            raise SinkError("down")
        self.stored += len(batch)

    def close(self) -> None:
        pass


async def bench_runner(base: Path, records: list[Record]) -> None:
    stats = StatsRegistry("bench")
    sink = DownThenUp()
    runner = SinkRunner(sink, stats, batch_size=5000, linger_s=0.05, capacity=256, spool_dir=base / "runner",
                        spool_after_s=0.0, retry_base_s=0.2, retry_cap_s=0.2)
    chunks = [records[i : i + 100] for i in range(0, len(records), 100)]
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)
        router = Router([runner])
        t0 = time.perf_counter()
        for chunk in chunks:
            await router.send(chunk)
        while stats.counters["spool.bench.spooled_records"] < len(records):
            await trio.sleep(0.001)
        spooled = time.perf_counter() - t0
        assert runner.spool is not None
        nbytes = runner.spool.bytes
        row("runner, sink down: to the spool", len(records), nbytes, spooled, stats.counters["spool.bench.spooled_batches"])
        t0 = time.perf_counter()
        sink.up = True
        while runner.state != "live":
            await trio.sleep(0.001)
        replayed = time.perf_counter() - t0  # includes up to one retry delay (0.2 s) before the first probe
        row("runner, sink back: replay", sink.stored, nbytes, replayed, stats.counters["spool.bench.replayed_batches"])
        await router.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1_000_000, help="trades per run")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary dir)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="spool-bench-", dir=args.dir))
    try:
        trades = make_trades(args.n)
        print(f"spool alone, {args.n:,} trades, in {base}")
        for batch in (1000, 5000):
            for fsync in (True, False):
                bench_alone(base, trades, batch, fsync, "trades")
        books = make_books(max(1, args.n // 10))
        gc.freeze()  # as the daemon does after start-up: the test data is not the collector's business
        print(f"spool alone, {len(books):,} book tops (10 levels a side)")
        bench_alone(base, books, 1000, True, "books")
        print("SinkRunner (batch_size 5000, chunks of 100 trades, fsync on)")
        trio.run(bench_runner, base, trades)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
