"""The Data API over httpx: one rate-limit budget shared by every request the feed makes (whale
polls and market backfills), Retry-After obeyed, failures counted and logged, never raised.

`fetch_trades` pages through `GET /trades` newest first and returns every usable row, or None when
a page could not be had (transport error, 5xx, malformed body): the caller retries later, with
nothing advanced, so a bad page costs time, never a trade.
"""

from __future__ import annotations

import logging
from typing import Callable

import httpx
import trio

from ingestd.logs import RateLimitedLog
from ingestd.stats import StatsRegistry, now_us
from ingestd.venues.polymarket import data_api
from ingestd.venues.polymarket.data_api import DataTrade, Page, Problem, Request, RequestWindow

log = logging.getLogger("ingestd.polymarket")

VENUE = "polymarket"
MAX_429_RETRIES = 20  # per request; each waits out the Retry-After, so this is minutes of refusals


class DataClient:
    def __init__(self, http: httpx.AsyncClient, stats: StatsRegistry, *, requests: int, window_s: float,
                 page_size: int) -> None:
        self.http = http
        self.stats = stats
        self.window = RequestWindow(requests, window_s)
        self.page_size = page_size
        self._rl = RateLimitedLog(interval_s=10.0)
        self.cstats = stats.connection(f"{VENUE}/data-api")
        self.cstats.url = str(http.base_url)
        self.cstats.streams = 1

    async def get(self, req: Request) -> bytes | None:
        """One GET within the budget; None if it failed (already counted and logged)."""
        stats = self.stats
        refusals = 0
        while True:
            delay = self.window.delay_before(trio.current_time())
            if delay > 0:
                stats.incr(f"{VENUE}.rest.throttled_waits")
                await trio.sleep(delay)
                continue
            self.window.spend(trio.current_time())
            try:
                resp = await self.http.get(req.path, params=req.params)
            except httpx.HTTPError as exc:
                stats.incr(f"{VENUE}.rest.transport_errors")
                self._down(repr(exc))
                self._rl.log(log, logging.WARNING, "data_api_transport", "Data API request failed",
                             path=req.path, error=repr(exc))
                return None
            status = resp.status_code
            if status == 200:
                stats.incr(f"{VENUE}.rest.requests")
                self.cstats.state = "up"
                return resp.content
            stats.incr(f"{VENUE}.rest.http_{status}")
            if status == 429 and refusals < MAX_429_RETRIES:
                refusals += 1
                waited = self.window.retry_after(resp.headers.get("retry-after"), trio.current_time())
                self._rl.log(log, logging.WARNING, "data_api_429", "Data API rate limit hit, waiting",
                             retry_after_s=round(waited, 2))
                continue
            self._down(f"HTTP {status}")
            self._rl.log(log, logging.WARNING, f"data_api_{status}", "Data API refused a request",
                         path=req.path, status=status, body=resp.text[:200])
            return None

    def _down(self, error: str) -> None:
        self.cstats.state = "backoff"
        self.cstats.last_error = error

    async def fetch_trades(self, make: Callable[..., Request], key: str, start_s: int | None
                           ) -> tuple[list[DataTrade], int] | None:
        """Every row of `make(key, start_s=, limit=, offset=)` from newest back to `start_s`, and
        when the last page arrived (µs); None if any page failed."""
        trades: list[DataTrade] = []
        offset = 0
        limit = self.page_size
        while True:
            body = await self.get(make(key, start_s=start_s, limit=limit, offset=offset))
            if body is None:
                return None
            received = now_us()
            page = data_api.parse_trades(body)
            if isinstance(page, Problem):
                self.stats.incr(f"{VENUE}.malformed_payloads.{page.kind}")
                self._rl.log(log, logging.WARNING, page.kind, "unusable Data API page, retrying later",
                             key=key, detail=page.detail[:200])
                return None
            self._note_page(page, key)
            trades.extend(page.trades)
            if not data_api.more_pages(page, limit=limit, offset=offset, start_s=start_s):
                if page.rows >= limit and offset + limit > data_api.MAX_OFFSET:
                    self.stats.incr(f"{VENUE}.data_api_window_exceeded")
                    self._rl.log(log, logging.WARNING, "offset_cap", "Data API offset cap reached; older rows skipped",
                                 key=key)
                break
            offset += limit
        if start_s is not None:
            trades = [t for t in trades if t.timestamp_s >= start_s]
        return trades, received

    def _note_page(self, page: Page, key: str) -> None:
        self.cstats.messages += page.rows
        self.cstats.last_message_us = now_us()
        if page.bad_rows:
            self.stats.incr(f"{VENUE}.malformed_payloads.{data_api.BAD_ROW}", len(page.bad_rows))
            self._rl.log(log, logging.WARNING, data_api.BAD_ROW, "Data API rows skipped", key=key,
                         count=len(page.bad_rows), first=page.bad_rows[0])
