"""Binance Spot WebSocket messages: bytes in, typed events out. No I/O, no state.

`decode(frame)` never raises. A frame that cannot be understood comes back as a `Problem` whose
`kind` is stable (for counting and rate-limited logging) and whose `detail` says what was wrong.

Prices and quantities arrive as decimal strings; msgspec's lax mode parses them straight into
floats while validating, so a non-numeric, negative, NaN or absurd value fails decoding instead
of reaching the order book.
"""

from __future__ import annotations

from typing import Annotated, Union

import msgspec
from msgspec import Meta, Struct

# Bounds are wide enough for any listed market and narrow enough to reject garbage: a price of
# 1e300 or "inf" is a corrupted frame, not a quote.
Price = Annotated[float, Meta(gt=0.0, lt=1e15)]
Size = Annotated[float, Meta(ge=0.0, lt=1e18)]
PositiveSize = Annotated[float, Meta(gt=0.0, lt=1e18)]
Millis = Annotated[int, Meta(ge=0)]
Id = Annotated[int, Meta(ge=0)]
Level = tuple[Price, Size]


class TradeEvent(Struct, tag_field="e", tag="trade", gc=False):
    E: Millis
    s: str
    t: Id
    p: Price
    q: PositiveSize
    T: Millis
    m: bool


class AggTradeEvent(Struct, tag_field="e", tag="aggTrade", gc=False):
    E: Millis
    s: str
    a: Id
    p: Price
    q: PositiveSize
    T: Millis
    m: bool


class DepthEvent(Struct, tag_field="e", tag="depthUpdate", gc=False):
    E: Millis
    s: str
    U: Id
    u: Id
    b: list[Level]
    a: list[Level]


class ServerShutdown(Struct, tag_field="e", tag="serverShutdown", gc=False):
    E: Millis = 0


Event = Union[TradeEvent, AggTradeEvent, DepthEvent, ServerShutdown]


class _Combined(Struct, gc=False):
    stream: str
    data: Event


class Problem(Struct, gc=False):
    """A frame that was not a usable event. `kind` is one of the KINDS below."""

    kind: str
    detail: str


class ControlReply(Struct, gc=False):
    """Reply to a SUBSCRIBE/UNSUBSCRIBE/LIST_SUBSCRIPTIONS request, or a request error."""

    id: int | str | None = None
    result: object = None
    code: int | None = None
    msg: str | None = None


# Problem kinds, stable names for counters and log rate-limiting.
MALFORMED_JSON = "malformed_json"
UNKNOWN_EVENT = "unknown_event"
INVALID_FIELDS = "invalid_fields"
NOT_AN_EVENT = "not_an_event"


# Used only on the slow path, to tell an unknown event type from a known one with bad fields.
class _ProbeData(Struct):
    e: object = None


class _Probe(Struct):
    stream: object = None
    data: object = None
    e: object = None
    id: object = None
    result: object = None
    code: object = None
    msg: object = None


_combined = msgspec.json.Decoder(_Combined, strict=False)
_raw = msgspec.json.Decoder(Event, strict=False)
_probe = msgspec.json.Decoder(_Probe)

_KNOWN_EVENTS = {"trade", "aggTrade", "depthUpdate", "serverShutdown"}


def decode(frame: str | bytes) -> Event | ControlReply | Problem:
    """One combined-stream frame (`{"stream":..,"data":..}`) or raw-stream frame -> event."""
    try:
        return _combined.decode(frame).data
    except (msgspec.DecodeError, UnicodeDecodeError):  # DecodeError includes ValidationError
        return _slow_path(frame)


def _slow_path(frame: str | bytes) -> Event | ControlReply | Problem:
    try:
        probe = _probe.decode(frame)
    except msgspec.ValidationError as exc:  # valid JSON, but not an object (a subclass of DecodeError)
        return Problem(NOT_AN_EVENT, str(exc))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # invalid UTF-8 inside a string
        return Problem(MALFORMED_JSON, str(exc))
    if probe.stream is None and probe.data is None:
        if probe.e is not None:  # a raw (non-combined) stream frame
            return _decode_raw(frame, probe.e)
        if probe.id is not None or probe.code is not None:
            return ControlReply(
                id=probe.id if isinstance(probe.id, (int, str)) else None,
                result=probe.result,
                code=probe.code if isinstance(probe.code, int) else None,
                msg=probe.msg if isinstance(probe.msg, str) else None,
            )
        return Problem(NOT_AN_EVENT, "object has neither stream/data nor an event type")
    data = probe.data
    e = data.get("e") if isinstance(data, dict) else None
    if e not in _KNOWN_EVENTS:
        return Problem(UNKNOWN_EVENT, f"event type {e!r} on stream {probe.stream!r}")
    try:
        return _raw.decode(msgspec.json.encode(data))
    except msgspec.ValidationError as exc:
        return Problem(INVALID_FIELDS, f"{e}: {exc}")


def _decode_raw(frame: str | bytes, e: object) -> Event | Problem:
    if e not in _KNOWN_EVENTS:
        return Problem(UNKNOWN_EVENT, f"event type {e!r}")
    try:
        return _raw.decode(frame)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return Problem(INVALID_FIELDS, f"{e}: {exc}")


def stream_names(symbol: str, *, trade_stream: str, depth: bool, depth_speed_ms: int) -> list[str]:
    """The combined-stream names one symbol needs (Binance wants them lowercase)."""
    s = symbol.lower()
    names = [f"{s}@{trade_stream}"]
    if depth:
        names.append(f"{s}@depth@100ms" if depth_speed_ms == 100 else f"{s}@depth")
    return names


def combined_stream_url(base_url: str, streams: list[str]) -> str:
    return f"{base_url.rstrip('/')}/stream?streams={'/'.join(streams)}"
