"""Polymarket CLOB market channel (`/ws/market`): bytes in, typed events out. No I/O, no state.

`decode(frame)` never raises. One frame may carry one event object or a JSON array of them (the
initial book dump after a subscribe arrives as an array), so it returns a list; anything that
cannot be used becomes a `Problem` in that list, with a stable `kind` for counting and
rate-limited logging, while the usable events of the same frame are kept.

Prices and sizes arrive as decimal strings, sometimes without a leading zero (".48"), which
msgspec's lax number parsing refuses; so levels are decoded as strings and parsed here, with
bounds: a price outside [0, 1] or a negative, NaN or absurd size is a corrupted frame.

Messages we send: the first subscribe `{"assets_ids":[...],"type":"market"}`, later changes
`{"assets_ids":[...],"operation":"subscribe"|"unsubscribe"}`, and the text heartbeat `PING`
(answered with text `PONG`).
"""

from __future__ import annotations

import math
import re
from typing import Union

import msgspec
from msgspec import Struct

from ingestd.digits import is_ascii_digits

PING = "PING"
PONG = "PONG"

# Problem kinds: stable names for counters and log rate-limiting.
MALFORMED_JSON = "malformed_json"
NOT_AN_EVENT = "not_an_event"
INVALID_FIELDS = "invalid_fields"

MAX_SIZE = 1e12  # shares; the whole supply of an outcome token is far below this

# Event types the market channel sends that carry nothing we store: counted, then skipped.
IGNORED_TYPES = frozenset({"tick_size_change", "best_bid_ask", "new_market", "market_resolved"})


# --- decoded events ------------------------------------------------------------------------------

class Book(Struct, gc=False):
    """A full book of one outcome token: the subscription's snapshot, or a resync after a trade."""

    asset_id: str
    market: str
    timestamp_ms: int
    hash: str
    bids: list[tuple[float, float]]  # as sent; the local book orders them
    asks: list[tuple[float, float]]


class LevelChange(Struct, gc=False):
    asset_id: str
    price: float
    size: float  # the new total at this price; 0 removes the level
    is_bid: bool  # side "BUY" changes the bids, "SELL" the asks
    hash: str
    best_bid: float | None  # the venue's best prices after the change, to check our book against
    best_ask: float | None


class PriceChange(Struct, gc=False):
    market: str
    timestamp_ms: int
    changes: list[LevelChange]


class LastTrade(Struct, gc=False):
    asset_id: str
    market: str
    price: float
    size: float
    side: str  # "buy" or "sell", the taker's side
    timestamp_ms: int
    tx_hash: str
    fee_rate_bps: float | None


class Ignored(Struct, gc=False):
    """A known event type we do not store (tick_size_change, ...), or any other event type."""

    event_type: str


class Pong(Struct, gc=False):
    pass


class Problem(Struct, gc=False):
    kind: str
    detail: str


Event = Union[Book, PriceChange, LastTrade, Ignored, Pong]


# --- raw wire shapes -----------------------------------------------------------------------------

class _Level(Struct, gc=False):
    price: str
    size: str


class _RawBook(Struct, tag_field="event_type", tag="book", gc=False):
    asset_id: str
    market: str
    timestamp: Union[str, int]
    hash: str = ""
    bids: Union[list[_Level], None] = None
    asks: Union[list[_Level], None] = None
    # Older servers named the sides buys/sells.
    buys: Union[list[_Level], None] = None
    sells: Union[list[_Level], None] = None


class _RawChange(Struct, gc=False):
    asset_id: str
    price: str
    size: str
    side: str
    hash: str = ""
    best_bid: Union[str, None] = None
    best_ask: Union[str, None] = None


class _RawPriceChange(Struct, tag_field="event_type", tag="price_change", gc=False):
    market: str
    price_changes: list[_RawChange]
    timestamp: Union[str, int]


class _RawLastTrade(Struct, tag_field="event_type", tag="last_trade_price", gc=False):
    asset_id: str
    market: str
    price: str
    size: str
    side: str
    timestamp: Union[str, int]
    transaction_hash: str = ""
    fee_rate_bps: Union[str, None] = None


_Raw = Union[_RawBook, _RawPriceChange, _RawLastTrade]
_fast = msgspec.json.Decoder(Union[list[_Raw], _Raw])
_generic = msgspec.json.Decoder()
_KNOWN = {"book": _RawBook, "price_change": _RawPriceChange, "last_trade_price": _RawLastTrade}


class _Bad(Exception):
    pass


_DECIMAL = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def parse_decimal(text: str, what: str, low: float = 0.0, high: float = MAX_SIZE) -> float:
    """A non-negative decimal string within [low, high]; raises _Bad otherwise."""
    if not isinstance(text, str) or not _DECIMAL.fullmatch(text):
        raise _Bad(f"{what}: expected a decimal string, got {text!r:.40}")
    value = float(text)
    if not (low <= value <= high) or math.isinf(value):
        raise _Bad(f"{what}: {text!r:.40} is out of range [{low:g}, {high:g}]")
    return value


