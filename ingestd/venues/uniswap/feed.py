"""The Uniswap v3 feed: polls The Graph for each followed pool every `poll_interval_s`.

    UniswapFeed.run
    ├── heartbeat      beats feed.uniswap while the event loop and the feed are alive
    ├── pools loader   reads the dex_pools table every `pools_reload_s`
    └── scheduler      one poll at a time (scheduled, triggered or after resume), the only sender
                       to the router

Pools followed: the configured `pools` (or the operator's list, `update_symbols`) plus the rows of
the `dex_pools` table for `chain` in the SQL store the feed writes to (pools.py; `pools_sink`). The
table is read before the first poll and again every `pools_reload_s`; a change applies from the next
poll on. A table that cannot be read keeps the pools followed so far (at start: the configured ones),
with a rate-limited warning and `uniswap.pools_load_errors` counted.

A poll reads every pool in turn (protocol.py: the pool, then its ticks in the ±2 % window, paged
and pinned to the pool's block) and sends one DexMetric per complete read. Any failure of a read
(GraphQL `errors` with HTTP 200, a 429, another HTTP status, a malformed body, a transport error)
is counted and logged, and that pool is read again at the next poll; a 429's Retry-After also holds
back the poller's next request. The API key sits in the URL path, so the URL is never logged.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import httpx
import trio

from ingestd.logs import RateLimitedLog
from ingestd.model import DexMetric
from ingestd.pipeline import Router
from ingestd.secrets import reveal
from ingestd.stats import StatsRegistry, now_us
from ingestd.venues.uniswap import protocol
from ingestd.venues.uniswap.depth import tick_window
from ingestd.venues.uniswap.pools import PoolStore, normalize, store_for_sink_object

FAMILY = "uniswap"
log = logging.getLogger("ingestd.uniswap")

HEARTBEAT_S = 0.5
CONN_ID = "uniswap/thegraph"


class _ReadFailed(Exception):
    """One pool read failed; `kind` names the counter, the message is safe to log (no key)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class UniswapFeed:
    def __init__(self, cfg: Any, router: Router, stats: StatsRegistry, *, resume: dict[str, int] | None = None,
                 store: PoolStore | None = None) -> None:
        self.cfg = cfg
        self.router = router
        self.stats = stats
        if store is None and router is not None:  # the dex_pools table lives in the SQL store it writes to
            store = router.store_in_sinks(store_for_sink_object, getattr(cfg, "pools_sink", ""))
        self.store = store
        self._configured: list[str] = list(cfg.pools)  # config, or the operator's list (update_symbols)
        self._from_table: list[str] = []  # the dex_pools rows as last read
        self.symbols: list[str] = list(self._configured)  # what the next poll reads
        self._key = reveal(cfg.api_key)
        self._url = protocol.endpoint(reveal(cfg.gateway_url), cfg.subgraph_id, self._key)
        self._http: httpx.AsyncClient | None = None
        self._poll_scope: trio.CancelScope | None = None
        self._poll_lock = trio.Lock()
        self._stopping = trio.Event()
        self._kick = trio.Event()
        self._paused = False
        self._wedged = False
        self._not_before = 0.0  # trio clock: no request before this (a 429's Retry-After)
        self._rl = RateLimitedLog(interval_s=10.0)
        self._cstats = stats.connection(CONN_ID)
        self._cstats.url = str(cfg.gateway_url) if not self._key else "(gateway, key hidden)"
        self._cstats.streams = len(self.symbols)

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        if not self._key and "gateway.thegraph.com" in str(self.cfg.gateway_url):
            log.warning("no API key for The Graph's gateway: set THEGRAPH_API_KEY or feeds.uniswap.api_key")
        if self.store is None and not self._configured:
            log.warning("no pools to poll: pools is empty and the feed writes to no sqlite or postgres sink "
                        "whose dex_pools table could list some")
        self.stats.set_gauge(f"{FAMILY}.connections_planned", 1)
        self._set_symbols()
        await self._load_pools()  # before the first poll; unreadable: the configured pools only
        async with httpx.AsyncClient(timeout=self.cfg.request_timeout_s) as http:
            self._http = http
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._heartbeat)
                    nursery.start_soon(self._scheduler)
                    if self.store is not None:
                        nursery.start_soon(self._pools_loader)
                    log.info("uniswap feed starting", extra={
                        "pools": len(self.symbols), "pools_from_table": len(self._from_table),
                        "interval_s": self.cfg.poll_interval_s,
                        "pools_store": self.store.description if self.store else "none"})
                    task_status.started()
            finally:
                self._cstats.state = "closed"

    def stop(self) -> None:
        """No new request goes out; a request in flight may finish (bounded by the shutdown
        deadline), so a read whose last page has arrived is still sent to the router."""
        self._stopping.set()
        self._kick.set()

    def reconnect(self) -> int:
        """Each poll opens what it needs over the client's pool; a reconnect is a poll now."""
        self._kick.set()
        return 1

    def wedge(self) -> None:
        self._wedged = True

    async def update_symbols(self, wanted: list[str]) -> tuple[list[str], list[str]]:
        """Replace the configured pools (an empty list: back to `pools`); the dex_pools rows stay."""
        self._configured = list(dict.fromkeys(p.lower() for p in wanted)) or list(self.cfg.pools)
        added, removed = self._set_symbols()
        if added:
            self._kick.set()  # read the new pools now, not in up to poll_interval_s
        return added, removed

    def pause(self) -> None:
        self._paused = True
        if self._poll_scope is not None:
            self._poll_scope.cancel()
        self._cstats.state = "paused"

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._kick.set()

    async def trigger(self) -> dict:
        """One poll of every pool now, outside the schedule (waits for a poll in flight first)."""
        return await self._poll()

    # --- pools ----------------------------------------------------------------------------------

    def _set_symbols(self) -> tuple[list[str], list[str]]:
        """Follow the configured pools plus the table's, from the next poll on; (added, removed)."""
        new = list(dict.fromkeys(self._configured + self._from_table))
        added = [p for p in new if p not in self.symbols]
        removed = [p for p in self.symbols if p not in new]
        self.symbols = new
        for pool in removed:  # no stale last-event time for a pool no longer read
            self.stats.last_event_us.pop((FAMILY, pool), None)
        self.stats.set_gauge(f"{FAMILY}.pools", len(new))
        self.stats.set_gauge(f"{FAMILY}.pools_from_table", len(self._from_table))
        self._cstats.streams = len(new)
        return added, removed

    async def _load_pools(self) -> bool:
        """Read the dex_pools table and follow its pools from the next poll on; False (the pools
        followed stay as they are) if it cannot be read."""
        if self.store is None:
            return True
        store, chain = self.store, self.cfg.chain
        try:
            # Abandoned on cancel: a read changes nothing, and a database that hangs must not
            # hold up a shutdown.
            rows = await trio.to_thread.run_sync(store.load, chain, abandon_on_cancel=True)
        except Exception as exc:  # a database that is down, locked or not migrated yet: keep what we have
            self.stats.incr(f"{FAMILY}.pools_load_errors")
            self._rl.log(log, logging.WARNING, "pools_load", "cannot read the dex_pools table; the pools followed stay",
                         store=store.description, error=repr(exc)[:300], pools=len(self.symbols))
            return False
        pools, bad = normalize(rows)
        if bad:
            self.stats.incr(f"{FAMILY}.pools_bad_rows", len(bad))
            self._rl.log(log, logging.WARNING, "pools_bad_rows", "dex_pools rows without a pool address skipped",
                         store=store.description, chain=chain, rows=len(bad), example=repr(bad[0])[:100])
        self._from_table = pools
        added, removed = self._set_symbols()
        if added or removed:
            log.info("pools from the dex_pools table changed", extra={
                "added": ",".join(added), "removed": ",".join(removed), "pools": len(self.symbols)})
        return True

    async def _pools_loader(self) -> None:
        while True:
            with trio.move_on_after(self.cfg.pools_reload_s):
                await self._stopping.wait()
            if self._stopping.is_set():
                return
            await self._load_pools()

    # --- tasks ----------------------------------------------------------------------------------

    async def _heartbeat(self) -> None:
        while not self._stopping.is_set():
            if not self._wedged:
                self.stats.heartbeat(f"feed.{FAMILY}")
            with trio.move_on_after(HEARTBEAT_S):
                await self._stopping.wait()

    async def _scheduler(self) -> None:
        next_at = trio.current_time()
        while True:
            with trio.move_on_at(next_at):
                await self._kick.wait()
            self._kick = trio.Event()
            if self._stopping.is_set():
                return
            if self._paused:
                next_at = math.inf
                continue
            next_at = trio.current_time() + self.cfg.poll_interval_s
            await self._poll()

    async def _poll(self) -> dict:
        async with self._poll_lock:
            started = trio.current_time()
            stored = failed = 0
            with trio.CancelScope() as scope:
                self._poll_scope = scope
                for pool in list(self.symbols):
                    try:
                        metric = await self._read_pool(pool)
                    except _ReadFailed as exc:
                        if self._stopping.is_set():
                            break
                        failed += 1
                        self.stats.incr(f"{FAMILY}.read_failures")
                        self.stats.incr(f"{FAMILY}.{exc.kind}")
                        self._cstats.last_error = f"{exc.kind}: {exc}"[:300]
                        self._rl.log(log, logging.WARNING, f"{exc.kind}:{pool}", "pool read failed; retried next poll",
                                     pool=pool, problem=exc.kind, detail=str(exc)[:200])
                        continue
                    await self.router.send([metric])
                    stored += 1
                    if pool in self.symbols:  # not dropped (table reload, update_symbols) while read
                        self.stats.last_event_us[(FAMILY, pool)] = metric.recv_us
            self._poll_scope = None
            self.stats.incr(f"{FAMILY}.polls")
            self.stats.incr(f"{FAMILY}.records", stored)
            if scope.cancelled_caught:
                return {"records": stored, "failed": failed, "cancelled": True}
            if failed == 0 and stored:
                self._cstats.state = "up"
            elif stored == 0 and failed:
                self._cstats.state = "backoff"
            self.stats.set_gauge(f"{FAMILY}.last_poll_s", trio.current_time() - started)
            return {"records": stored, "failed": failed, "pools": stored + failed}

    async def _read_pool(self, pool: str) -> DexMetric:
        first = self.cfg.tick_page_size
        read = protocol.decode_pool(await self._post(protocol.pool_request(pool)), pool)
        if isinstance(read, protocol.Problem):
            raise _ReadFailed(read.kind, read.detail)
        ts_us = now_us()
        lo, hi = tick_window(read.tick)
        ticks: list[tuple[int, int]] = []
        after = ""
        while True:
            page = protocol.decode_ticks(await self._post(protocol.ticks_request(pool, lo, hi, after, read.block, first)),
                                         first)
            if isinstance(page, protocol.Problem):
                raise _ReadFailed(page.kind, page.detail)
            ticks.extend(page.ticks)
            if not page.full:
                break
            after = page.last_id
        return protocol.to_metric(read, ticks, chain=self.cfg.chain, ts_us=ts_us, recv_us=now_us())

    async def _post(self, body: bytes) -> bytes:
        wait = self._not_before - trio.current_time()
        if wait > 0:
            with trio.move_on_after(wait):
                await self._stopping.wait()
        if self._stopping.is_set():
            raise _ReadFailed("stopping", "stopping")
        cstats = self._cstats
        if cstats.state in ("new", "closed"):
            cstats.state = "connecting"
        try:
            resp = await self._http.post(self._url, content=body, headers={"content-type": "application/json"})
        except httpx.HTTPError as exc:
            raise _ReadFailed("transport_errors", self._scrub(repr(exc))) from None
        cstats.messages += 1
        cstats.bytes += len(resp.content)
        cstats.last_message_us = now_us()
        if resp.status_code == 429:
            delay = _retry_after(resp.headers.get("retry-after"), default=5.0)
            self._not_before = trio.current_time() + min(delay, self.cfg.max_retry_after_s)
            raise _ReadFailed("http_429", f"rate limited, Retry-After {resp.headers.get('retry-after')!r}")
        if resp.status_code != 200:
            raise _ReadFailed(f"http_{resp.status_code}", self._scrub(resp.text[:200]))
        return resp.content

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def _retry_after(value: str | None, *, default: float) -> float:
    """Retry-After in seconds (the delta form; an HTTP date or garbage gives the default)."""
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default
