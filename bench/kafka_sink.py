"""Throughput and latency of the Kafka sink, alone and behind the whole SinkRunner, against Tansu.

    .venv/bin/python bench/kafka_sink.py                       # starts its own Tansu on loopback
    .venv/bin/python bench/kafka_sink.py -n 100000 --seconds 10 --linger-ms 5,10
    .venv/bin/python bench/kafka_sink.py --only 5              # just the latency runs
    .venv/bin/python bench/kafka_sink.py --bootstrap host:9092 # a real cluster (uses fresh topics)

Every figure counts acknowledged records only (acks=all, idempotent producer, gzip unless
--compression says otherwise): `write()` returns after the producer's flush reported every record
of the batch delivered.

1. Sink alone: `KafkaSink.write` with pre-built batches of 1000 and 5000 trades (20 symbols,
   ascending ids), each size to fresh topics: records/s, CPU per record (all of this process's
   threads, librdkafka's included; the broker is another process) and the p50/p99 of one batch's
   write; then the same trades again (all duplicates, dropped by the window), then book tops with 10
   levels a side.
2. Sink alone beside a thread that keeps the GIL busy (the daemon's trio thread decoding at full load).
3. Open: how long the read-back of the de-duplication window takes with the topics just written.
4. Whole runner, flat out: a trio task decodes Binance-style JSON frames into Trades (as a feed does)
   and sends chunks of 100 through a Router into a SinkRunner (the daemon's [daemon] batch_size and
   linger_ms defaults) until the runner has drained: the sink behind the pipeline on 2 cores.
5. Whole runner at a fixed offered rate (10,000 msg/s by default), once per --linger-ms value (default:
   5, the daemon's default, 50): exchange time (stamped at decode) -> acknowledged, p50/p99 from the
   pipeline's own histogram (what /metrics reports), and the p50/p99 of each batch's write. After
   `gc.freeze()`, as the daemon does once started (--no-freeze also runs without it).

Figures are printed, never judged: compare them on the same machine. On a shared machine, wall-clock
rates swing with other load (the load average is printed first); the CPU time per record moves much
less.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from typing import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import trio  # noqa: E402

from ingestd.config import DaemonConfig, KafkaSinkConfig  # noqa: E402
from ingestd.model import BookTop, Trade, spread_bps  # noqa: E402
from _producer import CHUNK, GilHog, decode_frames, wire_frames  # noqa: E402
from ingestd.pipeline import Router, SinkRunner  # noqa: E402
from ingestd.sinks.base import Sink  # noqa: E402
from ingestd.sinks.kafka import KafkaSink  # noqa: E402
from ingestd.stats import StatsRegistry  # noqa: E402

SYMBOLS = [f"SYM{i:02d}USDT" for i in range(20)]
T0 = 1_700_000_000_000_000
_run = time.strftime("%H%M%S")
_topic_seq = iter(range(1, 1_000_000))


def make_trades(n: int, first_id: int = 0) -> list[Trade]:
    return [
        Trade("binance", SYMBOLS[i % 20], first_id + i // 20, 65_000.0 + i * 0.01, 0.001, "buy", T0 + i, T0 + i + 900)
        for i in range(n)
    ]


def make_books(n: int, levels: int = 10) -> list[BookTop]:
    out = []
    for i in range(n):
        bids = [(100.0 - k * 0.01, 1.0 + k) for k in range(levels)]
        asks = [(100.01 + k * 0.01, 1.0 + k) for k in range(levels)]
        out.append(
            BookTop("binance", SYMBOLS[i % 20], i // 20, T0 + i, T0 + i + 900, bids[0][0], bids[0][1],
                    asks[0][0], asks[0][1], spread_bps(bids[0][0], asks[0][0]), bids, asks)
        )
    return out


def new_sink(args, stats: StatsRegistry | None = None) -> KafkaSink:
    seq = next(_topic_seq)
    cfg = KafkaSinkConfig(
        name="bench", type="kafka", bootstrap_servers=(args.bootstrap,),
        trades_topic=f"bench-trades-{_run}-{seq}", books_topic=f"bench-books-{_run}-{seq}",
        compression=args.compression, delivery_timeout_s=60.0,
    )
    return KafkaSink("bench", cfg, stats=stats, checkpoints_topic=f"bench-checkpoints-{_run}-{seq}")


def pct(sorted_values: Sequence[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def timed_writes(sink: Sink, records: list, batch_size: int) -> tuple[float, list[float]]:
    """Seconds to write `records` in batches, and each batch's seconds (sorted)."""
    batches = [records[k : k + batch_size] for k in range(0, len(records), batch_size)]
    each = []
    start = time.perf_counter()
    for batch in batches:
        t = time.perf_counter()
        sink.write(batch)
        each.append(time.perf_counter() - t)
    return time.perf_counter() - start, sorted(each)


