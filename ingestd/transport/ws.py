"""WebSocket client transport: the `websockets` sans-I/O protocol driven by Trio streams.

Why this shape
--------------
Receiving market data is the hottest loop of the daemon. Measured on the 2-core target, receive +
JSON decode of Binance trade frames: trio-websocket 54k msg/s, trio + wsproto 94k, trio + the
`websockets` sans-I/O `ClientProtocol` 176k. So we drive `ClientProtocol` ourselves and hand the
caller *batches*: every complete message parsed out of one large read comes back from a single
`receive_batch()` call, so the per-await, per-cancel-scope and per-stats-update costs are paid per
read (tens of KiB, hundreds of messages under load), not per message.

There is no background task. Control frames are handled inline by whoever is reading: a server
ping is answered (the protocol queues the pong, we flush it right after the read that carried the
ping), a close frame completes the closing handshake. The connection therefore needs a reader to
stay healthy, which a feed always has; in exchange the object owns no nursery and is trivially
cancellation-safe.

Concurrency contract: one task may be in `receive_batch()` while others call `send_text()`,
`send_ping()` or `aclose()`. Writes are serialized by a lock, and every frame is generated under
that lock, so a send that is cancelled before it writes leaves nothing queued behind it.

Cancellation contract:
* cancelling `connect_ws()` closes whatever socket it had opened;
* cancelling `receive_batch()` loses no data: it is either still waiting for bytes (nothing was
  consumed) or, rarely, it is writing a pong, which completes first (see next point);
* once a frame has been generated its write is shielded from cancellation, for at most
  `WRITE_TIMEOUT`: an interrupted `send_all` may leave part of a frame on the wire, after which
  the byte stream can't carry another frame. So a cancelled `send_text()` either sent nothing
  (cancelled while rate-limited or waiting for the lock) or sent the whole message, and a write
  that stalls past `WRITE_TIMEOUT` closes the connection instead of leaving it corrupt.
The socket itself is closed by `aclose()` (or `async with`), and also as soon as the connection is
found dead (close frame, EOF, protocol error, idle timeout), even if the owner never calls `aclose()`.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import Sequence
from typing import NoReturn

import trio
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidState, InvalidStatus, InvalidURI
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import WebSocketURI, parse_uri

from ingestd import __version__
from ingestd.stats import ConnectionStats, now_us

__all__ = ["ConnectionClosed", "HandshakeError", "WsConnection", "connect_ws"]

# One read asks the kernel for up to this much. Under load the socket buffer fills while we decode
# the previous batch, so a big read drains it in one syscall and one trip through the parser
# (~350 Binance trades). Measured: 64 KiB beat 128 KiB and 256 KiB by 2-5 % (cache-friendlier).
READ_SIZE = 64 * 1024

# How long we wait for the peer's half of a closing handshake (close frame, then TCP close) before
# dropping the TCP connection ourselves. RFC 6455 lets the client wait "a reasonable time".
CLOSE_TIMEOUT = 1.0

# Writes are shielded from cancellation for at most this long (see _write). Our writes are tiny
# (pongs, subscriptions), so one blocks only when the kernel send buffer is full, i.e. the peer
# has stopped reading and acking: a connection in that state is dead for our purposes.
WRITE_TIMEOUT = 2.0

USER_AGENT = f"ingestd/{__version__}"

# Module-level aliases: `is` against a global is the cheapest opcode test in the hot loop.
_TEXT = Opcode.TEXT
_BINARY = Opcode.BINARY
_CONT = Opcode.CONT
_PING = Opcode.PING
_OPEN = State.OPEN
_CLOSED = State.CLOSED

_ABNORMAL = 1006  # RFC 6455 7.1.5: "closed without a close frame"; never sent on the wire.


class ConnectionClosed(Exception):
    """The connection is gone: clean close, abrupt EOF, protocol error, idle timeout, send failure.

    `code` is the WebSocket close code (1006 when no close frame was exchanged), `reason` a
    human-readable explanation. Raised by every `WsConnection` operation once the connection is gone.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    def __str__(self) -> str:
        return f"WebSocket connection closed: {self.code} {self.reason}".rstrip()


