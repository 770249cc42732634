"""The stats-socket protocol, sans-I/O: shared by the Trio daemon and the asyncio console.

JSON Lines over a stream (an AF_UNIX socket in practice). Every message is one JSON object on one
line, with the protocol version `"v": 1` and a `"type"`. Readers skip fields they do not know
(like Redis INFO), so either side may add fields without a version bump; a change that breaks a
reader bumps `v`.

Requests (client -> daemon):

    {"v":1,"type":"snapshot"}                       -> one snapshot
    {"v":1,"type":"subscribe","interval_ms":1000}   -> a snapshot now, then one per interval, on the
                                                       same connection, until it closes (each update
                                                       is a FULL snapshot; "now_us" in the data
                                                       tells them apart)
    {"v":1,"type":"control","verb":"flush","args":{}}  -> {"v":1,"type":"result","ok":true,"error":null}

Replies (daemon -> client):

    {"v":1,"type":"snapshot","data":{...StatsRegistry.snapshot()...},"interval_ms":1000}
    {"v":1,"type":"result","ok":false,"error":"permission denied","verb":"flush"}
    {"v":1,"type":"error","error":"malformed JSON: ..."}   (the connection stays open)

Control verbs (root or the admin group only; see ingestd.controls for what they do), and the
"data" of their results:

    pause      {}                     -> {"state": "paused", "since": ISO-8601, "already": bool}
    resume     {}                     -> {"state": "running", "paused_for_s": s, "already": bool}
    reconnect  {}                     -> {"replacing": n}
    trigger    {}                     -> what the polling feed's poll did, e.g. {"records": n}
    flush      {"timeout_s": 10}      -> {"records": n, "sinks": {name: {"records": n, "done": bool,
                                          "state": "live" | "spooling" | "replaying"}}}

A verb that does not apply is ok=false with the reason ("binance does not poll; trigger applies to
..."). Snapshots from the daemon also carry its run state at the top level: "state" (starting,
running, paused, draining) and, while paused, "paused_since".

Any request may carry an "id" (string or integer), echoed on its reply, so a client that sends
control verbs on a subscribed connection can match results among the updates.

`Connection` turns received bytes into typed messages (and `ProtocolError` events for lines that
are not valid messages: malformed JSON, unknown types, unsupported versions, over-long lines) and
messages into bytes. It never raises on received data and never buffers more than one line limit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Union

import msgspec

PROTOCOL_VERSION = 1

# A request is a few hundred bytes; anything near this is garbage or an attack. Snapshots (read by
# clients) grow with the symbol count, so a client accepts longer lines by default.
MAX_REQUEST_LINE = 1 << 20  # 1 MiB
MAX_REPLY_LINE = 64 << 20  # 64 MiB

# Control verbs the protocol defines; which of them an instance supports is its own business (an
# unsupported one is answered with ok=false).
VERBS = ("reconnect", "pause", "resume", "trigger", "flush")

# Subscription intervals are clamped to this range; the effective one is echoed on every update.
MIN_INTERVAL_MS = 100
MAX_INTERVAL_MS = 60_000
DEFAULT_INTERVAL_MS = 1000

RequestId = Union[int, str, None]


class _Message(msgspec.Struct, tag_field="type", omit_defaults=True, kw_only=True):
    """Base: `type` is the tag; `v` is written by `encode` (every message has it) and checked by
    the decoder before the message is decoded into its type."""


# --- requests ------------------------------------------------------------------------------------


class SnapshotRequest(_Message, tag="snapshot"):
    id: RequestId = None


class SubscribeRequest(_Message, tag="subscribe"):
    interval_ms: int = DEFAULT_INTERVAL_MS
    id: RequestId = None

    def effective_interval_ms(self) -> int:
        return min(MAX_INTERVAL_MS, max(MIN_INTERVAL_MS, self.interval_ms))


class ControlRequest(_Message, tag="control"):
    verb: str
    args: dict[str, Any] = {}
    id: RequestId = None


Request = Union[SnapshotRequest, SubscribeRequest, ControlRequest]

# --- replies -------------------------------------------------------------------------------------


class Snapshot(_Message, tag="snapshot"):
    data: dict[str, Any]
    interval_ms: int | None = None  # subscription updates: the effective interval
    id: RequestId = None


class Result(_Message, tag="result"):
    ok: bool
    error: str | None  # required, so it is always written: null on success
    verb: str | None = None
    data: dict[str, Any] | None = None  # whatever the control handler returned
    id: RequestId = None


class Error(_Message, tag="error"):
    error: str
    id: RequestId = None


Reply = Union[Snapshot, Result, Error]
Message = Union[Request, Reply]

_REQUEST_TYPES: dict[str, type[_Message]] = {"snapshot": SnapshotRequest, "subscribe": SubscribeRequest,
                                             "control": ControlRequest}
_REPLY_TYPES: dict[str, type[_Message]] = {"snapshot": Snapshot, "result": Result, "error": Error}


@dataclass(frozen=True)
class ProtocolError:
    """A received line that is not a valid message. The server answers it with an `Error` (see
    `as_reply`); the connection goes on."""

    error: str
    id: RequestId = None

    def as_reply(self) -> Error:
        return Error(error=self.error, id=self.id)


Event = Union[Request, Reply, ProtocolError]


class _Head(msgspec.Struct):
    """What is read from every line first: unknown fields are skipped, any JSON value accepted."""

    v: Any = None
    type: Any = None
    id: Any = None


_encoder = msgspec.json.Encoder()
_head_decoder = msgspec.json.Decoder(_Head)
_decoders = {cls: msgspec.json.Decoder(cls) for cls in (*_REQUEST_TYPES.values(), *_REPLY_TYPES.values())}


def encode(message: _Message) -> bytes:
    """One message as one line, newline included: `{"v":1,"type":...}`."""
    body = _encoder.encode(message)  # b'{"type":"...",...}': the tag comes first
    return b'{"v":%d,' % PROTOCOL_VERSION + body[1:] + b"\n"


def encode_snapshot(data: dict[str, Any], *, interval_ms: int | None = None, id: RequestId = None) -> bytes:
    """A snapshot line. The server builds it once per interval and writes the same bytes to every
    subscriber."""
    return encode(Snapshot(data=data, interval_ms=interval_ms, id=id))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def decode_line(line: bytes, types: dict[str, type[_Message]]) -> Event:
    """Decode one line (without its newline) into a message of `types`, or a ProtocolError.

    Never raises: whatever the bytes, the result is an event."""
    try:
        head = _head_decoder.decode(line)
    except msgspec.ValidationError:
        return ProtocolError("expected a JSON object")
    except Exception as exc:  # DecodeError, and anything else the bytes can provoke
        return ProtocolError(f"malformed JSON: {exc}")
    rid = head.id if isinstance(head.id, (str, int)) and not isinstance(head.id, bool) else None
    if head.v is None:
        return ProtocolError(f'missing protocol version "v" (this side speaks {PROTOCOL_VERSION})', rid)
    if head.v != PROTOCOL_VERSION or isinstance(head.v, bool):
        return ProtocolError(f"unsupported protocol version {_short(head.v)} (this side speaks {PROTOCOL_VERSION})",
                             rid)
    if not isinstance(head.type, str):
        return ProtocolError('missing message "type"' if head.type is None else
                             f'message "type" must be a string, not {_short(head.type)}', rid)
    cls = types.get(head.type)
    if cls is None:
        return ProtocolError(f"unknown message type {_short(head.type)} (expected one of: {', '.join(types)})", rid)
    try:
        return _decoders[cls].decode(line)
    except Exception as exc:
        return ProtocolError(f"invalid {head.type!r} message: {exc}", rid)


class Connection:
    """One end of a stats-socket stream.

        conn = Connection("server")
        for event in conn.receive_data(await stream.receive_some()):   # b"" at EOF
            ...  # SnapshotRequest / SubscribeRequest / ControlRequest / ProtocolError
        await stream.send_all(conn.send(Snapshot(data=...)))

    A "server" receives requests, a "client" receives replies. Lines longer than `max_line` bytes
    are not buffered: the excess is discarded up to the next newline and reported once as a
    ProtocolError. Blank lines are ignored. An unterminated last line is decoded at EOF.
    """

    def __init__(self, role: Literal["server", "client"], *, max_line: int | None = None) -> None:
        if role not in ("server", "client"):
            raise ValueError(f"role must be 'server' or 'client', not {role!r}")
        self.role = role
        self.max_line = max_line if max_line is not None else (MAX_REQUEST_LINE if role == "server" else MAX_REPLY_LINE)
        self._types = _REQUEST_TYPES if role == "server" else _REPLY_TYPES
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._discarding = False  # inside an over-long line: drop until the next newline
        self.closed = False  # EOF received

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete line held (never more than max_line)."""
        return len(self._buf)

    def send(self, message: _Message) -> bytes:
        return encode(message)

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed received bytes (b"" for EOF); returns the complete messages they finish, in order."""
        events: list[Event] = []
        if self.closed:
            return events
        if not data:
            self.closed = True
            if self._buf and not self._discarding:
                self._line(bytes(self._buf), events)
            self._buf.clear()
            self._scanned = 0
            return events
        if self._discarding:
            nl = data.find(b"\n")
            if nl < 0:
                return events
            data = data[nl + 1:]
            self._discarding = False
        buf = self._buf
        buf += data
        start = 0
        while True:
            nl = buf.find(b"\n", max(start, self._scanned))
            if nl < 0:
                break
            self._scanned = 0
            self._line(bytes(buf[start:nl]), events)
            start = nl + 1
        if start:
            del buf[:start]
        self._scanned = len(buf)
        if len(buf) > self.max_line:
            events.append(ProtocolError(f"line longer than {self.max_line} bytes: discarded"))
            buf.clear()
            self._scanned = 0
            self._discarding = True
        return events

    def _line(self, line: bytes, events: list[Event]) -> None:
        if len(line) > self.max_line:
            events.append(ProtocolError(f"line longer than {self.max_line} bytes: discarded"))
            return
        if not line.strip():
            return
        events.append(decode_line(line, self._types))