def bench_sink_alone(args, trades: list[Trade]) -> KafkaSink:
    n = len(trades)
    books = make_books(max(1000, n // 10))
    print(f"1. sink alone: {n:,} trades, compression={args.compression}")
    last = None
    for batch_size in (1000, 5000):
        stats = StatsRegistry("bench")
        sink = new_sink(args, stats)
        sink.open()
        try:
            cpu0 = time.process_time()
            new, lat = timed_writes(sink, trades, batch_size)
            cpu = time.process_time() - cpu0
            again, _ = timed_writes(sink, trades, batch_size)
            book_s, _ = timed_writes(sink, books, batch_size)
        finally:
            sink.close()
        c = stats.counters
        assert c["sink.bench.rows_written"] == n + len(books), c
        assert c["sink.bench.duplicates_skipped"] == n, c
        print(
            f"   batch {batch_size:>5,}: {n / new:>7,.0f} trades/s acked ({cpu / n * 1e6:.1f} µs CPU each),"
            f" batch write p50 {pct(lat, .5) * 1e3:5.1f} ms"
            f" p99 {pct(lat, .99) * 1e3:5.1f} ms; replay (all duplicates) {n / again:>9,.0f}/s;"
            f" book tops {len(books) / book_s:>6,.0f}/s"
        )
        last = sink
    return last


def bench_beside_busy_thread(args, trades: list[Trade]) -> None:
    sink = new_sink(args)
    sink.open()
    try:
        with GilHog():
            seconds, lat = timed_writes(sink, trades, 5000)
    finally:
        sink.close()
    print(f"2. sink alone beside a GIL-busy thread, batch 5,000: {len(trades) / seconds:,.0f} trades/s acked,"
          f" batch write p99 {pct(lat, .99) * 1e3:.0f} ms")


def bench_open(args, written: KafkaSink, n: int) -> None:
    sink = KafkaSink("bench", written.cfg, checkpoints_topic=written.checkpoints_topic)
    start = time.perf_counter()
    sink.open()
    seconds = time.perf_counter() - start
    remembered = len(sink._window)
    sink.close()
    print(f"3. open with {n + n // 10:,} messages on the topics: {seconds:.2f} s"
          f" (read back the tails, {remembered:,} keys remembered)")


class TimedSink(Sink):
    """Delegates to a sink, recording how long each write takes."""

    def __init__(self, inner: KafkaSink) -> None:
        self.inner = inner
        self.name = inner.name
        self.write_s: list[float] = []

    def open(self) -> None:
        self.inner.open()

    def close(self) -> None:
        self.inner.close()

    def write(self, batch) -> None:
        t = time.perf_counter()
        self.inner.write(batch)
        self.write_s.append(time.perf_counter() - t)


DAEMON = DaemonConfig()


async def run_pipeline(sink: Sink, stats: StatsRegistry, chunks: list, rate: float | None, linger_s: float) -> float:
    runner = SinkRunner(sink, stats, batch_size=DAEMON.batch_size, linger_s=linger_s, capacity=DAEMON.channel_capacity)
    async with trio.open_nursery() as nursery:
        await nursery.start(runner.run)  # the sink is open (window read back) before the clock starts
        start = trio.current_time()
        async with Router([runner]) as router:
            for k, chunk in enumerate(chunks):
                if rate is not None:
                    await trio.sleep_until(start + k * CHUNK / rate)
                await router.send(decode_frames(chunk, stamp_now=True))
    return trio.current_time() - start  # run() has returned: everything is acknowledged


def bench_runner(args, trades: list[Trade], rate: float | None, linger_ms: float, *, freeze: bool = True) -> None:
    n = len(trades)
    stats = StatsRegistry("bench")
    sink = TimedSink(new_sink(args, stats))
    chunks = wire_frames(trades)
    gc.collect()
    if freeze:
        gc.freeze()
    cpu0 = time.process_time()
    seconds = trio.run(run_pipeline, sink, stats, chunks, rate, linger_ms / 1000)
    cpu = time.process_time() - cpu0
    if freeze:
        gc.unfreeze()
    stored = stats.counters["sink.bench.rows_written"]
    assert stored == n, f"stored {stored} of {n}"
    batches = stats.counters["sink.bench.batches"]
    lat = sorted(sink.write_s)
    hist = stats.stored_latency.all_time
    label = "4. whole runner, flat out" if rate is None else f"5. whole runner, {rate:,.0f} msg/s offered"
    label += f", linger {linger_ms:g} ms" + ("" if freeze else ", no gc.freeze()")
    print(
        f"{label}: {n / seconds:,.0f} trades/s acked; {batches} batches of {n / batches:,.0f} on average;"
        f" batch write p50 {pct(lat, .5) * 1e3:.1f} ms p99 {pct(lat, .99) * 1e3:.1f} ms;"
        f" exchange-to-acked p50 {hist.percentile(.5) / 1e3:.1f} ms p99 {hist.percentile(.99) / 1e3:.1f} ms;"
        f" process CPU {cpu / seconds:.0%} of one core ({cpu / n * 1e6:.1f} µs per trade)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200_000, help="trades per run (default 200,000)")
    parser.add_argument("--rate", type=float, default=10_000, help="offered msg/s for part 5 (default 10,000)")
    parser.add_argument("--seconds", type=float, default=20, help="length of part 5 (default 20 s)")
    parser.add_argument("--linger-ms", default=f"5,{DAEMON.linger_ms},50",
                        help="part 5's linger values, comma-separated (default 5,<daemon default>,50)")
    parser.add_argument("--no-freeze", action="store_true", help="part 5 also without gc.freeze()")
    parser.add_argument("--only", default="1,2,3,4,5", help="which parts to run, e.g. 4,5")
    parser.add_argument("--compression", default="gzip", choices=("none", "gzip", "snappy", "lz4", "zstd"))
    parser.add_argument("--bootstrap", help="host:port of a broker (default: start Tansu on loopback)")
    args = parser.parse_args()
    parts = set(args.only.split(","))
    lingers = sorted({float(v) for v in args.linger_ms.split(",")})

    import confluent_kafka

    print(f"confluent-kafka {confluent_kafka.version()[0]}, librdkafka {confluent_kafka.libversion()[0]};"
          f" load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    server = None
    if args.bootstrap is None:
        from tests.kafka_server import start_kafka_server

        server = start_kafka_server()
        args.bootstrap = server.bootstrap
        print(f"Tansu on {args.bootstrap} (memory storage), pid {server.proc.pid}")
    try:
        trades = make_trades(args.n)
        if parts & {"1", "3"}:
            written = bench_sink_alone(args, trades)
            if "3" in parts:
                bench_open(args, written, args.n)
        if "2" in parts:
            bench_beside_busy_thread(args, trades)
        if "4" in parts:
            bench_runner(args, trades, None, DAEMON.linger_ms)
        if "5" in parts:
            paced = make_trades(int(args.rate * args.seconds))
            for linger in lingers:
                bench_runner(args, paced, args.rate, linger)
                if args.no_freeze:
                    bench_runner(args, paced, args.rate, linger, freeze=False)
        print(f"load average afterwards {os.getloadavg()[0]:.2f}")
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
