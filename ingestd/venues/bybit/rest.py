"""Bybit v5 market REST: request parameters and response parsing. No I/O.

Every answer is `{"retCode": 0, "retMsg": "OK", "result": {...}, "time": ...}`; a non-zero
retCode is a failure even with HTTP 200. Rate limits show up three ways: HTTP 429 (with
Retry-After), HTTP 403 "access too frequent" (Bybit's IP limit), and retCode 10006 "Too many
visits" (with X-Bapi-Limit-Reset-Timestamp, in ms). All three become `RateLimited`.
"""

from __future__ import annotations

from typing import Mapping

import msgspec
from msgspec import Struct

from ingestd.digits import is_ascii_digits
from ingestd.venues.bybit.protocol import VenueTrade, BadValue, decimal

RECENT_TRADE = "/v5/market/recent-trade"
TICKERS = "/v5/market/tickers"
CATEGORY = "linear"
TOO_MANY_VISITS = 10006


class ResponseError(Exception):
    """An answer that cannot be used now (a malformed body, a server error); worth retrying."""


class Refused(ResponseError):
    """The venue refused the request itself (HTTP 4xx, a retCode): retrying will not help."""


class RateLimited(ResponseError):
    def __init__(self, message: str, retry_after_s: float | None, status: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status = status  # 429, 403, or 200 for retCode 10006


def recent_trade_params(symbol: str, limit: int) -> dict[str, str]:
    return {"category": CATEGORY, "symbol": symbol, "limit": str(limit)}


def tickers_params() -> dict[str, str]:
    return {"category": CATEGORY}


def retry_after_s(headers: Mapping[str, str], now_s: float) -> float | None:
    """How long the venue asks us to wait: Retry-After (seconds), or the reset time of the limit."""
    value = headers.get("retry-after")
    if value is not None:
        try:
            return max(0.0, float(value))
        except ValueError:
            pass
    reset = headers.get("x-bapi-limit-reset-timestamp")
    if reset is not None and is_ascii_digits(reset):
        return max(0.0, int(reset) / 1000 - now_s)
    return None


def check_http(status: int, headers: Mapping[str, str], body: bytes, now_s: float) -> None:
    """Raise for anything but HTTP 200."""
    if status == 200:
        return
    if status in (429, 403):
        raise RateLimited(f"HTTP {status}", retry_after_s(headers, now_s), status)
    if 400 <= status < 500:
        raise Refused(f"HTTP {status}: {body[:200]!r}")
    raise ResponseError(f"HTTP {status}: {body[:200]!r}")


class _Trade(Struct):
    execId: str
    symbol: str
    price: str
    size: str
    side: str
    time: str


class _TradeList(Struct):
    items: list[_Trade] = msgspec.field(name="list")


class _TickerItem(Struct):
    symbol: str


class _TickerList(Struct):
    items: list[_TickerItem] = msgspec.field(name="list")


class _Answer(Struct):
    retCode: int
    retMsg: str = ""
    result: msgspec.Raw = msgspec.Raw(b"")


_answer = msgspec.json.Decoder(_Answer)
_trades = msgspec.json.Decoder(_TradeList)
_tickers = msgspec.json.Decoder(_TickerList)


def _result(body: bytes, headers: Mapping[str, str], now_s: float) -> msgspec.Raw:
    try:
        answer = _answer.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ResponseError(f"malformed body: {exc}") from None
    if answer.retCode == TOO_MANY_VISITS:
        raise RateLimited(f"retCode {answer.retCode}: {answer.retMsg}", retry_after_s(headers, now_s), 200)
    if answer.retCode != 0:
        raise Refused(f"retCode {answer.retCode}: {answer.retMsg[:200]}")
    if not answer.result:
        raise ResponseError("retCode 0 without a result")
    return answer.result


def parse_recent_trades(body: bytes, symbol: str, headers: Mapping[str, str] = {}, now_s: float = 0.0) -> list[VenueTrade]:
    """A /v5/market/recent-trade page (newest first), as venue trades."""
    try:
        items = _trades.decode(_result(body, headers, now_s)).items
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ResponseError(f"malformed trade list: {exc}") from None
    out = []
    for item in items:
        if item.symbol != symbol:
            raise ResponseError(f"trade of {item.symbol!r} in the page of {symbol!r}")
        side = {"Buy": "buy", "Sell": "sell"}.get(item.side)
        if side is None or not item.execId or not is_ascii_digits(item.time):
            raise ResponseError(f"unusable trade {item.execId!r}")
        try:
            price = decimal(item.price, "price", low=0.0, high=1e15, low_inclusive=False)
            qty = decimal(item.size, "size", low=0.0, high=1e18, low_inclusive=False)
        except BadValue as exc:
            raise ResponseError(str(exc)) from None
        if price is None or qty is None:
            raise ResponseError(f"trade {item.execId!r} without price or size")
        out.append(VenueTrade(item.execId, int(item.time), price, qty, side))
    return out


def parse_ticker_symbols(body: bytes, headers: Mapping[str, str] = {}, now_s: float = 0.0) -> set[str]:
    """The contracts /v5/market/tickers?category=linear lists."""
    try:
        return {item.symbol for item in _tickers.decode(_result(body, headers, now_s)).items}
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ResponseError(f"malformed ticker list: {exc}") from None
