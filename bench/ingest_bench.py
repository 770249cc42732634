"""End-to-end benchmark: simulator blast -> daemon -> SQLite. Prints figures; never passes or fails.

    .venv/bin/python bench/ingest_bench.py            # all three phases, each in a fresh process
    .venv/bin/python bench/ingest_bench.py throughput --trades 1000000
    .venv/bin/python bench/ingest_bench.py latency --rate 10000 --seconds 20
    .venv/bin/python bench/ingest_bench.py rss --symbols 200 --seconds 30

The simulator runs as its own process (`ingestd sim`), so it has the other core; the daemon runs
in this process through the same `run_daemon` as `ingestd run`, so its stats registry can be read
directly at the end. Phases:

- throughput: 200 symbols, N pre-encoded trades blasted as fast as the sockets take them; the
  figure is trades stored in SQLite / seconds from the first stored trade to the last.
- latency:   the same tape at a fixed offered rate; exchange time (stamped by the simulator at send)
  to committed-in-SQLite, p50/p99 from the daemon's own histogram.
- rss:       200 symbols with trades AND order books (depth diffs, snapshots, top-N rows) at a steady
  rate; peak resident set size of the daemon process (VmHWM).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ingestd.config import parse_config  # noqa: E402
from ingestd.logs import setup_logging  # noqa: E402
from ingestd.stats import StatsRegistry  # noqa: E402
from ingestd.supervisor import run_daemon  # noqa: E402


def start_sim(tmp: Path, *args: str) -> tuple[subprocess.Popen, dict]:
    ports = tmp / "ports.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingestd", "sim", "--ports-file", str(ports), "--log-level", "warning", *args],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(tmp / "sim.log", "wb"),
    )
    deadline = time.monotonic() + 120  # generating a large tape takes a while
    while not (ports.exists() and ports.read_text().strip().endswith("}")):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"simulator failed: {(tmp / 'sim.log').read_text()}")
        time.sleep(0.1)
    return proc, json.loads(ports.read_text())


def config_for(urls: dict, symbols: list[str], state: Path, *, depth: bool, batch_size: int = 5000,
               sync: str = "normal", rest_weight_limit: int = 6000) -> object:
    quoted = ", ".join(f'"{s}"' for s in symbols)
    text = f"""