def _optional_price(text: str | None, what: str) -> float | None:
    if text is None or text == "":
        return None
    return parse_decimal(text, what, 0.0, 1.0)


def _millis(value: str | int, what: str = "timestamp") -> int:
    if isinstance(value, int):
        ms = value
    elif isinstance(value, str) and is_ascii_digits(value) and len(value) <= 16:
        ms = int(value)
    else:
        raise _Bad(f"{what}: expected epoch milliseconds, got {value!r:.40}")
    if not 0 <= ms < 10**15:
        raise _Bad(f"{what}: {ms} is out of range")
    return ms


def _levels(raw: list[_Level] | None, what: str) -> list[tuple[float, float]]:
    if not raw:
        return []
    return [(parse_decimal(lv.price, f"{what} price", 0.0, 1.0), parse_decimal(lv.size, f"{what} size"))
            for lv in raw]


def _side(text: str) -> str:
    side = text.upper() if isinstance(text, str) else ""
    if side == "BUY":
        return "buy"
    if side == "SELL":
        return "sell"
    raise _Bad(f"side: expected BUY or SELL, got {text!r:.20}")


def _convert(raw: _RawBook | _RawPriceChange | _RawLastTrade) -> Event:
    if type(raw) is _RawLastTrade:
        fee = None
        if raw.fee_rate_bps not in (None, ""):
            fee = parse_decimal(raw.fee_rate_bps, "fee_rate_bps", 0.0, 10_000.0)
        price = parse_decimal(raw.price, "price", 0.0, 1.0)
        size = parse_decimal(raw.size, "size")
        if price <= 0.0 or size <= 0.0:
            raise _Bad("last_trade_price: price and size must be positive")
        return LastTrade(raw.asset_id, raw.market, price, size, _side(raw.side), _millis(raw.timestamp),
                         raw.transaction_hash, fee)
    if type(raw) is _RawPriceChange:
        changes = []
        for c in raw.price_changes:
            side = _side(c.side)
            changes.append(LevelChange(
                c.asset_id, parse_decimal(c.price, "price", 0.0, 1.0), parse_decimal(c.size, "size"),
                side == "buy", c.hash, _optional_price(c.best_bid, "best_bid"), _optional_price(c.best_ask, "best_ask"),
            ))
        return PriceChange(raw.market, _millis(raw.timestamp), changes)
    bids = raw.bids if raw.bids is not None else raw.buys
    asks = raw.asks if raw.asks is not None else raw.sells
    return Book(raw.asset_id, raw.market, _millis(raw.timestamp), raw.hash, _levels(bids, "bid"), _levels(asks, "ask"))


def _convert_or_problem(raw) -> Event | Problem:
    try:
        return _convert(raw)
    except _Bad as exc:
        return Problem(INVALID_FIELDS, f"{raw.__struct_config__.tag}: {exc}")


def decode(frame: str | bytes) -> list[Event | Problem]:
    """One text frame -> its events (one, or several from an array), problems in their place."""
    if frame == PONG or frame == b"PONG":
        return [Pong()]
    try:
        raw = _fast.decode(frame)
    except (msgspec.DecodeError, UnicodeDecodeError):  # DecodeError includes ValidationError
        return _slow_path(frame)
    if isinstance(raw, list):
        return [_convert_or_problem(r) for r in raw]
    return [_convert_or_problem(raw)]


def _slow_path(frame: str | bytes) -> list[Event | Problem]:
    """Valid JSON with an unknown event type or bad fields somewhere, or not JSON at all."""
    try:
        value = _generic.decode(frame)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return [Problem(MALFORMED_JSON, f"{exc}; frame starts {bytes(frame[:60]) if isinstance(frame, bytes) else frame[:60]!r}")]
    items = value if isinstance(value, list) else [value]
    return [_one(item) for item in items]


def _one(item: object) -> Event | Problem:
    if not isinstance(item, dict):
        return Problem(NOT_AN_EVENT, f"expected an event object, got {type(item).__name__}")
    event_type = item.get("event_type")
    if not isinstance(event_type, str):
        return Problem(NOT_AN_EVENT, "object has no event_type")
    cls = _KNOWN.get(event_type)
    if cls is None:
        return Ignored(event_type[:40])
    try:
        raw = msgspec.convert(item, cls)
    except msgspec.ValidationError as exc:
        return Problem(INVALID_FIELDS, f"{event_type}: {exc}")
    return _convert_or_problem(raw)


# --- messages we send ----------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode


def subscribe_message(asset_ids: list[str]) -> str:
    """The first message on a new connection."""
    return _encode({"assets_ids": list(asset_ids), "type": "market"}).decode()


def change_message(asset_ids: list[str], operation: str) -> str:
    """Subscribe to more assets, or unsubscribe some, on a live connection."""
    if operation not in ("subscribe", "unsubscribe"):
        raise ValueError(f"operation must be subscribe or unsubscribe, not {operation!r}")
    return _encode({"assets_ids": list(asset_ids), "operation": operation}).decode()
