"""The CoinGecko feed: pair discovery for the Binance instances, and prices on a cron schedule.

    CoinGeckoFeed.run
    ├── heartbeat      beats feed.coingecko while the feed is alive
    ├── discovery      now, then every discovery_refresh_s: top coins by market cap -> Binance
    │                  pairs -> pairs_file (atomic); a failure keeps the last good file and retries
    │                  sooner (backoff capped at the refresh period)
    └── prices         at every prices_cron time (UTC): /coins/markets -> Price records; the only
                       sender to the router, one poll at a time (trigger() runs one now)

Discovery has the seed service's semantics: PAIRS_LIMIT caps the list, FALLBACK_PAIRS are always in
it, and they are all the Binance instances follow while no discovery has succeeded (the Binance feed
falls back by itself when the file is missing or unusable). DISCOVERY_REFRESH_SEC is the period.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import httpx
import trio

from ingestd.backoff import Backoff
from ingestd.logs import RateLimitedLog
from ingestd.model import Record
from ingestd.pipeline import Router
from ingestd.secrets import reveal
from ingestd.stats import StatsRegistry, now_us
from ingestd.venues.binance import rest as binance_rest
from ingestd.venues.coingecko import protocol
from ingestd.venues.coingecko.client import CoinGeckoClient, RequestFailed, Stopping
from ingestd.venues.coingecko.schedule import next_fire
from ingestd.venues.pairs_file import PairsFileError, read_pairs_file, write_pairs_file

FAMILY = "coingecko"
log = logging.getLogger("ingestd.coingecko")
HEARTBEAT_S = 0.5


def pairs_file_path(cfg: Any, environ: dict[str, str] | None = None) -> Path:
    """`pairs_file`, else <state dir>/pairs.json (the state dir is $STATE_DIRECTORY: systemd's
    StateDirectory=, which `ingestd run` also sets from --state-dir / daemon.state_dir)."""
    if cfg.pairs_file:
        return Path(cfg.pairs_file)
    environ = os.environ if environ is None else environ
    state_dir = environ.get("STATE_DIRECTORY", "").split(":")[0] or "."
    return Path(state_dir) / "pairs.json"


class CoinGeckoFeed:
    def __init__(self, cfg: Any, router: Router, stats: StatsRegistry, *, resume: dict[str, int] | None = None) -> None:
        self.cfg = cfg
        self.router = router
        self.stats = stats
        self.pairs_path = pairs_file_path(cfg)
        self.symbols: list[str] = list(cfg.fallback_pairs)  # the pair list, as /pairs shows it
        self.client: CoinGeckoClient | None = None
        self._stopping = trio.Event()
        self._poll_lock = trio.Lock()
        self._poll_scope: trio.CancelScope | None = None
        self._kick_prices = trio.Event()
        self._kick_discovery = trio.Event()
        self._paused = False
        self._wedged = False
        self._rl = RateLimitedLog(interval_s=10.0)

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self.stats.set_gauge(f"{FAMILY}.connections_planned", 1)
        try:
            self.symbols = await trio.to_thread.run_sync(read_pairs_file, self.pairs_path) or self.symbols
        except PairsFileError:
            pass
        self.stats.set_gauge(f"{FAMILY}.pairs", len(self.symbols))
        async with httpx.AsyncClient(timeout=self.cfg.request_timeout_s) as http:
            self.client = CoinGeckoClient(self.cfg, self.stats, http, stopping=self._stopping)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat)
                    if self.cfg.discovery:
                        nursery.start_soon(self._discovery_loop)
                    if self.cfg.prices_cron:
                        nursery.start_soon(self._prices_loop)
                    log.info("coingecko feed starting", extra={
                        "discovery": self.cfg.discovery, "pairs_file": str(self.pairs_path),
                        "prices_cron": self.cfg.prices_cron or "-"})
                    task_status.started()
            finally:
                self.client.cstats.state = "closed"

    def stop(self) -> None:
        """No new request goes out; a poll whose answers have arrived still reaches the router."""
        self._stopping.set()
        self._kick_prices.set()
        self._kick_discovery.set()

    def reconnect(self) -> int:
        self._kick_prices.set()
        return 1

    def wedge(self) -> None:
        self._wedged = True

    async def update_symbols(self, wanted: list[str]) -> tuple[list[str], list[str]]:
        """The pair list comes from discovery, not from a reload: run a discovery now."""
        self._kick_discovery.set()
        return [], []

    def pause(self) -> None:
        self._paused = True
        if self._poll_scope is not None:
            self._poll_scope.cancel()
        if self.client is not None:
            self.client.cstats.state = "paused"

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._kick_prices.set()  # catch up: the cron times missed while paused are not replayed

    async def trigger(self) -> dict:
        """One price poll now, outside the schedule."""
        return await self._poll_prices()

    # --- tasks ----------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while not self._stopping.is_set():
            if not self._wedged:
                self.stats.heartbeat(f"feed.{FAMILY}")
            with trio.move_on_after(HEARTBEAT_S):
                await self._stopping.wait()

    async def _discovery_loop(self) -> None:
        backoff = Backoff(5.0, max(5.0, self.cfg.discovery_refresh_s))
        delay = 0.0
        while not self._stopping.is_set():
            with trio.move_on_after(delay):
                await self._kick_discovery.wait()
            self._kick_discovery = trio.Event()
            if self._stopping.is_set():
                return
            if self._paused:
                delay = math.inf
                continue
            if await self.discover_once():
                backoff.reset()
                delay = self.cfg.discovery_refresh_s
            else:
                delay = backoff.next_delay()

    async def discover_once(self) -> bool:
        """One discovery; True when it wrote the pairs file."""
        cfg = self.cfg
        try:
            pairs = await self._discover()
        except Stopping:
            return False
        except RequestFailed as exc:
            self.stats.incr(f"{FAMILY}.discovery_failures")
            log.warning("discovery failed; keeping the current pair list",
                        extra={"problem": exc.kind, "detail": str(exc)[:200], "pairs": len(self.symbols)})
            return False
        meta = {"source": "coingecko", "pairs_limit": cfg.pairs_limit, "fallback_pairs": list(cfg.fallback_pairs)}
        await trio.to_thread.run_sync(lambda: write_pairs_file(self.pairs_path, pairs, **meta))
        changed = pairs != self.symbols
        self.symbols = pairs
        self.stats.incr(f"{FAMILY}.discoveries")
        self.stats.set_gauge(f"{FAMILY}.pairs", len(pairs))
        # Hourly in production: say it at info only when the list changed.
        log.log(logging.INFO if changed else logging.DEBUG, "discovered tradable pairs",
                extra={"pairs": len(pairs), "changed": changed, "path": str(self.pairs_path)})
        return True

    async def _discover(self) -> list[str]:
        cfg = self.cfg
        status = await self._binance_status() if cfg.validate_pairs else None
        wanted = max(0, cfg.pairs_limit - len(cfg.fallback_pairs))
        fallback = set(cfg.fallback_pairs)
        candidates: list[str] = []
        for page in range(1, cfg.discovery_max_pages + 1):
            rows = await self._markets(protocol.markets_request(page))
            found = protocol.candidate_pairs(rows, quote=cfg.quote_asset, exclude=cfg.exclude_bases)
            if status is not None:
                found = protocol.tradable(found, status)
            candidates.extend(found)
            if len(set(candidates) - fallback) >= wanted or len(rows) < protocol.PER_PAGE:
                break
        return protocol.pair_list(candidates, cfg.fallback_pairs, cfg.pairs_limit)

    async def _binance_status(self) -> dict[str, str] | None:
        url = reveal(self.cfg.binance_rest_url).rstrip("/") + binance_rest.EXCHANGE_INFO.path
        try:
            return binance_rest.parse_exchange_info(await self.client.get_url(url, {}))
        except (RequestFailed, binance_rest.ResponseError) as exc:
            self.stats.incr(f"{FAMILY}.exchange_info_failures")
            log.warning("Binance exchangeInfo unavailable; discovered pairs are not validated",
                        extra={"detail": str(exc)[:200]})
            return None

    async def _markets(self, req: protocol.Request) -> list[protocol.MarketRow]:
        rows = protocol.decode_markets(await self.client.get(req))
        if isinstance(rows, protocol.Problem):
            self.stats.incr(f"{FAMILY}.malformed" if rows.kind == "malformed" else f"{FAMILY}.api_errors")
            raise RequestFailed(rows.kind, rows.detail)
        return rows

    async def _prices_loop(self) -> None:
        while not self._stopping.is_set():
            fire = next_fire(self.cfg.prices_cron, time.time())
            with trio.move_on_after(max(0.0, fire - time.time())):
                await self._kick_prices.wait()
            self._kick_prices = trio.Event()
            if self._stopping.is_set():
                return
            if self._paused:
                continue
            await self._poll_prices()

    async def _poll_prices(self) -> dict:
        async with self._poll_lock:
            with trio.CancelScope() as scope:
                self._poll_scope = scope
                try:
                    records = await self._fetch_prices()
                except Stopping:
                    return {"records": 0, "stopping": True}
                except RequestFailed as exc:
                    self.stats.incr(f"{FAMILY}.poll_failures")
                    self.client.cstats.state = "backoff"
                    self._rl.log(log, logging.WARNING, "prices", "price poll failed; next one at the next cron time",
                                 problem=exc.kind, detail=str(exc)[:200])
                    return {"records": 0, "error": exc.kind}
                if records:
                    await self.router.send(records)
            self._poll_scope = None
            if scope.cancelled_caught:
                return {"records": 0, "cancelled": True}
            self.client.cstats.state = "up"
            self.stats.incr(f"{FAMILY}.price_polls")
            self.stats.incr(f"{FAMILY}.records", len(records))
            last = self.stats.last_event_us
            for r in records:
                last[(FAMILY, r.coin_id)] = r.recv_us
            return {"records": len(records)}

    async def _fetch_prices(self) -> list[Record]:
        cfg = self.cfg
        if cfg.coins:
            ids = list(cfg.coins)
            requests = [protocol.markets_request(1, ids=ids[i:i + protocol.PER_PAGE])
                        for i in range(0, len(ids), protocol.PER_PAGE)]
        else:
            per_page = min(protocol.PER_PAGE, cfg.prices_top_n)
            requests = [protocol.markets_request(page, per_page=per_page)
                        for page in range(1, math.ceil(cfg.prices_top_n / per_page) + 1)]
        out: dict[tuple[str, int], Record] = {}
        skipped = 0
        for req in requests:
            rows = await self._markets(req)
            recv_us = now_us()
            for row in rows:
                price = protocol.price_of(row, recv_us)
                if price is None:
                    skipped += 1
                else:
                    out[(price.coin_id, price.ts_us)] = price
        if not cfg.coins:
            ranked = sorted(out.values(), key=lambda p: p.market_cap_rank or math.inf)
            out = {(p.coin_id, p.ts_us): p for p in ranked[:cfg.prices_top_n]}
        if skipped:
            self.stats.incr(f"{FAMILY}.rows_skipped", skipped)
            self._rl.log(log, logging.WARNING, "rows_skipped", "markets rows without a usable id or last_updated",
                         count=skipped)
        return list(out.values())
