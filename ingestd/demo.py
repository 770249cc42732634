"""`ingestd demo`: the loopback simulator and the Binance feed into the embedded SQLite store.

It runs the real daemon code (the same supervisor, feed, pipeline and sink as `ingestd run`) against
the simulator, prints one summary line a second, and ends with a table that checks what was stored
against the simulator's ground truth.
"""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import trio

from ingestd.config import parse_config
from ingestd.sim.server import SimConfig, Simulator, serve
from ingestd.stats import StatsRegistry
from ingestd.supervisor import run_daemon


def demo_config_text(sim: Simulator, symbols: list[str], state_dir: Path) -> str:
    quoted = ", ".join(f'"{s}"' for s in symbols)
    return f"""
[daemon]
state_dir = "{state_dir}"
linger_ms = 100

[sinks.local]
type = "sqlite"
path = "ingestd.sqlite"

[feeds.binance]
sinks = ["local"]
ws_url = "{sim.ws_url}"
rest_url = "{sim.rest_url}"
symbols = [{quoted}]
fallback_pairs = []
book_interval_ms = 1000
"""


def run_demo(*, duration: float | None, state_dir: Path, symbols: int = 10, rate: float = 500.0, seed: int = 1) -> int:
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    out = sys.stdout
    sim = trio.run(_demo, duration, state_dir, symbols, rate, seed, out)
    print_final_table(state_dir / "ingestd.sqlite", sim, out)
    return 0


async def _demo(duration, state_dir: Path, n_symbols: int, rate: float, seed: int, out) -> Simulator:
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, SimConfig(symbols=n_symbols, rate=rate, seed=seed))
        symbols = list(sim.symbols)
        # environ={}: a user's BINANCE_WS_URL must not send the demo to the real venue.
        config = parse_config(demo_config_text(sim, symbols, state_dir), source="<demo>", environ={})
        print(
            f"ingestd demo: simulator {sim.ws_url} (REST {sim.rest_url}), {len(symbols)} symbols at "
            f"{rate:g} events/s -> {state_dir / 'ingestd.sqlite'}"
            + (f", {duration:g} s" if duration else ", until Ctrl-C"),
            file=out,
            flush=True,
        )
        stop = trio.Event()
        stats = StatsRegistry("binance")

        async def summary(stats: StatsRegistry) -> None:
            await print_summaries(stats, out)

        async def stop_after() -> None:
            if duration:
                await trio.sleep(duration)
                stop.set()

        nursery.start_soon(stop_after)
        await run_daemon(config, "binance", state_dir, stats=stats, on_started=summary, stop=stop)
        nursery.cancel_scope.cancel()
    return sim


async def print_summaries(stats: StatsRegistry, out) -> None:
    started = trio.current_time()
    last_trades = 0
    while True:
        await trio.sleep(1.0)
        print(summary_line(stats, trio.current_time() - started, last_trades), file=out, flush=True)
        last_trades = stats.counters.get("binance.trades", 0)


def summary_line(stats: StatsRegistry, elapsed: float, last_trades: int) -> str:
    c = stats.counters
    snap_conns = stats.connections.values()
    up = sum(1 for x in snap_conns if x.state == "up")
    lag = stats.lag.summary()
    trades = c.get("binance.trades", 0)
    errors = sum(v for k, v in c.items() if k.startswith("binance.decode_errors."))

    def ms(us):
        return "-" if us is None else f"{us / 1000:.1f}"

    return (
        f"[{elapsed:5.0f}s] trades {trades:,} (+{trades - last_trades:,}/s) "
        f"rows stored {c.get('sink.local.rows_written', 0):,} | conns {up}/{int(stats.gauges.get('binance.connections_planned', 0))} "
        f"| books live {int(stats.gauges.get('binance.books_live', 0))}/{int(stats.gauges.get('binance.symbols', 0))} "
        f"| lag p50 {ms(lag['p50_us'])} ms p99 {ms(lag['p99_us'])} ms "
        f"| gaps {c.get('binance.gaps', 0)} backfilled {c.get('binance.trades_backfilled', 0)} "
        f"bad frames {errors}"
    )


def print_final_table(db_path: Path, sim: Simulator, out) -> None:
    """Per symbol: what was stored, and whether any trade inside the stored range is missing."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    rows = con.execute(
        """SELECT t.symbol, COUNT(*), MIN(t.trade_id), MAX(t.trade_id),
                  (SELECT COUNT(*) FROM books b WHERE b.venue = t.venue AND b.symbol = t.symbol),
                  (SELECT spread_bps FROM books b WHERE b.venue = t.venue AND b.symbol = t.symbol
                    ORDER BY update_id DESC LIMIT 1)
           FROM ticks t WHERE t.venue = 'binance' GROUP BY t.symbol ORDER BY t.symbol"""
    ).fetchall()
    con.close()
    header = f"{'symbol':<12} {'trades':>8} {'made':>8} {'missing':>8} {'books':>6} {'spread bps':>10}"
    print("\n" + header + "\n" + "-" * len(header), file=out)
    total = missing_total = 0
    for symbol, count, lo, hi, books, spread in rows:
        made = sum(1 for _ in sim.market.trade_ids(symbol))
        # Inside [lo, hi] every id the simulator made must be stored exactly once.
        in_range = sum(1 for i in sim.market.trade_ids(symbol) if lo <= i <= hi)
        missing = in_range - count
        total += count
        missing_total += missing
        spread_txt = "-" if spread is None else f"{spread:.2f}"
        print(f"{symbol:<12} {count:>8,} {made:>8,} {missing:>8} {books:>6} {spread_txt:>10}", file=out)
    print("-" * len(header), file=out)
    print(f"{'total':<12} {total:>8,} {'':>8} {missing_total:>8}", file=out)
    print(f"\nstore: {db_path}\n  sqlite3 {db_path} 'SELECT symbol, COUNT(*) FROM ticks GROUP BY symbol'", file=out)