[daemon]
batch_size = {batch_size}
linger_ms = 5
http_port = 0
[sinks.local]
type = "sqlite"
synchronous = "{sync}"
[feeds.binance]
ws_url = "{urls['ws_url']}"
rest_url = "{urls['rest_url']}"
symbols = [{quoted}]
fallback_pairs = []
depth = {"true" if depth else "false"}
backfill = false
exchange_info_check = false
rest_weight_limit = {rest_weight_limit}
"""
    return parse_config(text, source="<bench>", environ={})


def sim_symbols(urls: dict) -> list[str]:
    import urllib.request

    with urllib.request.urlopen(urls["rest_url"] + "/_sim/truth", timeout=30) as resp:
        return list(json.loads(resp.read()))


async def run_until(config, state: Path, stats: StatsRegistry, done, timeout: float) -> None:
    stop = trio.Event()

    async def watch(stats: StatsRegistry) -> None:
        with trio.move_on_after(timeout):
            while not done(stats):
                await trio.sleep(0.05)
        stop.set()

    await run_daemon(config, "binance", state, stats=stats, on_started=watch, stop=stop)


def trades_stored(stats: StatsRegistry) -> int:
    return stats.counters.get("sink.local.rows_written", 0)


def phase_throughput(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sim, urls = start_sim(tmp, "--symbols", str(args.symbols), "--rate", "0", "--blast-trades", str(args.trades))
        try:
            symbols = sim_symbols(urls)
            config = config_for(urls, symbols, tmp / "state", depth=False, batch_size=args.batch_size, sync=args.synchronous)
            stats = StatsRegistry("bench")
            marks: dict[str, float] = {}

            def done(st: StatsRegistry) -> bool:
                n = trades_stored(st)
                if n and "first" not in marks:
                    marks["first"] = time.perf_counter()
                marks["last"] = time.perf_counter()
                marks["n"] = n
                return n >= args.trades

            trio.run(run_until, config, tmp / "state", stats, done, args.timeout)
        finally:
            sim.terminate()
            sim.wait()
    elapsed = marks["last"] - marks["first"]
    lag = stats.stored_latency.all_time
    print(f"throughput: {marks['n']:,} trades over {args.symbols} symbols stored in {elapsed:.2f} s "
          f"= {marks['n'] / elapsed:,.0f} trades/s (decode + feed state + SQLite, one process)")
    print(f"  frames decoded {stats.counters.get('binance.trades', 0):,}; "
          f"peak RSS {peak_rss_mb():.0f} MB; exchange->stored p50 {ms(lag.percentile(0.5))} p99 {ms(lag.percentile(0.99))} "
          f"(saturated, so this is queueing)")


def phase_latency(args) -> None:
    per_connection = args.rate / max(1, -(-args.symbols // 50))
    total = int(args.rate * args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sim, urls = start_sim(tmp, "--symbols", str(args.symbols), "--rate", "0", "--blast-trades", str(total),
                              "--blast-rate", str(per_connection))
        try:
            symbols = sim_symbols(urls)
            config = config_for(urls, symbols, tmp / "state", depth=False)
            stats = StatsRegistry("bench")
            trio.run(run_until, config, tmp / "state", stats, lambda st: trades_stored(st) >= total, args.seconds * 3)
        finally:
            sim.terminate()
            sim.wait()
    lat = stats.stored_latency.all_time
    lag = stats.lag.all_time
    print(f"latency at an offered {args.rate:,.0f} trades/s ({args.symbols} symbols, {trades_stored(stats):,} trades):")
    print(f"  exchange -> stored in SQLite: p50 {ms(lat.percentile(0.5))}  p99 {ms(lat.percentile(0.99))}  "
          f"max {ms(lat.percentile(1.0))}")
    print(f"  exchange -> received:         p50 {ms(lag.percentile(0.5))}  p99 {ms(lag.percentile(0.99))}")


def phase_rss(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sim, urls = start_sim(tmp, "--symbols", str(args.symbols), "--rate", str(args.event_rate),
                              "--depth-ratio", "0.7", "--weight-limit", "1000000")
        try:
            symbols = sim_symbols(urls)
            # The simulator allows this weight, so all 200 books sync at once (at Binance's 6000/min,
            # 200 snapshots of weight 50 take two minutes to fetch; see the README).
            config = config_for(urls, symbols, tmp / "state", depth=True, rest_weight_limit=1_000_000)
            stats = StatsRegistry("bench")
            t_end = time.monotonic() + args.seconds
            trio.run(run_until, config, tmp / "state", stats, lambda st: time.monotonic() > t_end, args.seconds + 10)
        finally:
            sim.terminate()
            sim.wait()
    c = stats.counters
    print(f"rss: {args.symbols} symbols, trades + depth at {args.event_rate:,} events/s for {args.seconds} s: "
          f"peak RSS {peak_rss_mb():.0f} MB")
    print(f"  trades {c.get('binance.trades', 0):,}, depth updates {c.get('binance.depth_updates', 0):,}, "
          f"books live {int(stats.gauges.get('binance.books_live', 0))}/{len(symbols)}, "
          f"rows stored {trades_stored(stats):,}")


def peak_rss_mb() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ms(us) -> str:
    return "-" if us is None else f"{us / 1000:.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", nargs="?", default="all", choices=["all", "throughput", "latency", "rss"])
    parser.add_argument("--symbols", type=int, default=200)
    parser.add_argument("--trades", type=int, default=1_000_000, help="throughput: trades in the blast tape")
    parser.add_argument("--batch-size", type=int, default=5000)
    parser.add_argument("--synchronous", default="normal", choices=["off", "normal", "full"])
    parser.add_argument("--rate", type=float, default=10_000, help="latency: offered trades/s in total")
    parser.add_argument("--seconds", type=int, default=20, help="latency and rss: how long to run")
    parser.add_argument("--event-rate", type=int, default=5000, help="rss: market events/s (trades + depth)")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    setup_logging("warning")
    if args.phase == "all":
        # Each phase in a fresh interpreter, so peak RSS and warm caches do not leak across phases.
        for phase in ("throughput", "latency", "rss"):
            subprocess.run([sys.executable, __file__, phase, *sys.argv[2:]], check=True)
        return
    {"throughput": phase_throughput, "latency": phase_latency, "rss": phase_rss}[args.phase](args)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
