"""Throughput and latency of the Redis Streams sink, against a real redis-server.

    .venv/bin/python bench/redis_sink.py                    # starts its own redis-server (AOF everysec)
    .venv/bin/python bench/redis_sink.py -n 200000
    .venv/bin/python bench/redis_sink.py --url redis://host:6379/15   # an existing server; FLUSHDB first!

Every figure counts records that are durable in the sense the sink promises: applied by Redis, and
so in its append-only file within a second (`appendfsync everysec`); each run checks afterwards with
XLEN/XRANGE that every record is in its stream, exactly once.

0. Baseline: redis-py 8 pipelined `XADD ... MAXLEN ~`, no de-duplication (design.md's 79k/s line).
1. Sink alone, batches of 1000 and 5000 trades over 20 pairs, ascending ids with one Checkpoint per
   pair per batch (the shape a feed produces): the fast path. Then the same batches again (every
   record a duplicate: a spool replay), then book tops with 10 levels a side.
2. The late path: the second half of every pair's trades first (stored ahead of a hole, remembered
   in the sorted set), then the first half (a backfill that closes the hole and empties the set).
3. Sink alone beside a thread that keeps the GIL busy (the daemon at full load on 2 cores).
4. Whole SinkRunner with a producer that decodes Binance JSON frames, as a feed does, and sends each
   pair's checkpoint every 2,500 trades (a feed's 250 ms tick at 10k trades/s).
5. Latency at a fixed offered rate (10k trades/s by default, checkpoints every 250 ms): exchange
   time -> stored, through the SinkRunner, for each --linger-ms (default 5, the daemon's default
   linger_ms, 50); and the sink's own share, the time sink.write takes per batch.
6. Memory: bytes per id remembered above a floor (the cost of an open hole).

Figures are printed, never judged: compare them on the same machine. Records/s swing with whatever
else the machine runs; the CPU per record (redis-server's and the client thread's) barely does.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import ExitStack
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import redis  # noqa: E402
import trio  # noqa: E402

from ingestd.config import DaemonConfig, RedisSinkConfig  # noqa: E402
from ingestd.model import BookTop, Checkpoint, Record, Trade, spread_bps  # noqa: E402
from ingestd.pipeline import Router, SinkRunner  # noqa: E402
from ingestd.sinks.redis_streams import RedisStreamsSink, above_key  # noqa: E402
from ingestd.stats import StatsRegistry, now_us  # noqa: E402
from _producer import GilHog, decode_frames, wire_frames  # noqa: E402

SYMBOLS = [f"SYM{i:02d}USDT" for i in range(20)]
T0 = 1_700_000_000_000_000


def make_trades(n: int, first_id: int = 1) -> list[Trade]:
    return [
        Trade("binance", SYMBOLS[i % 20], first_id + i // 20, 65_000.0 + i * 0.01, 0.001, "buy", T0 + i * 50, T0 + i * 50 + 900)
        for i in range(n)
    ]


def make_books(n: int, levels: int = 10) -> list[BookTop]:
    out = []
    for i in range(n):
        bids = [(100.0 - k * 0.01, 1.0 + k) for k in range(levels)]
        asks = [(100.01 + k * 0.01, 1.0 + k) for k in range(levels)]
        out.append(BookTop("binance", SYMBOLS[i % 20], i // 20 + 1, T0 + i, T0 + i + 900, bids[0][0], bids[0][1],
                           asks[0][0], asks[0][1], spread_bps(bids[0][0], asks[0][0]), bids, asks))
    return out


def batches_of(records: list, size: int, checkpoints: bool = True) -> list[list[Record]]:
    """Slices of `size` records, each followed by one Checkpoint per pair (its highest id so far)."""
    out = []
    for k in range(0, len(records), size):
        batch: list[Record] = list(records[k : k + size])
        if checkpoints:
            top: dict[str, int] = {}
            for t in batch:
                top[t.symbol] = t.trade_id
            batch += [Checkpoint("binance", s, i) for s, i in top.items()]
        out.append(batch)
    return out


def timed(sink: RedisStreamsSink, batches: list[list[Record]]) -> float:
    start = time.perf_counter()
    for batch in batches:
        sink.write(batch)
    return time.perf_counter() - start


class Cpu:
    """CPU seconds spent by redis-server (INFO cpu) and by this thread, over a block: unlike
    records/s, these barely move when other processes load the machine."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def _server(self) -> float:
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def __enter__(self) -> "Cpu":
        self._s0, self._c0 = self._server(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server, self.thread = self._server() - self._s0, time.thread_time() - self._c0

    def per(self, n: int) -> str:
        return f"CPU per record: redis {self.server / n * 1e6:.1f} µs, client {self.thread / n * 1e6:.1f} µs"


def new_sink(url: str, stats: StatsRegistry | None = None, **cfg: Any) -> RedisStreamsSink:
    cfg.setdefault("stream_maxlen", 1 << 40)  # keep everything, so XLEN can prove it
    sink = RedisStreamsSink("bench", RedisSinkConfig(name="bench", type="redis", url=url, **cfg), stats=stats)
    sink.open()
    return sink


def check_stored(client: redis.Redis, n_per_symbol: int, prefix: str = "trades:") -> None:
    """Every pair's stream holds ids 1..n_per_symbol exactly once."""
    for s in SYMBOLS:
        length = client.xlen(prefix + s)
        assert length == n_per_symbol, f"{prefix}{s}: {length} entries, expected {n_per_symbol}"
    ids = sorted(int(f[b"trade_id" if prefix == "trades:" else b"update_id"]) for _, f in client.xrange(prefix + SYMBOLS[0]))
    assert ids == list(range(1, n_per_symbol + 1)), "ids differ"


def bench_baseline(client: redis.Redis, trades: list[Trade]) -> None:
    client.flushdb()
    start = time.perf_counter()
    with Cpu(client) as cpu:
        for k in range(0, len(trades), 5000):
            pipe = client.pipeline(transaction=False)
            for t in trades[k : k + 5000]:
                pipe.xadd(f"trades:{t.symbol}", {"exchange": t.venue, "pair": t.symbol, "price": str(t.price),
                                                 "qty": str(t.qty), "ts": str(t.ts_us), "side": t.side,
                                                 "trade_id": str(t.trade_id)},
                          maxlen=1 << 40, approximate=True)
            pipe.execute()
    seconds = time.perf_counter() - start
    check_stored(client, len(trades) // 20)
    print(f"0. baseline, redis-py pipelined XADD MAXLEN ~, no de-duplication, batch 5,000: {len(trades) / seconds:>9,.0f}/s"
          f" ({cpu.per(len(trades))})")


def bench_alone(url: str, client: redis.Redis, trades: list[Trade]) -> None:
    n = len(trades)
    books = make_books(max(20, n // 10))
    print(f"1. sink alone: {n:,} trades over {len(SYMBOLS)} pairs, one checkpoint per pair per batch")
    for size in (1000, 5000):
        client.flushdb()
        stats = StatsRegistry("bench")
        sink = new_sink(url, stats)
        try:
            batches = batches_of(trades, size)
            with Cpu(client) as cpu_new:
                new = timed(sink, batches)
            with Cpu(client) as cpu_again:
                again = timed(sink, batches)
            book_s = timed(sink, batches_of(books, size, checkpoints=False))
        finally:
            sink.close()
        check_stored(client, n // 20)
        check_stored(client, len(books) // 20, "books:")
        c = stats.counters
        assert c["sink.bench.rows_written"] == n + len(books) and c["sink.bench.duplicates_skipped"] == n
        print(f"   batch {size:>5,}: {n / new:>9,.0f} trades/s stored, {n / again:>9,.0f}/s replayed (all duplicates),"
              f" {len(books) / book_s:>8,.0f} book tops/s")
        print(f"      stored: {cpu_new.per(n)}; replayed: {cpu_again.per(n)}")


def bench_late(url: str, client: redis.Redis, trades: list[Trade]) -> None:
    client.flushdb()
    n = len(trades)
    half = n // 2
    sink = new_sink(url)
    try:
        sink.write([Checkpoint("binance", s, 0) for s in SYMBOLS])  # floors known: 0
        with Cpu(client) as cpu_ahead:
            ahead = timed(sink, batches_of(trades[half:], 5000, checkpoints=False))
        remembered = sum(client.zcard(above_key(f"trades:{s}", "binance", s)) for s in SYMBOLS)
        with Cpu(client) as cpu_back:
            backfill = timed(sink, batches_of(trades[:half], 5000))
    finally:
        sink.close()
    check_stored(client, n // 20)
    left = sum(client.exists(above_key(f"trades:{s}", "binance", s)) for s in SYMBOLS)
    print(f"2. late path, batch 5,000: {half / ahead:>9,.0f} trades/s stored ahead of a hole ({remembered:,} ids"
          f" remembered), {half / backfill:>9,.0f}/s backfilling it ({left} sets left afterwards)")
    print(f"      ahead: {cpu_ahead.per(half)}; backfill: {cpu_back.per(half)}")


def bench_contended(url: str, client: redis.Redis, trades: list[Trade]) -> None:
    client.flushdb()
    sink = new_sink(url)
    try:
        with GilHog():
            seconds = timed(sink, batches_of(trades, 5000))
    finally:
        sink.close()
    check_stored(client, len(trades) // 20)
    print(f"3. sink alone beside a GIL-busy thread, batch 5,000: {len(trades) / seconds:>9,.0f} trades/s")


# A feed sends each pair's checkpoint every 250 ms (binance TICK_S): 2,500 trades at 10k/s.
CHECKPOINT_EVERY = 25  # chunks of CHUNK trades


def checkpoints_after(records: list[Record]) -> list[Record]:
    top: dict[str, int] = {}
    for t in records:
        top[t.symbol] = t.trade_id
    return [Checkpoint("binance", s, i) for s, i in top.items()]


def bench_runner(url: str, client: redis.Redis, trades: list[Trade]) -> None:
    client.flushdb()
    stats = StatsRegistry("bench")
    sink = RedisStreamsSink("bench", RedisSinkConfig(name="bench", type="redis", url=url, stream_maxlen=1 << 40),
                            stats=stats)
    chunks = wire_frames(trades)

    async def run() -> float:
        runner = SinkRunner(sink, stats, batch_size=5000, linger_s=0.05, capacity=256)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            start = time.perf_counter()
            async with Router([runner]) as router:
                for k, chunk in enumerate(chunks):
                    records = decode_frames(chunk)
                    if k % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1:
                        records += checkpoints_after(records)
                    await router.send(records)
        return time.perf_counter() - start

    cpu0 = time.process_time()
    seconds = trio.run(run)
    cpu = time.process_time() - cpu0
    check_stored(client, len(trades) // 20)
    batches = stats.counters["sink.bench.batches"]
    print(f"4. whole runner, producer decoding JSON: {len(trades) / seconds:>9,.0f} trades/s stored"
          f" ({batches} batches of {len(trades) / batches:,.0f} on average; process CPU {cpu / seconds:.0%} of one core)")


def bench_latency(url: str, client: redis.Redis, rate: float, seconds: float, lingers_ms: list[float]) -> None:
    print(f"5. latency at {rate:,.0f} trades/s offered for {seconds:g} s (20 pairs, a chunk every ms), exchange time -> stored:")
    for linger in (ms / 1000 for ms in lingers_ms):
        client.flushdb()
        stats = StatsRegistry("bench")
        sink = RedisStreamsSink("bench", RedisSinkConfig(name="bench", type="redis", url=url), stats=stats)
        write_us: list[int] = []
        write = sink.write

        def timed_write(batch: list[Record]) -> None:  # the sink's own share of the latency
            started = time.perf_counter_ns()
            write(batch)
            write_us.append((time.perf_counter_ns() - started) // 1000)

        sink.write = timed_write  # type: ignore[method-assign]
        per_ms = rate / 1000.0

        async def run() -> int:
            runner = SinkRunner(sink, stats, batch_size=5000, linger_s=linger, capacity=256)
            sent = 0
            async with trio.open_nursery() as nursery:
                await nursery.start(runner.run)
                async with Router([runner]) as router:
                    start = trio.current_time()
                    next_checkpoint = start + 0.25  # a feed's tick
                    due = 0.0
                    while trio.current_time() - start < seconds:
                        due += per_ms
                        n = int(due) - sent
                        now = now_us()
                        chunk: list[Record] = [
                            Trade("binance", SYMBOLS[(sent + k) % 20], (sent + k) // 20 + 1, 65_000.0, 0.001, "buy",
                                  now, now) for k in range(n)
                        ]
                        sent += n
                        if trio.current_time() >= next_checkpoint:
                            next_checkpoint += 0.25
                            chunk += [Checkpoint("binance", SYMBOLS[(sent - 1 - k) % 20], (sent - 1 - k) // 20 + 1)
                                      for k in range(min(sent, 20))]
                        if chunk:
                            await router.send(chunk)
                        await trio.sleep_until(start + (sent / rate))
            return sent

        sent = trio.run(run)
        snap = stats.stored_latency
        p50, p99, top = (_percentile(snap, q) / 1000 for q in (0.5, 0.99, 1.0))
        stored = sum(client.xlen(f"trades:{s}") for s in SYMBOLS)
        assert stats.counters["sink.bench.rows_written"] == sent
        write_us.sort()
        w50, w99, wmax = (write_us[min(len(write_us) - 1, int(q * len(write_us)))] / 1000 for q in (0.5, 0.99, 1.0))
        print(f"   linger {linger * 1000:>4.0f} ms: p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  max {top:6.1f} ms"
              f"  ({sent:,} trades, {len(write_us):,} batches, {stored:,} in the trimmed streams);"
              f" sink.write p50 {w50:.1f} ms p99 {w99:.1f} ms max {wmax:.1f} ms", flush=True)


def _percentile(latency: Any, q: float) -> float:
    return float(latency.all_time.percentile(q) or 0)


def bench_memory(url: str, client: redis.Redis) -> None:
    client.flushdb()
    sink = new_sink(url)
    try:
        # 100,000 ids stored ahead of a hole at id 1 (the default window), in batches of 5000.
        sink.write([Checkpoint("binance", SYMBOLS[0], 0)])
        for start in range(2, 100_002, 5000):
            sink.write([Trade("binance", SYMBOLS[0], i, 1.0, 1.0, "buy", T0, T0) for i in range(start, start + 5000)])
    finally:
        sink.close()
    key = above_key(f"trades:{SYMBOLS[0]}", "binance", SYMBOLS[0])
    ids = client.zcard(key)
    stream_bytes = client.memory_usage(f"trades:{SYMBOLS[0]}", samples=0) or 0
    set_bytes = client.memory_usage(key, samples=0) or 0
    print(f"6. memory of an open hole: {set_bytes / ids:,.0f} bytes per remembered id ({ids:,} ids);"
          f" the stream itself: {stream_bytes / client.xlen(f'trades:{SYMBOLS[0]}'):,.0f} bytes per entry")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=400_000, help="trades per run, a multiple of 20 (default 400,000)")
    parser.add_argument("--url", help="use this server instead of starting one; its database is FLUSHED")
    parser.add_argument("--rate", type=float, default=10_000, help="offered trades/s for the latency run")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each latency run")
    parser.add_argument("--linger-ms", default=f"5,{DaemonConfig().linger_ms},50",
                        help="the latency run's linger values, comma-separated (default 5,<daemon default>,50)")
    parser.add_argument("--only", default="0,1,2,3,4,5,6", help="which parts to run, e.g. 5")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    lingers = sorted({float(v) for v in args.linger_ms.split(",")})
    n = args.n - args.n % 40
    trades = make_trades(n)
    with ExitStack() as stack:
        url = args.url
        if url is None:
            from tests.redis_server import RedisServer

            server = stack.enter_context(RedisServer())
            url = server.url
            print(f"redis-server {server.port}: appendonly yes, appendfsync everysec, no RDB snapshots")
        client = stack.enter_context(redis.Redis.from_url(url))
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
        for part, run in (
            ("0", lambda: bench_baseline(client, trades)),
            ("1", lambda: bench_alone(url, client, trades)),
            ("2", lambda: bench_late(url, client, trades)),
            ("3", lambda: bench_contended(url, client, trades)),
            ("4", lambda: bench_runner(url, client, trades)),
            ("5", lambda: bench_latency(url, client, args.rate, args.seconds, lingers)),
            ("6", lambda: bench_memory(url, client)),
        ):
            if part in parts:
                run()
        client.flushdb()
        print(f"load average afterwards {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
