"""JSON-RPC over HTTP with httpx: the one place that talks to the node, and retries what a retry fixes.

`RpcClient.call` returns the decoded result, or the node's `RpcError` when the caller asked to see
that kind of error (eth_getLogs wants "range too large", to bisect). Everything else is retried
here with capped, fully jittered backoff, counted, and logged at most every 10 s per kind:
transport errors and dropped connections, HTTP 429 (after its Retry-After, capped), 5xx, bodies that
are not a JSON-RPC reply to this request, results of the wrong shape, and JSON-RPC errors that mean
"slow down" (Infura's -32005 rate limit). A block range must never be skipped, so there is no
"give up" here: the feed's stop or pause cancels a call that cannot succeed.

The URL is never logged: providers put the API key in it.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, TypeVar

import httpx
import msgspec

from ingestd.backoff import Backoff
from ingestd.logs import RateLimitedLog
from ingestd.stats import ConnectionStats, StatsRegistry, now_us
from ingestd.venues.evm import protocol
from ingestd.venues.evm.protocol import Problem, RpcError

T = TypeVar("T")
log = logging.getLogger("ingestd.evm")

_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def retry_after_s(value: str | None, default: float) -> float:
    """Retry-After's delta-seconds form; an HTTP date, garbage or nothing gives `default`."""
    try:
        seconds = float(value) if value is not None else default
    except ValueError:
        return default
    return seconds if seconds >= 0 else default


class RpcClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        url: str,
        stats: StatsRegistry,
        conn: ConnectionStats,
        *,
        sleep: Callable[[float], Awaitable[None]],
        retry_base_s: float,
        retry_cap_s: float,
        max_retry_after_s: float,
        prefix: str = "evm",
    ) -> None:
        self._http = http
        self._url = url
        self._stats = stats
        self._conn = conn
        self._sleep = sleep  # the feed's sleep, which keeps its heartbeat going
        self._backoff = Backoff(retry_base_s, retry_cap_s)
        self._max_retry_after_s = max_retry_after_s
        self._prefix = prefix
        self._rl = RateLimitedLog(interval_s=10.0)
        self._next_id = 0

    async def call(
        self,
        method: str,
        params: list,
        decode: Callable[[msgspec.Raw], T | Problem],
        *,
        pass_error: Callable[[RpcError], bool] = lambda error: False,
    ) -> T | RpcError:
        while True:
            self._next_id += 1
            request_id = self._next_id
            outcome = await self._attempt(method, request_id, protocol.request(request_id, method, params))
            if isinstance(outcome, _Retry):
                await self._failed(outcome)
                continue
            if isinstance(outcome, RpcError):
                if protocol.classify_error(outcome) == protocol.RATE_LIMITED:
                    await self._failed(_Retry("rpc_rate_limited", f"{method}: {outcome.code} {outcome.message}"))
                    continue
                if pass_error(outcome):
                    self._succeeded()
                    return outcome
                await self._failed(_Retry(f"rpc_error.{outcome.code}", f"{method}: {outcome.code} {outcome.message}"))
                continue
            value = decode(outcome)
            if isinstance(value, Problem):
                await self._failed(_Retry(f"malformed.{value.kind}", f"{method}: {value.detail}"))
                continue
            self._succeeded()
            return value

    async def _attempt(self, method: str, request_id: int, body: bytes) -> Any:
        stats, prefix = self._stats, self._prefix
        stats.incr(f"{prefix}.rpc.requests")
        try:
            resp = await self._http.post(self._url, content=body, headers=_HEADERS)
        except httpx.HTTPError as exc:
            # str(exc) of an httpx error may quote the URL, which holds the API key.
            return _Retry("transport_error", f"{method}: {type(exc).__name__}")
        self._conn.messages += 1
        self._conn.bytes += len(resp.content)
        self._conn.last_message_us = now_us()
        status = resp.status_code
        if status == 429:
            delay = min(retry_after_s(resp.headers.get("retry-after"), -1.0), self._max_retry_after_s)
            return _Retry("http_429", f"{method}: HTTP 429, Retry-After {resp.headers.get('retry-after')!r}",
                          delay if delay >= 0 else None)
        reply = protocol.decode_reply(resp.content, request_id)
        if status != 200 and not isinstance(reply, RpcError):
            # Some providers send JSON-RPC errors with 4xx statuses; anything else is a failure.
            kind = "http_5xx" if status >= 500 else f"http_{status}"
            return _Retry(kind, f"{method}: HTTP {status}: {resp.text[:120]!r}")
        if isinstance(reply, Problem):
            return _Retry(f"malformed.{reply.kind}", f"{method}: {reply.detail}")
        return reply

    def _succeeded(self) -> None:
        self._backoff.reset()
        conn = self._conn
        if conn.state != "up":
            conn.state = "up"
            conn.connects += 1
            conn.connected_since_us = now_us()

    async def _failed(self, retry: _Retry) -> None:
        self._stats.incr(f"{self._prefix}.rpc.{retry.kind}")
        if retry.kind.startswith("malformed."):
            self._stats.incr(f"{self._prefix}.rpc.malformed")
        self._conn.state = "backoff"
        self._conn.last_error = retry.detail[:200]
        delay = retry.delay if retry.delay is not None else self._backoff.next_delay()
        self._rl.log(log, logging.WARNING, retry.kind, "JSON-RPC request failed, retrying",
                     problem=retry.kind, detail=retry.detail[:200], retry_in_s=round(delay, 2))
        await self._sleep(delay)


class _Retry:
    __slots__ = ("kind", "detail", "delay")

    def __init__(self, kind: str, detail: str, delay: float | None = None) -> None:
        self.kind = kind
        self.detail = detail
        self.delay = delay
