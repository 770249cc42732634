"""One client connection to the simulated Binance market-data WebSocket.

The WebSocket protocol itself (handshake, frame parsing, close handshake, ping/pong) is websockets'
sans-I/O `ServerProtocol`; this module is the Trio plumbing around it plus Binance's connection rules:
subscriptions, a ping every `ping_interval_s` with a `pong_timeout_s` deadline, at most
`max_incoming_per_s` incoming messages, serverShutdown notices, a maximum connection age, and a
bounded outgoing buffer (a consumer that falls behind is disconnected, as exchanges do).

Data frames from the fan-out are pre-encoded bytes and go straight into the outgoing buffer; only
control frames (ping, pong, close) go through the protocol object. A single writer task owns the
socket, so frames are never interleaved mid-write.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import msgspec
import trio
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from ingestd.sim.blast import FRAMES_PER_CHUNK, BlastCursor
from ingestd.sim.sliding_window import SlidingWindowCounter
from ingestd.sim.stream_names import AGG_TRADE, TRADE, TargetError, parse_stream_name, parse_ws_target
from ingestd.sim.wall_clock import wall_ms
from ingestd.sim.ws_control import handle_control_message
from ingestd.sim.ws_frames import text_frame

if TYPE_CHECKING:
    from ingestd.sim.server import Simulator

HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0  # after our close frame, how long the client gets to answer before we cut TCP
MAX_READ = 64 * 1024
MAX_INCOMING_MESSAGE = 64 * 1024
_COUNTED_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG)

log = logging.getLogger(__name__)
# websockets logs every open and close at INFO; the session's own lines say more (streams, why it ended).
_protocol_log = logging.getLogger("ingestd.sim.websockets")
_protocol_log.setLevel(logging.WARNING)


class WsSession:
    def __init__(self, sim: Simulator, stream: trio.SocketStream, session_id: int) -> None:
        self.sim = sim
        self.id = session_id
        self.streams: dict[str, None] = {}  # an ordered set, for LIST_SUBSCRIPTIONS
        self.combined = False
        self.drop_rng = random.Random(f"{sim.config.seed}/connection/{session_id}")
        self.opened_at = trio.current_time()
        self._config = sim.config
        self._counters = sim.counters
        self._stream = stream
        self._protocol = ServerProtocol(max_size=MAX_INCOMING_MESSAGE, logger=_protocol_log)
        self._end_reason = "client went away"
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._eof_queued = False
        self._writer_wakeup = trio.Event()
        self._cancel_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._incoming = SlidingWindowCounter(self._config.max_incoming_per_s)
        self._outstanding_pings: dict[bytes, float] = {}  # payload -> when sent, oldest first
        self._closing = False
        self._shutdown_announced = False
        self._blast: BlastCursor | None = None
        self._blast_started_at = 0.0
        self._blast_requested = False

    # ----- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            with self._cancel_scope:
                if not await self._handshake():
                    return
                log.info("ws#%d open: %s streams, combined=%s", self.id, len(self.streams), self.combined)
                self.sim.sessions.add(self)
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        for name in self.streams:
                            self.sim.fanout.subscribe(self, name)
                        self._maybe_start_blast()
                        nursery.start_soon(self._end_session_after, self._read_loop)
                        nursery.start_soon(self._end_session_after, self._write_loop)
                        nursery.start_soon(self._keepalive_loop)
                        nursery.start_soon(self._lifecycle_loop)
                finally:
                    self._detach()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to clean up beyond closing the socket
        finally:
            await trio.aclose_forcefully(self._stream)
            if self._nursery is not None:
                log.info("ws#%d closed: %s", self.id, self._end_reason)

    async def _end_session_after(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run the reader or the writer; when either stops, for whatever reason, the session is over."""
        try:
            await task()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away mid-read or mid-write
        finally:
            self._cancel_scope.cancel()

    def _detach(self) -> None:
        """Stop receiving market data and leave the simulator's connection set (idempotent)."""
        self.sim.sessions.discard(self)
        for name in self.streams:
            self.sim.fanout.unsubscribe(self, name)

    def abort(self, reason: str) -> None:
        """Cut the TCP connection now, without a close frame (a network failure, as seen by the client)."""
        if not self._closing:
            self._end_reason = reason
        self._closing = True
        self._detach()  # at once, so the session stops counting as open before its task unwinds
        self._cancel_scope.cancel()

    def close(self, code: int, reason: str) -> None:
        """Start the WebSocket closing handshake; the TCP connection goes when it completes or times out."""
        if self._closing:
            return
        self._closing = True
        self._end_reason = f"closed by the server ({code} {reason})"
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code, reason)
            self._pump_protocol()
        self._cancel_scope.deadline = min(self._cancel_scope.deadline, trio.current_time() + CLOSE_TIMEOUT_S)

    def announce_shutdown(self) -> None:
        """Send serverShutdown now and close the connection shutdown_grace_s later."""
        if self._shutdown_announced or self._closing or self._nursery is None:
            return
        self._shutdown_announced = True
        payload = {"e": "serverShutdown", "E": wall_ms()}
        message = {"stream": "!serverShutdown", "data": payload} if self.combined else payload
        self._send_text(msgspec.json.encode(message))
        self._counters.shutdowns += 1
        self._nursery.start_soon(self._close_after_grace)

    async def _close_after_grace(self) -> None:
        await trio.sleep(self._config.shutdown_grace_s)
        self.close(CloseCode.GOING_AWAY, "Server shutdown")

    # ----- handshake ----------------------------------------------------------------------------

    async def _handshake(self) -> bool:
        request = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            while request is None:
                data = await self._stream.receive_some(MAX_READ)
                if not data:
                    return False
                self._protocol.receive_data(data)
                for event in self._protocol.events_received():
                    if isinstance(event, Request):
                        request = event
                if request is None and self._protocol.handshake_exc is not None:
                    await self._send_pending_handshake_bytes()
                    return False
        if request is None:
            return False
        try:
            self.combined, names = parse_ws_target(
                request.path, self.sim.market.symbols, self._config.max_streams_per_connection
            )
        except TargetError as exc:
            response = self._protocol.reject(exc.status, f"{exc}\n")
        else:
            response = self._protocol.accept(request)
            self.streams = dict.fromkeys(names)
        self._protocol.send_response(response)
        accepted = response.status_code == 101
        if accepted:
            self._counters.connections_opened += 1
        else:
            self._counters.handshakes_rejected += 1
        await self._send_pending_handshake_bytes()
        return accepted

    async def _send_pending_handshake_bytes(self) -> None:
        data = b"".join(self._protocol.data_to_send())
        if data:
            await self._stream.send_all(data)

    # ----- reading ------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            data = await self._stream.receive_some(MAX_READ)
            if not data:
                self._protocol.receive_eof()
                return
            self._protocol.receive_data(data)
            for event in self._protocol.events_received():
                if isinstance(event, Frame):
                    self._on_frame(event)
            self._pump_protocol()
            if self._protocol.state is State.CLOSED:
                return

    def _on_frame(self, frame: Frame) -> None:
        if self._closing:
            return
        if frame.opcode in _COUNTED_OPCODES and not self._incoming.record(trio.current_time()):
            self._counters.rate_limit_closes += 1
            self.close(CloseCode.POLICY_VIOLATION, "Too many requests")
            return
        if frame.opcode is Opcode.PONG:
            self._on_pong(frame.data)
        elif frame.opcode is Opcode.TEXT:
            self._on_control_message(frame.data)
        # Binary frames are counted against the limit and otherwise ignored, like unknown input.

    def _on_pong(self, payload: bytes) -> None:
        if payload not in self._outstanding_pings:
            return  # unsolicited pongs are allowed but do not count as an answer
        for sent_payload in list(self._outstanding_pings):
            del self._outstanding_pings[sent_payload]
            if sent_payload == payload:
                break

    def _on_control_message(self, text: bytes) -> None:
        symbols = self.sim.market.symbols
        outcome = handle_control_message(
            text,
            subscriptions=list(self.streams),
            combined=self.combined,
            is_known_stream=lambda name: parse_stream_name(name, symbols) is not None,
            max_streams=self._config.max_streams_per_connection,
        )
        for name in outcome.unsubscribe:
            if name in self.streams:
                del self.streams[name]
                self.sim.fanout.unsubscribe(self, name)
        for name in outcome.subscribe:
            self.streams[name] = None
            self.sim.fanout.subscribe(self, name)
        if outcome.combined is not None:
            self.combined = outcome.combined
        self._send_text(msgspec.json.encode(outcome.reply))
        if outcome.subscribe:
            self._maybe_start_blast()

    # ----- writing ------------------------------------------------------------------------------

    def send_data(self, frame: bytes) -> bool:
        """Queue a market-data frame (called by the fan-out). Overflowing the buffer disconnects."""
        if self._closing or self._protocol.state is not State.OPEN:
            return False
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        if self._outbox_bytes > self._config.send_buffer_bytes:
            self._counters.slow_consumer_closes += 1
            self.abort(f"slow consumer: more than {self._config.send_buffer_bytes} bytes queued")
            return False
        self._writer_wakeup.set()
        return True

    def _send_text(self, payload: bytes) -> None:
        """Queue a reply or notice; these are small and never count towards the overflow limit."""
        if self._closing or self._protocol.state is not State.OPEN:
            return
        self._outbox.append(text_frame(payload))
        self._writer_wakeup.set()

    def _pump_protocol(self) -> None:
        """Move whatever the protocol wants to send (pongs, pings, close frames, EOF) to the outbox."""
        for data in self._protocol.data_to_send():
            if data:
                self._outbox.append(data)
            else:
                self._eof_queued = True
        self._writer_wakeup.set()

    def wake_writer(self) -> None:
        self._writer_wakeup.set()

    async def _write_loop(self) -> None:
        while True:
            if self._outbox:
                pending, self._outbox, self._outbox_bytes = self._outbox, [], 0
                await self._stream.send_all(pending[0] if len(pending) == 1 else b"".join(pending))
                continue
            if self._eof_queued:
                return  # the protocol finished the closing handshake: close TCP
            wake_at = math.inf
            if self._blast is not None and not self._closing and not self.sim.paused:
                wake_at = self._blast_due()
                if wake_at <= trio.current_time():
                    await self._send_blast_chunk()
                    continue
            with trio.move_on_at(wake_at):
                await self._writer_wakeup.wait()
            self._writer_wakeup = trio.Event()

    # ----- blast mode -----------------------------------------------------------------------------

    def _maybe_start_blast(self) -> None:
        tape = self.sim.blast_tape
        if tape is None or self._blast_requested or self._nursery is None:
            return
        wanted = {parse_stream_name(name, tape.symbols) for name in self.streams}
        for kind in (TRADE, AGG_TRADE):  # a connection on both gets the tape once, as raw trades
            symbols = {stream.symbol for stream in wanted if stream is not None and stream.kind == kind}
            if symbols:
                self._blast_requested = True
                self._nursery.start_soon(self._prepare_blast, symbols, kind)
                return

    async def _prepare_blast(self, symbols: set[str], kind: str) -> None:
        tape = self.sim.blast_tape
        assert tape is not None
        store = await tape.frames(self.combined, kind)
        rate = self._config.blast_rate
        # When paced, small chunks keep the offered rate smooth (about 2 ms of messages per chunk).
        per_chunk = FRAMES_PER_CHUNK if rate is None else int(min(FRAMES_PER_CHUNK, max(1, rate * 0.002)))
        self._blast = BlastCursor(store, tape.selection(symbols), per_chunk)
        self._blast_started_at = trio.current_time()
        self.wake_writer()

    def _blast_due(self) -> float:
        assert self._blast is not None
        rate = self._config.blast_rate
        if rate is None:
            return -math.inf
        return self._blast_started_at + self._blast.frames_sent / rate

    async def _send_blast_chunk(self) -> None:
        assert self._blast is not None
        chunk, count = self._blast.next_chunk(wall_ms())
        if self._blast.done:
            self._blast = None
        await self._stream.send_all(chunk)
        self._counters.blast_frames_sent += count

    # ----- timers -------------------------------------------------------------------------------

    async def _keepalive_loop(self) -> None:
        interval, timeout = self._config.ping_interval_s, self._config.pong_timeout_s
        next_ping = trio.current_time() + interval
        while True:
            deadline = next_ping
            if self._outstanding_pings:
                deadline = min(deadline, next(iter(self._outstanding_pings.values())) + timeout)
            await trio.sleep_until(deadline)
            now = trio.current_time()
            if self._outstanding_pings and next(iter(self._outstanding_pings.values())) + timeout <= now:
                self._counters.pong_timeouts += 1
                self.abort(f"no pong within {timeout:g} s")
                return
            if now >= next_ping:
                next_ping = now + interval
                if self._protocol.state is State.OPEN and not self._closing:
                    payload = str(wall_ms()).encode()
                    self._protocol.send_ping(payload)
                    self._outstanding_pings[payload] = now
                    self._pump_protocol()

    async def _lifecycle_loop(self) -> None:
        config = self._config
        timers: list[tuple[float, Callable[[], None]]] = []
        if config.shutdown_every_s is not None:
            timers.append((self.opened_at + config.shutdown_every_s, self.announce_shutdown))
        if config.max_connection_age_s is not None:
            timers.append((self.opened_at + config.max_connection_age_s, self._expire))
        for when, action in sorted(timers, key=lambda timer: timer[0]):
            await trio.sleep_until(when)
            action()

    def _expire(self) -> None:
        if not self._closing:
            self._counters.max_age_closes += 1
            self.close(CloseCode.GOING_AWAY, "Connection lifetime expired")
