"""`ingestd backfill coingecko --days N`: replay a lookback window of prices into the configured sinks.

For each coin the feed prices (`coins`, or the top `prices_top_n`), /coins/{id}/market_chart/range
is read in windows of at most 90 days (within 90 days CoinGecko answers hourly points; beyond, daily)
and every point goes through the normal pipeline (the sinks of [feeds.coingecko], with their
batching, retries and spools), so writes stay idempotent: a repeated backfill stores nothing twice.
Its spools are its own (<state dir>/spool/<sink>/coingecko-backfill), so it can run beside a
running ingestd@coingecko. Progress goes to stderr: a bar on a terminal, plain lines otherwise.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from typing import Any, TextIO

import httpx
import trio

from ingestd.pipeline import Router, SinkRunner
from ingestd.sinks import build_sink
from ingestd.sinks.spool import spool_dir_for
from ingestd.stats import StatsRegistry, now_us
from ingestd.venues.coingecko import protocol
from ingestd.venues.coingecko.client import CoinGeckoClient, RequestFailed

FAMILY = "coingecko"
INSTANCE = "coingecko-backfill"
WINDOW_S = 90 * 86_400  # the longest range CoinGecko still answers hourly
log = logging.getLogger("ingestd.coingecko.backfill")


class Progress:
    """A one-line bar redrawn in place on a terminal; a plain line per step (at most one per
    second, and the last) when stderr is a file or a pipe (journald, CI logs)."""

    def __init__(self, total: int, out: TextIO = sys.stderr, label: str = "backfill coingecko") -> None:
        self.total, self.out, self.label = max(total, 1), out, label
        self.tty = out.isatty()
        self.done = 0
        self.records = 0
        self._last_line = -math.inf  # the first step always prints
        self._start = time.monotonic()

    def step(self, records: int, what: str) -> None:
        self.done += 1
        self.records += records
        elapsed = time.monotonic() - self._start
        if self.tty:
            width = 30
            filled = int(width * self.done / self.total)
            bar = "#" * filled + "." * (width - filled)
            self.out.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {self.records} prices "
                           f"{elapsed:5.1f}s {what[:30]:<30}")
            if self.done == self.total:
                self.out.write("\n")
        elif self.done == self.total or elapsed - self._last_line >= 1.0:
            self._last_line = elapsed
            self.out.write(f"{self.label}: {self.done}/{self.total} requests, {self.records} prices, "
                           f"{elapsed:.1f}s ({what})\n")
        self.out.flush()


def windows(start_s: int, end_s: int, width_s: int = WINDOW_S) -> list[tuple[int, int]]:
    """[start, end] cut into consecutive windows of at most width_s, sharing no second."""
    out = []
    at = start_s
    while at <= end_s:
        stop = min(end_s, at + width_s - 1)
        out.append((at, stop))
        at = stop + 1
    return out


async def coins_to_backfill(client: CoinGeckoClient, cfg: Any) -> list[tuple[str, str]]:
    """(coin id, ticker) of every coin the feed prices, from /coins/markets."""
    if cfg.coins:
        ids = list(cfg.coins)
        requests = [protocol.markets_request(1, ids=ids[i:i + protocol.PER_PAGE])
                    for i in range(0, len(ids), protocol.PER_PAGE)]
    else:
        per_page = min(protocol.PER_PAGE, cfg.prices_top_n)
        requests = [protocol.markets_request(p, per_page=per_page)
                    for p in range(1, math.ceil(cfg.prices_top_n / per_page) + 1)]
    coins: dict[str, str] = {}
    for req in requests:
        rows = protocol.decode_markets(await client.get(req))
        if isinstance(rows, protocol.Problem):
            raise RequestFailed(rows.kind, rows.detail)
        for row in rows:
            coins.setdefault(row.id, row.symbol.upper())
    return list(coins.items())[: len(cfg.coins) or cfg.prices_top_n]


async def backfill(config: Any, feed_cfg: Any, state_dir, days: float, *, out: TextIO = sys.stderr) -> int:
    """Replay `days` into the sinks; returns how many prices were sent."""
    stats = StatsRegistry(INSTANCE)
    daemon = config.daemon
    runners = []
    for name in feed_cfg.sinks:
        sink_cfg = config.sinks[name]
        runners.append(SinkRunner(
            build_sink(name, sink_cfg, state_dir=state_dir, stats=stats), stats,
            batch_size=daemon.batch_size, linger_s=daemon.linger_ms / 1000, capacity=daemon.channel_capacity,
            spool_dir=spool_dir_for(state_dir, name, INSTANCE), spool_max_bytes=sink_cfg.spool_max_bytes,
            spool_when_full=sink_cfg.spool_when_full,
        ))
    router = Router(runners)
    sent = 0
    async with trio.open_nursery() as nursery:
        for runner in runners:
            await nursery.start(runner.run)
        try:
            async with httpx.AsyncClient(timeout=feed_cfg.request_timeout_s) as http:
                client = CoinGeckoClient(feed_cfg, stats, http)
                coins = await coins_to_backfill(client, feed_cfg)
                end = int(time.time())
                spans = windows(end - int(days * 86_400), end)
                progress = Progress(len(coins) * len(spans), out)
                for coin_id, symbol in coins:
                    for start_s, stop_s in spans:
                        body = await client.get(protocol.range_request(coin_id, start_s, stop_s))
                        prices = protocol.decode_range(body, coin_id, symbol, now_us())
                        if isinstance(prices, protocol.Problem):
                            raise RequestFailed(prices.kind, prices.detail)
                        if prices:
                            await router.send(prices)
                        sent += len(prices)
                        progress.step(len(prices), coin_id)
        finally:
            await router.aclose()  # the runners write (or spool) what they hold, then end
    return sent


def run_backfill(args: argparse.Namespace) -> int:
    """The `ingestd backfill coingecko` command (see ingestd.cli)."""
    from ingestd.cli import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, _print_problems, resolve_state_dir
    from ingestd.config import ConfigError, load_config
    from ingestd.logs import setup_logging

    try:
        config = load_config(args.config)
        _, feed_cfg = config.feed_for_instance(FAMILY)
    except ConfigError as error:
        _print_problems(error)
        return EXIT_CONFIG
    setup_logging(args.log_level or "warning")
    state_dir = resolve_state_dir(args.state_dir, config)
    state_dir.mkdir(parents=True, exist_ok=True)
    try:
        sent = trio.run(backfill, config, feed_cfg, state_dir, args.days)
    except RequestFailed as exc:
        print(f"ingestd backfill coingecko: gave up: {exc.kind}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"backfill coingecko: {sent} prices over {args.days:g} days sent to {', '.join(feed_cfg.sinks)}",
          file=sys.stderr)
    return EXIT_OK
