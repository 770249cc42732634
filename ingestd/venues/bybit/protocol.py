"""Bybit v5 public WebSocket messages: bytes in, typed values out, requests out. No I/O, no state.

`decode(frame)` never raises. A frame that cannot be used comes back as a `Problem` with a stable
`kind` (for counters and rate-limited logs) and, when the frame named one, the `topic` it was for:
the feed resynchronises just that topic, or every topic on the connection when it could not tell.

Ticker messages (`tickers.<SYMBOL>`) are a `snapshot` and then `delta`s in which a missing field is
unchanged, so a `TickerUpdate` carries only the fields present, already converted (see FIELDS);
merging is the job of ticker_state. Bybit sends numbers as decimal strings; an empty string means
the contract has no such value (a dated future's funding rate), which becomes None.

Trade ids: Bybit's linear trade ids are UUID strings, while the store's natural key is an integer
`trade_id`. `trade_id_of` maps a venue id to a stable 63-bit integer: a decimal id (spot) is kept
as is, anything else is the first 8 bytes of its BLAKE2b digest, top bit cleared. Stable across
processes and versions (it is the key a re-fetched trade must hit again). Two different ids mapping
to one integer is a 2**-63 chance per pair, about 3 % over a year of Bybit's busiest contract; the
feed checks every new id against the recent ones and counts a collision, so one is never silent.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Union

import msgspec
from msgspec import Struct

from ingestd.digits import is_ascii_digits

VENUE = "bybit"
TICKERS = "tickers"
PUBLIC_TRADE = "publicTrade"

# Problem kinds, stable names for counters and log rate-limiting.
MALFORMED_JSON = "malformed_json"
NOT_AN_EVENT = "not_an_event"
UNKNOWN_TOPIC = "unknown_topic"
INVALID_FIELDS = "invalid_fields"

_MASK63 = (1 << 63) - 1
_DECIMAL = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_PRICE_MAX = 1e15
_SIZE_MAX = 1e18


class Problem(Struct, gc=False):
    kind: str
    detail: str
    topic: str | None = None  # the topic the frame named, when it named one


class TickerUpdate(Struct, gc=False):
    symbol: str
    snapshot: bool  # False: a delta, whose absent fields are unchanged
    ts_ms: int  # venue time the data was generated
    values: dict[str, float | int | None]  # FIELDS keys present in the message, converted


class VenueTrade(Struct, gc=False):
    venue_id: str
    ts_ms: int
    price: float
    qty: float
    side: str  # taker side, "buy" or "sell"


class TradeBatch(Struct, gc=False):
    symbol: str
    ts_ms: int
    trades: list[VenueTrade]


class OpReply(Struct, gc=False):
    """The answer to a subscribe, unsubscribe or ping request."""

    op: str
    success: bool
    ret_msg: str = ""
    req_id: str = ""


Event = Union[TickerUpdate, TradeBatch, OpReply, Problem]


# --- wire shapes --------------------------------------------------------------------------------


_NO_DATA = msgspec.Raw(b"")


class _Envelope(Struct):
    topic: str | None = None
    type: str | None = None
    ts: int | None = None
    data: msgspec.Raw = _NO_DATA
    op: str | None = None
    success: bool | None = None
    ret_msg: str | None = None
    req_id: str | None = None


class _TopicProbe(Struct):
    topic: object = None


class _TickerData(Struct):
    symbol: str | None = None
    markPrice: str | None = None
    indexPrice: str | None = None
    openInterest: str | None = None
    openInterestValue: str | None = None
    fundingRate: str | None = None
    nextFundingTime: str | None = None
    basis: str | None = None


class _TradeData(Struct):
    T: int
    s: str
    S: str
    v: str
    p: str
    i: str


_envelope = msgspec.json.Decoder(_Envelope)
_probe = msgspec.json.Decoder(_TopicProbe)
_ticker_data = msgspec.json.Decoder(_TickerData)
_trade_data = msgspec.json.Decoder(list[_TradeData])


class BadValue(Exception):
    pass


def decimal(text: str, name: str, *, low: float, high: float, low_inclusive: bool = True) -> float | None:
    if text == "":
        return None
    if not _DECIMAL.fullmatch(text):
        raise BadValue(f"{name}: not a decimal number: {text[:40]!r}")
    value = float(text)
    if not math.isfinite(value) or value > high or value < low or (value == low and not low_inclusive):
        raise BadValue(f"{name}: {text[:40]} out of range")
    return value


def _millis_as_us(text: str, name: str) -> int | None:
    if text in ("", "0"):
        return None  # no funding (dated futures)
    if not is_ascii_digits(text) or len(text) > 15:
        raise BadValue(f"{name}: not epoch milliseconds: {text[:40]!r}")
    return int(text) * 1000


# Bybit field -> (our key, converter). Converters raise BadValue.
FIELDS = {
    "fundingRate": ("funding_rate", lambda t: decimal(t, "fundingRate", low=-1.0, high=1.0)),
    "nextFundingTime": ("next_funding_us", lambda t: _millis_as_us(t, "nextFundingTime")),
    "openInterest": ("open_interest", lambda t: decimal(t, "openInterest", low=0.0, high=_SIZE_MAX)),
    "openInterestValue": ("open_interest_value", lambda t: decimal(t, "openInterestValue", low=0.0, high=_SIZE_MAX)),
    "markPrice": ("mark_price", lambda t: decimal(t, "markPrice", low=0.0, high=_PRICE_MAX, low_inclusive=False)),
    "indexPrice": ("index_price", lambda t: decimal(t, "indexPrice", low=0.0, high=_PRICE_MAX, low_inclusive=False)),
    "basis": ("venue_basis", lambda t: decimal(t, "basis", low=-_PRICE_MAX, high=_PRICE_MAX)),
}
STATE_KEYS = tuple(key for key, _ in FIELDS.values())


# --- decoding -----------------------------------------------------------------------------------


def decode(frame: str | bytes) -> Event:
    """One WebSocket text message -> a ticker update, a trade batch, a reply, or a Problem."""
    try:
        env = _envelope.decode(frame)
    except msgspec.ValidationError as exc:  # JSON, but not an object of the expected shape
        topic = _topic_of(frame)
        return Problem(INVALID_FIELDS if topic else NOT_AN_EVENT, str(exc), topic)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return Problem(MALFORMED_JSON, str(exc))
    topic = env.topic
    if topic is None:
        if env.op is not None:
            # A linear pong is {"success":true,"ret_msg":"pong","op":"ping"}; spot's is {"op":"pong"}.
            success = env.success if env.success is not None else env.op == "pong"
            return OpReply(env.op, success, env.ret_msg or "", env.req_id or "")
        return Problem(NOT_AN_EVENT, "neither a topic nor an op")
    channel, _, symbol = topic.partition(".")
    if not symbol or not env.data or env.ts is None or env.ts < 0:
        return Problem(INVALID_FIELDS, "topic without data or ts", topic)
    try:
        if channel == TICKERS:
            return _ticker(symbol, env)
        if channel == PUBLIC_TRADE:
            return _trades(symbol, env)
    except BadValue as exc:
        return Problem(INVALID_FIELDS, str(exc), topic)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # includes ValidationError
        return Problem(INVALID_FIELDS, str(exc), topic)
    return Problem(UNKNOWN_TOPIC, f"topic {topic[:60]!r}", topic)


def _topic_of(frame: str | bytes) -> str | None:
    try:
        topic = _probe.decode(frame).topic
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return topic if isinstance(topic, str) else None


def _ticker(symbol: str, env: _Envelope) -> TickerUpdate:
    if env.type not in ("snapshot", "delta"):
        raise BadValue(f"ticker type {env.type!r}")
    data = _ticker_data.decode(env.data)
    if data.symbol is not None and data.symbol != symbol:
        raise BadValue(f"data for {data.symbol!r} on topic tickers.{symbol}")
    values: dict[str, float | int | None] = {}
    for name, (key, convert) in FIELDS.items():
        text = getattr(data, name)
        if text is not None:
            values[key] = convert(text)
    return TickerUpdate(symbol, env.type == "snapshot", env.ts, values)


_SIDES = {"Buy": "buy", "Sell": "sell"}


def _trades(symbol: str, env: _Envelope) -> TradeBatch:
    out = []
    for item in _trade_data.decode(env.data):
        if item.s != symbol:
            raise BadValue(f"trade of {item.s!r} on topic publicTrade.{symbol}")
        side = _SIDES.get(item.S)
        if side is None:
            raise BadValue(f"trade side {item.S!r}")
        if not item.i or item.T < 0:
            raise BadValue("trade without id or time")
        price = decimal(item.p, "p", low=0.0, high=_PRICE_MAX, low_inclusive=False)
        qty = decimal(item.v, "v", low=0.0, high=_SIZE_MAX, low_inclusive=False)
        if price is None or qty is None:
            raise BadValue("trade without price or size")
        out.append(VenueTrade(item.i, item.T, price, qty, side))
    return TradeBatch(symbol, env.ts, out)


def trade_id_of(venue_id: str) -> int:
    """The stable integer key of a venue trade id (see the module docstring)."""
    if is_ascii_digits(venue_id) and str(int(venue_id)) == venue_id and int(venue_id) <= _MASK63:
        return int(venue_id)
    digest = hashlib.blake2b(venue_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & _MASK63


# --- requests -----------------------------------------------------------------------------------

_encode = msgspec.json.encode


def subscribe(topics: list[str], req_id: str) -> str:
    return _encode({"req_id": req_id, "op": "subscribe", "args": topics}).decode()


def unsubscribe(topics: list[str], req_id: str) -> str:
    return _encode({"req_id": req_id, "op": "unsubscribe", "args": topics}).decode()


def ping(req_id: str) -> str:
    return _encode({"req_id": req_id, "op": "ping"}).decode()


def topics_for(symbol: str, *, trades: bool) -> list[str]:
    return [f"{TICKERS}.{symbol}", f"{PUBLIC_TRADE}.{symbol}"] if trades else [f"{TICKERS}.{symbol}"]


def args_chars(topics: list[str]) -> int:
    """What a connection's subscriptions count against Bybit's 21,000-character args limit."""
    return sum(len(topic) for topic in topics)


def plan_connections(symbols: list[str], *, trades: bool, max_chars: int) -> list[list[str]]:
    """Consecutive groups of symbols whose topics fit `max_chars` per connection (a symbol whose
    topics alone exceed it still gets a connection of its own)."""
    groups: list[list[str]] = []
    used = 0
    for symbol in symbols:
        need = args_chars(topics_for(symbol, trades=trades))
        if not groups or used + need > max_chars:
            groups.append([])
            used = 0
        groups[-1].append(symbol)
        used += need
    return groups


def chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