class HandshakeError(ConnectionClosed):
    """`connect_ws()` failed: DNS, TCP, TLS, timeout, or the server refused the upgrade.

    A subclass of ConnectionClosed (code 1006) so a reconnect loop can catch one type. `status` is
    the HTTP status when the server answered with something other than 101 (Binance: 429 = slow
    down, 418 = IP banned), else None. The underlying error is chained as `__cause__`.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(_ABNORMAL, reason)
        self.status = status

    def __str__(self) -> str:
        return f"WebSocket handshake failed: {self.reason}"


_default_context: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    # Loading the system CA bundle costs milliseconds; do it once, not on every reconnect.
    global _default_context
    if _default_context is None:
        _default_context = ssl.create_default_context()
    return _default_context


async def connect_ws(
    url: str,
    *,
    stats: ConnectionStats | None = None,
    open_timeout: float = 10.0,
    ssl_context: ssl.SSLContext | None = None,
    max_message_size: int = 16 * 2**20,
    max_outgoing_per_s: float = 5.0,
    idle_timeout: float | None = 90.0,
    extra_headers: list[tuple[str, str]] | None = None,
) -> WsConnection:
    """Open a WebSocket connection to `url` (ws:// or wss://) and complete the opening handshake.

    Raises ValueError for a malformed URL and HandshakeError for anything else that goes wrong,
    including `open_timeout` expiring (it bounds DNS + TCP + TLS + HTTP upgrade together).
    No compression extension is offered: permessage-deflate would cost more CPU than it saves on
    loopback-fast links, and the venues we use don't need it.
    """
    try:
        wsuri = parse_uri(url)
    except InvalidURI as exc:
        raise ValueError(str(exc)) from None
    if stats is not None:
        stats.url = url
        stats.state = "connecting"
    try:
        with trio.fail_after(open_timeout):
            conn = await _open(
                url, wsuri, ssl_context, max_message_size, extra_headers or (), stats,
                max_outgoing_per_s, idle_timeout,
            )
    except HandshakeError as exc:
        _record_failure(stats, exc)
        raise
    except trio.TooSlowError as exc:
        err = HandshakeError(f"opening handshake timed out after {open_timeout:g} s")
        _record_failure(stats, err)
        raise err from exc
    except (OSError, trio.BrokenResourceError) as exc:
        # OSError: DNS or TCP (trio raises OSError for every failed address). BrokenResourceError:
        # TLS failures (certificate, protocol) or the peer hanging up mid-handshake.
        cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) and exc.__cause__ else exc
        err = HandshakeError(f"{type(cause).__name__}: {cause}")
        _record_failure(stats, err)
        raise err from exc
    if stats is not None:
        stats.state = "up"
        stats.connected_since_us = now_us()
        stats.connects += 1
    return conn


def _record_failure(stats: ConnectionStats | None, exc: ConnectionClosed) -> None:
    if stats is not None:
        stats.state = "closed"
        stats.last_error = exc.reason


async def _open(
    url: str,
    wsuri: WebSocketURI,
    ssl_context: ssl.SSLContext | None,
    max_message_size: int | None,
    extra_headers: Sequence[tuple[str, str]],
    stats: ConnectionStats | None,
    max_outgoing_per_s: float,
    idle_timeout: float | None,
) -> WsConnection:
    stream: trio.abc.Stream = await trio.open_tcp_stream(wsuri.host, wsuri.port)
    try:
        if wsuri.secure:
            # https_compatible: the WebSocket closing handshake already says "this is the end", so
            # like HTTPS we neither send nor require TLS close_notify (many servers just drop TCP).
            stream = trio.SSLStream(
                stream,
                ssl_context or _default_ssl_context(),
                server_hostname=wsuri.host,
                https_compatible=True,
            )
            # Explicitly, so certificate/hostname errors surface here and not on the first read.
            await stream.do_handshake()

        proto = ClientProtocol(wsuri, max_size=max_message_size)
        # websockets logs every frame when its logger is at DEBUG (e.g. a daemon run with
        # --debug): that would halve throughput and flood the journal. Frames are never logged.
        proto.debug = False
        request = proto.connect()
        headers = request.headers
        if not any(k.lower() == "user-agent" for k, _ in extra_headers):
            headers["User-Agent"] = USER_AGENT
        for key, value in extra_headers:
            headers[key] = value
        proto.send_request(request)
        await stream.send_all(b"".join(proto.data_to_send()))

        while True:
            data = await stream.receive_some(READ_SIZE)
            if data:
                proto.receive_data(data)
            else:
                proto.receive_eof()
            events = proto.events_received()
            if events or not data:
                break

        if proto.state is not _OPEN:
            cause = proto.handshake_exc
            status = None
            if events and isinstance(events[0], Response):
                status = events[0].status_code
            if isinstance(cause, InvalidStatus):
                reason = f"server rejected WebSocket upgrade: HTTP {status}"
            elif cause is not None:
                reason = f"invalid handshake: {cause}"
            else:
                reason = "connection closed during opening handshake"
            raise HandshakeError(reason, status) from cause

        conn = WsConnection(url, stream, proto, stats, max_outgoing_per_s, idle_timeout)
        if stats is not None:
            stats.bytes += len(data)  # wire bytes, like the receive loop (incl. the 101 response)
        # Frames the server sent right behind its 101 response arrived in the same read: keep
        # them (and answer any ping among them) rather than dropping the first messages.
        if len(events) > 1:
            try:
                conn._absorb(events[1:], conn._ready)
            except UnicodeDecodeError as exc:
                proto.fail(1007, f"invalid UTF-8 in text message at position {exc.start}")
        writes = proto.data_to_send()
        if writes:
            await stream.send_all(b"".join(writes))
        return conn
    except BaseException:
        # Covers cancellation and open_timeout too: never leave the socket open behind us.
        await trio.aclose_forcefully(stream)
        raise


class WsConnection(trio.abc.AsyncResource):
    """An open client WebSocket connection. Create with `connect_ws()`; close with `aclose()` or
    `async with`."""

    def __init__(
        self,
        url: str,
        stream: trio.abc.Stream,
        proto: ClientProtocol,
        stats: ConnectionStats | None,
        max_outgoing_per_s: float,
        idle_timeout: float | None,
    ) -> None:
        self.url = url
        self._stream = stream
        self._proto = proto
        self._stats = stats
        self._idle_timeout = math.inf if idle_timeout is None else idle_timeout
        # Token bucket of depth 1 == a minimum spacing between application messages. `_next_slot`
        # is the earliest trio time the next one may leave.
        self._interval = 1.0 / max_outgoing_per_s if max_outgoing_per_s and max_outgoing_per_s > 0 else 0.0
        self._next_slot = -math.inf
        self._send_lock = trio.Lock()
        self._receiving = False
        # Messages parsed but not yet handed out (frames behind the handshake response).
        self._ready: list[str | bytes] = []
        # Fragmented message being reassembled.
        self._frags: list = []
        self._frag_text = False
        # Set once the connection is gone; every later operation raises a copy of it.
        self._exc: ConnectionClosed | None = None
        self._closing = False  # aclose() was called
        self._close_deadline: float | None = None  # when we stop waiting for the peer's close
        self._gone = trio.Event()  # set when the socket has been closed

    @property
    def closed(self) -> bool:
        """True once the connection can no longer send application messages (a close frame was
        sent or received, or the connection failed). Buffered messages may still be received."""
        return self._exc is not None or self._proto.state is not _OPEN

    # -- receiving ------------------------------------------------------------------------------

    async def receive_batch(self) -> list[str | bytes]:
        """Block until at least one complete data message is available; return ALL complete
        messages parsed from the bytes read so far (text as str, binary as bytes), in order.

        Pings are answered with a pong echoing their payload right after the read that carried
        them; a close frame completes the closing handshake and raises ConnectionClosed (after
        any messages that preceded it have been returned). No bytes at all for `idle_timeout`
        seconds -> ConnectionClosed. Only one task may receive at a time.
        """
        if self._ready:
            await trio.lowlevel.checkpoint()  # before taking them, so a cancel here loses nothing
            out, self._ready = self._ready, []
            if self._stats is not None:
                self._stats.messages += len(out)
                self._stats.last_message_us = now_us()
            return out
        if self._exc is not None:
            await trio.lowlevel.checkpoint()
            self._raise_closed()
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this connection")
        self._receiving = True
        try:
            return await self._receive()
        finally:
            self._receiving = False

    async def _receive(self) -> list[str | bytes]:
        proto = self._proto
        receive_some = self._stream.receive_some
        stats = self._stats
        out: list[str | bytes] = []
        while True:
            if proto.state is _OPEN:
                deadline = trio.current_time() + self._idle_timeout
            elif proto.state is _CLOSED:
                await self._finish(self._closed_exc("connection closed"))
                self._raise_closed()
            else:
                # CLOSING: a close frame went out (ours, or our echo of the server's). The server
                # is due to close TCP now; give it CLOSE_TIMEOUT, not the idle timeout.
                if self._close_deadline is None:
                    self._close_deadline = trio.current_time() + CLOSE_TIMEOUT
                deadline = self._close_deadline
            try:
                with trio.move_on_at(deadline) as scope:
                    data = await receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                # Reset, or our own aclose() closed the stream under us (then _exc is already set).
                await self._finish(ConnectionClosed(_ABNORMAL, f"connection lost: {exc!r}"))
                self._raise_closed()
            if scope.cancelled_caught:
                if proto.state is _OPEN:
                    reason = f"idle timeout: no data for {self._idle_timeout:g} s"
                    await self._finish(ConnectionClosed(_ABNORMAL, reason))
                else:
                    await self._finish(self._closed_exc("peer did not close TCP after the closing handshake"))
                self._raise_closed()

            if data:
                proto.receive_data(data)
                if stats is not None:
                    stats.bytes += len(data)
            else:
                proto.receive_eof()  # the protocol moves to CLOSED; handled at the loop top
            events = proto.events_received()
            writes = proto.data_to_send()
            if writes:
                # A pong, or the echo of a close frame. Send before handing data to the caller:
                # the caller may take long to process a big batch and the peer is timing us.
                await self._flush_control(writes)
            if events:
                try:
                    self._absorb(events, out)
                except UnicodeDecodeError as exc:
                    proto.fail(1007, f"invalid UTF-8 in text message at position {exc.start}")
                    await self._flush_control(proto.data_to_send())
            if out:
                if stats is not None:
                    stats.messages += len(out)
                    stats.last_message_us = now_us()
                return out

    def _absorb(self, events: Sequence, out: list) -> None:
        """Append the data messages among `events` (websockets Frames) to `out`.

        This is the per-message path: one opcode test and one decode/copy per frame. Text is
        decoded (strict UTF-8, which RFC 6455 requires of text messages); binary is copied out
        of the parser's bytearray so callers get immutable bytes.
        """
        append = out.append
        for frame in events:
            op = frame.opcode
            if op is _TEXT:
                if frame.fin:
                    append(frame.data.decode())
                else:
                    self._frag_text = True
                    self._frags = [frame.data]
            elif op is _BINARY:
                if frame.fin:
                    append(bytes(frame.data))
                else:
                    self._frag_text = False
                    self._frags = [frame.data]
            elif op is _CONT:
                # The protocol has already checked continuation order and the total size.
                self._frags.append(frame.data)
                if frame.fin:
                    payload = b"".join(self._frags)
                    self._frags = []
                    append(payload.decode() if self._frag_text else payload)
            elif op is _PING:
                # The protocol queued the pong; it leaves outside the limiter but uses a slot.
                self._charge_slot()
            # PONG: nothing to do. CLOSE: the protocol's state tells the receive loop.

    async def _flush_control(self, writes: list[bytes]) -> None:
        # The frames are already out of the protocol, so they must be written now: waiting for the
        # lock is shielded too (a sender holding it is itself bounded by WRITE_TIMEOUT).
        data = b"".join(writes)
        if not data:  # only the protocol's "half-close now" marker; we close the socket instead
            return
        deadline = trio.current_time() + WRITE_TIMEOUT
        with trio.CancelScope(shield=True, deadline=deadline) as scope:
            async with self._send_lock:
                try:
                    await self._write(data, deadline)
                except ConnectionClosed:
                    return  # recorded in _exc; the receive loop reports it after the data
        if scope.cancelled_caught and self._exc is None:
            await self._finish(ConnectionClosed(_ABNORMAL, "send lock stuck: peer stopped reading"))

    # -- sending --------------------------------------------------------------------------------

    async def send_text(self, text: str) -> None:
        """Send one text message, waiting as needed to keep under `max_outgoing_per_s`.

        Raises ConnectionClosed if the connection is gone (or closing). Concurrent senders are
        served in call order. A send cancelled while waiting sends nothing (its slot is forfeit).
        """
        await self._send_app(self._proto.send_text, text.encode())

    async def send_ping(self, payload: bytes = b"") -> None:
        """Send a ping (<= 125 bytes payload), rate-limited like send_text. The pong is consumed
        inside receive_batch (it proves liveness there by resetting the idle timer)."""
        if len(payload) > 125:
            raise ValueError("ping payload must be at most 125 bytes")
        await self._send_app(self._proto.send_ping, payload)

    async def _send_app(self, make_frame, payload: bytes) -> None:
        if self._exc is not None:
            await trio.lowlevel.checkpoint()
            self._raise_closed()
        await self._take_slot()
        async with self._send_lock:
            # Generate the frame only now, under the lock: if we were cancelled above, nothing
            # was queued in the protocol to leak out with someone else's write later.
            if self._exc is not None:
                self._raise_closed()
            try:
                make_frame(payload)
            except InvalidState:
                raise self._closed_exc("connection is closing") from None
            # From here on the frame exists, so it goes out whole or the connection dies.
            await self._write(b"".join(self._proto.data_to_send()), trio.current_time() + WRITE_TIMEOUT)

    async def _take_slot(self) -> None:
        # Reserve the next departure time synchronously (so concurrent senders queue FIFO), then
        # sleep until it. Burst 1: after a quiet period a single message leaves immediately.
        now = trio.current_time()
        slot = self._next_slot if self._next_slot > now else now
        self._next_slot = slot + self._interval
        if slot > now:
            await trio.sleep_until(slot)
        else:
            await trio.lowlevel.checkpoint()

    def _charge_slot(self) -> None:
        # A pong counts toward the venue's limit but must not wait: push the schedule back.
        now = trio.current_time()
        self._next_slot = (self._next_slot if self._next_slot > now else now) + self._interval

    async def _write(self, data: bytes, deadline: float) -> None:
        """send_all under the send lock, shielded from outside cancellation until `deadline`.

        An interrupted send_all may leave part of a frame on the wire, and trio then considers the
        stream broken; shielding means outside cancellation can't cause that. If the write fails or
        misses the deadline, the connection is closed and ConnectionClosed raised.
        """
        with trio.CancelScope(shield=True, deadline=deadline):
            try:
                await self._stream.send_all(data)
                return
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                await self._finish(ConnectionClosed(_ABNORMAL, f"connection lost while sending: {exc!r}"))
                raise self._copy_exc() from exc
            except trio.Cancelled:
                # Only our own deadline can get in here.
                await self._finish(ConnectionClosed(_ABNORMAL, "write stalled: peer stopped reading"))
                raise
        raise self._copy_exc()

    # -- closing --------------------------------------------------------------------------------

    async def aclose(self, code: int = 1000, reason: str = "") -> None:
        """Start the closing handshake, wait up to 1 s for the server's close and TCP close, then
        close the socket. Idempotent; never raises (except trio.Cancelled if the caller is
        cancelled, and then only after the socket is closed)."""
        if self._closing:
            # Repeated or concurrent call: just make sure the socket is closed.
            await self._finish(self._closed_exc("closed locally"))
            return
        self._closing = True
        try:
            with trio.move_on_after(CLOSE_TIMEOUT) as scope:
                async with self._send_lock:
                    if self._exc is None and self._proto.state is _OPEN:
                        self._proto.send_close(code, reason)
                        await self._write(b"".join(self._proto.data_to_send()), scope.deadline)
                if self._receiving:
                    # Another task is reading: it will see the server's close and the EOF.
                    await self._gone.wait()
                else:
                    await self._drain_until_closed()
        except Exception:
            pass  # best effort: a bad code/reason, a reset, ... the socket gets closed below anyway
        finally:
            await self._finish(self._closed_exc("closed locally"))

    async def _drain_until_closed(self) -> None:
        # Read (discarding data messages) until the server closes TCP, so the close is clean.
        proto = self._proto
        self._receiving = True
        try:
            while self._exc is None and proto.state is not _CLOSED:
                data = await self._stream.receive_some(READ_SIZE)
                if data:
                    proto.receive_data(data)
                else:
                    proto.receive_eof()
                proto.events_received()
        finally:
            self._receiving = False

    async def _finish(self, exc: ConnectionClosed) -> None:
        """Record why the connection ended (first reason wins) and close the socket."""
        if self._exc is None:
            self._exc = exc
            stats = self._stats
            if stats is not None:
                stats.state = "closed"
                if not self._closing:
                    stats.last_error = str(exc)
        self._gone.set()
        # Closes the socket synchronously, then checkpoints (which may raise Cancelled, fine).
        await trio.aclose_forcefully(self._stream)

    def _closed_exc(self, fallback: str) -> ConnectionClosed:
        """The ConnectionClosed that the protocol's state describes."""
        proto = self._proto
        perr = proto.parser_exc
        if perr is not None and not isinstance(perr, EOFError):
            # We failed the connection: protocol error (1002), too big (1009), bad UTF-8 (1007).
            code = proto.close_sent.code if proto.close_sent is not None else _ABNORMAL
            return ConnectionClosed(code, f"{type(perr).__name__}: {perr}")
        if proto.close_rcvd is not None:
            return ConnectionClosed(proto.close_rcvd.code, proto.close_rcvd.reason)
        if proto.close_sent is not None:
            return ConnectionClosed(proto.close_sent.code, proto.close_sent.reason or fallback)
        if isinstance(perr, EOFError):
            return ConnectionClosed(_ABNORMAL, "connection closed by peer without a close frame")
        return ConnectionClosed(_ABNORMAL, fallback)

    def _copy_exc(self) -> ConnectionClosed:
        # A fresh instance per raise: re-raising one stored instance would grow its traceback.
        exc = self._exc
        assert exc is not None
        return ConnectionClosed(exc.code, exc.reason)

    def _raise_closed(self) -> NoReturn:
        raise self._copy_exc()

