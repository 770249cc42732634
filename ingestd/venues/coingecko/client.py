"""GET against CoinGecko with its rate limits: a 429 waits out Retry-After (capped; exponential backoff
with full jitter when the header is missing) and tries again, as do 5xx answers and transport
errors, up to `max_attempts`. The API key travels in a header and is never logged."""

from __future__ import annotations

import logging
from typing import Any

import httpx
import trio

from ingestd.backoff import Backoff
from ingestd.logs import RateLimitedLog
from ingestd.secrets import reveal
from ingestd.stats import StatsRegistry, now_us
from ingestd.venues.coingecko import protocol

log = logging.getLogger("ingestd.coingecko")
CONN_ID = "coingecko/api"


class RequestFailed(Exception):
    """A request gave up; `kind` names the counter. The message is safe to log."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


class Stopping(Exception):
    """The feed is stopping: no new request goes out."""


def retry_after_s(value: str | None) -> float | None:
    """Retry-After in seconds (the delta form); None when absent or an HTTP date we do not parse."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


class CoinGeckoClient:
    def __init__(self, cfg: Any, stats: StatsRegistry, http: httpx.AsyncClient, *,
                 stopping: trio.Event | None = None) -> None:
        self.cfg = cfg
        self.stats = stats
        self.http = http
        self.stopping = stopping if stopping is not None else trio.Event()
        self._base = reveal(cfg.api_url).rstrip("/")
        self._headers = {"accept": "application/json", **protocol.key_header(cfg.api_plan, reveal(cfg.api_key))}
        self._key = reveal(cfg.api_key)
        self._rl = RateLimitedLog(interval_s=10.0)
        self.cstats = stats.connection(CONN_ID)
        self.cstats.url = self._base

    async def get(self, req: protocol.Request) -> bytes:
        return await self.get_url(self._base + req.path, req.params, headers=self._headers)

    async def get_url(self, url: str, params: dict[str, str], *, headers: dict[str, str] | None = None) -> bytes:
        backoff = Backoff(0.5, 30.0)
        cfg, stats, cstats = self.cfg, self.stats, self.cstats
        for attempt in range(1, cfg.max_attempts + 1):
            if self.stopping.is_set():
                raise Stopping()
            if cstats.state in ("new", "closed"):
                cstats.state = "connecting"
            try:
                resp = await self.http.get(url, params=params, headers=headers)
            except httpx.HTTPError as exc:
                stats.incr("coingecko.transport_errors")
                kind, detail, delay = "transport_errors", self._scrub(repr(exc)), backoff.next_delay()
            else:
                cstats.messages += 1
                cstats.bytes += len(resp.content)
                cstats.last_message_us = now_us()
                status = resp.status_code
                if status == 200:
                    stats.incr("coingecko.requests")
                    return resp.content
                stats.incr(f"coingecko.http_{status}")
                header = resp.headers.get("retry-after")
                if status == 429:
                    waited = retry_after_s(header)
                    delay = min(waited if waited is not None else backoff.next_delay(), cfg.max_retry_after_s)
                    kind, detail = "http_429", f"rate limited (Retry-After {header!r})"
                elif status >= 500:
                    kind, detail, delay = f"http_{status}", self._scrub(resp.text[:200]), backoff.next_delay()
                else:
                    raise RequestFailed(f"http_{status}", self._scrub(resp.text[:200]))
            cstats.last_error = detail[:300]
            if attempt == cfg.max_attempts:
                raise RequestFailed(kind, f"{detail}; gave up after {attempt} attempts")
            self._rl.log(log, logging.WARNING, kind, "CoinGecko request failed, retrying", problem=kind,
                         detail=detail[:200], retry_in_s=round(delay, 2), attempt=attempt)
            with trio.move_on_after(delay):
                await self.stopping.wait()
        raise AssertionError("unreachable")

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text
