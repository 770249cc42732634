"""Binance Spot REST market data: requests, responses and the request-weight budget. No I/O.

Rate limits (rest-api.md): every response reports `X-MBX-USED-WEIGHT-1M`, the weight used in the
current minute. HTTP 429 means back off for `Retry-After` seconds; calling on regardless earns a 418
(an IP ban from 2 minutes to 3 days). So the budget is conservative: it spends at most
`limit * headroom` per minute, and after a 429/418 it blocks every request until Retry-After passes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec
from msgspec import Meta

from ingestd.digits import is_ascii_digits
from ingestd.model import Trade
from ingestd.venues.binance.book import DepthSnapshot

Price = Annotated[float, Meta(gt=0.0, lt=1e15)]
Size = Annotated[float, Meta(ge=0.0, lt=1e18)]


@dataclass(frozen=True)
class Request:
    path: str
    params: dict[str, str | int]
    weight: int


def depth_weight(limit: int) -> int:
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


def depth_request(symbol: str, limit: int) -> Request:
    return Request("/api/v3/depth", {"symbol": symbol, "limit": limit}, depth_weight(limit))


def trades_request(trade_stream: str, symbol: str, from_id: int, limit: int = 1000) -> Request:
    """Backfill page from `from_id` (inclusive) in the id space of the live stream in use."""
    if trade_stream == "aggTrade":
        return Request("/api/v3/aggTrades", {"symbol": symbol, "fromId": from_id, "limit": limit}, 4)
    return Request("/api/v3/historicalTrades", {"symbol": symbol, "fromId": from_id, "limit": limit}, 25)


EXCHANGE_INFO = Request("/api/v3/exchangeInfo", {}, 20)


class ResponseError(Exception):
    """A REST response that could not be used (bad status or body)."""


# --- response bodies -----------------------------------------------------------------------------

class _Depth(msgspec.Struct):
    lastUpdateId: int
    bids: list[tuple[Price, Size]]
    asks: list[tuple[Price, Size]]


class _HistoricalTrade(msgspec.Struct):
    id: int
    price: Price
    qty: Size
    time: int
    isBuyerMaker: bool


class _AggTrade(msgspec.Struct):
    a: int
    p: Price
    q: Size
    T: int
    m: bool


class _SymbolInfo(msgspec.Struct):
    symbol: str
    status: str


class _ExchangeInfo(msgspec.Struct):
    symbols: list[_SymbolInfo]


_depth = msgspec.json.Decoder(_Depth, strict=False)
_historical = msgspec.json.Decoder(list[_HistoricalTrade], strict=False)
_agg = msgspec.json.Decoder(list[_AggTrade], strict=False)
_exchange_info = msgspec.json.Decoder(_ExchangeInfo)


def _decode(decoder: msgspec.json.Decoder, body: bytes, what: str):
    try:
        return decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # DecodeError includes ValidationError
        raise ResponseError(f"{what}: {exc}") from None


def parse_depth(body: bytes) -> DepthSnapshot:
    d = _decode(_depth, body, "depth")
    return DepthSnapshot(d.lastUpdateId, d.bids, d.asks)


def parse_trades(trade_stream: str, body: bytes, *, venue: str, symbol: str, recv_us: int) -> list[Trade]:
    """A backfill page as Trade records, ascending by id. Side is the taker's."""
    if trade_stream == "aggTrade":
        return [
            Trade(venue, symbol, t.a, t.p, t.q, "sell" if t.m else "buy", t.T * 1000, recv_us)
            for t in _decode(_agg, body, "aggTrades")
        ]
    return [
        Trade(venue, symbol, t.id, t.price, t.qty, "sell" if t.isBuyerMaker else "buy", t.time * 1000, recv_us)
        for t in _decode(_historical, body, "historicalTrades")
    ]


def parse_exchange_info(body: bytes) -> dict[str, str]:
    """symbol -> status (TRADING, HALT, BREAK, ...)."""
    return {s.symbol: s.status for s in _decode(_exchange_info, body, "exchangeInfo").symbols}


# --- the weight budget -----------------------------------------------------------------------------

PROBE_WAIT_S = 0.05  # how often requests held behind the probe look again


class WeightBudget:
    """Decides how long to wait before spending `weight`; fed back by every response.

    Times are seconds on any monotonic-ish clock the caller chooses (the feed uses wall time,
    because Binance's windows are calendar minutes on the server).
    """

    def __init__(self, limit_per_minute: int = 6000, headroom: float = 0.8) -> None:
        self.allowed = max(1, int(limit_per_minute * headroom))
        self.used = 0
        self.window = -1  # minute number the `used` figure belongs to
        self.blocked_until = 0.0
        self.bans = 0  # 418s seen: each one means we were too slow to back off
        # After a 429/418 block the first request goes alone: requests that all waited for the
        # block to end would otherwise leave together, and any that reaches the venue after the
        # first one's new 429 is "failing to back off", which Binance answers with a ban (418).
        self._probe_due = False
        self._probe_out = False

    def delay_before(self, weight: int, now: float) -> float:
        if now < self.blocked_until:
            return self.blocked_until - now
        if self._probe_out:
            return PROBE_WAIT_S
        minute = int(now // 60)
        if minute != self.window:
            self.window, self.used = minute, 0
        if self.used + weight > self.allowed and self.used > 0:
            return (minute + 1) * 60 - now + 0.05
        return 0.0

    def spend(self, weight: int, now: float) -> bool:
        """Reserve weight for a request about to be sent (before its response reports usage).
        True if it is the probe after a block: pass that to `on_response` or `release`."""
        minute = int(now // 60)
        if minute != self.window:
            self.window, self.used = minute, 0
        self.used += weight
        if self._probe_due:
            self._probe_due, self._probe_out = False, True
            return True
        return False

    def release(self, probe: bool) -> None:
        """A request that got no response (transport error, cancelled)."""
        if probe:
            self._probe_out, self._probe_due = False, True

    def on_response(self, status: int, headers: dict[str, str], now: float, probe: bool = False) -> None:
        if probe:
            self._probe_out = False
        used = headers.get("x-mbx-used-weight-1m")
        if used is not None and is_ascii_digits(used) and int(now // 60) == self.window:
            # The server's figure wins: other clients on the same IP spend from the same budget.
            self.used = max(self.used, int(used))
        if status in (429, 418):
            if status == 418:
                self.bans += 1
            retry_after = headers.get("retry-after", "")
            wait = float(retry_after) if is_ascii_digits(retry_after.replace(".", "", 1)) else 60.0
            self.blocked_until = max(self.blocked_until, now + wait)
            self._probe_due = True
