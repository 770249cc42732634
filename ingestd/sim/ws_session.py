"""One client connection to the simulated Binance market-data WebSocket.

`WsServerSession` (ws_base) does the WebSocket plumbing; this module adds Binance's connection rules:
subscriptions, a ping every `ping_interval_s` with a `pong_timeout_s` deadline, at most
`max_incoming_per_s` incoming messages, serverShutdown notices, a maximum connection age, and a
bounded outgoing buffer (a consumer that falls behind is disconnected, as exchanges do).

Data frames from the fan-out are pre-encoded bytes and go straight into the outgoing buffer; only
control frames (ping, pong, close) go through the protocol object. Blast mode writes runs of
pre-built frames from the tape past the buffer, at its own pace, from the same writer task.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec
import trio
from websockets.frames import CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from ingestd.sim.blast import FRAMES_PER_CHUNK, BlastCursor
from ingestd.sim.sliding_window import SlidingWindowCounter
from ingestd.sim.stream_names import AGG_TRADE, TRADE, TargetError, parse_stream_name, parse_ws_target
from ingestd.sim.wall_clock import wall_ms
from ingestd.sim.ws_base import WsServerSession
from ingestd.sim.ws_control import handle_control_message
from ingestd.sim.ws_frames import text_frame

if TYPE_CHECKING:
    from ingestd.sim.server import Simulator

MAX_INCOMING_MESSAGE = 64 * 1024
_COUNTED_OPCODES = (Opcode.TEXT, Opcode.BINARY, Opcode.PING, Opcode.PONG)

log = logging.getLogger(__name__)
# websockets logs every open and close at INFO; the session's own lines say more (streams, why it ended).
_protocol_log = logging.getLogger("ingestd.sim.websockets")
_protocol_log.setLevel(logging.WARNING)


class WsSession(WsServerSession):
    def __init__(self, sim: Simulator, stream: trio.SocketStream, session_id: int) -> None:
        super().__init__(
            stream, session_id, max_message_bytes=MAX_INCOMING_MESSAGE, log=log, protocol_log=_protocol_log
        )
        self.sim = sim
        self.streams: dict[str, None] = {}  # an ordered set, for LIST_SUBSCRIPTIONS
        self.combined = False
        self.drop_rng = random.Random(f"{sim.config.seed}/connection/{session_id}")
        self.opened_at = trio.current_time()
        self._config = sim.config
        self._counters = sim.counters
        self._incoming = SlidingWindowCounter(self._config.max_incoming_per_s)
        self._outstanding_pings: dict[bytes, float] = {}  # payload -> when sent, oldest first
        self._shutdown_announced = False
        self._blast: BlastCursor | None = None
        self._blast_started_at = 0.0
        self._blast_requested = False

    # ----- lifecycle ----------------------------------------------------------------------------

    def _answer_upgrade(self, request: Request) -> Response:
        try:
            self.combined, names = parse_ws_target(
                request.path, self.sim.market.symbols, self._config.max_streams_per_connection
            )
        except TargetError as exc:
            response = self._protocol.reject(exc.status, f"{exc}\n")
        else:
            response = self._protocol.accept(request)
            self.streams = dict.fromkeys(names)
        if response.status_code == 101:
            self._counters.connections_opened += 1
        else:
            self._counters.handshakes_rejected += 1
        return response

    def _on_open(self, nursery: trio.Nursery) -> None:
        log.info("ws#%d open: %s streams, combined=%s", self.id, len(self.streams), self.combined)
        self.sim.sessions.add(self)
        for name in self.streams:
            self.sim.fanout.subscribe(self, name)
        self._maybe_start_blast()
        nursery.start_soon(self._keepalive_loop)
        nursery.start_soon(self._lifecycle_loop)

    def _detach(self) -> None:
        self.sim.sessions.discard(self)
        for name in self.streams:
            self.sim.fanout.unsubscribe(self, name)

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

    # ----- reading ------------------------------------------------------------------------------

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
        if not self._queue(frame):
            return False
        if self._outbox_bytes > self._config.send_buffer_bytes:
            self._counters.slow_consumer_closes += 1
            self.abort(f"slow consumer: more than {self._config.send_buffer_bytes} bytes queued")
            return False
        return True

    def _send_text(self, payload: bytes) -> None:
        """Queue a reply or notice; these are small and never count towards the overflow limit."""
        self._queue(text_frame(payload), buffer_charge=0)

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

    def _paced_send_due_at(self) -> float:
        # A paused simulator sends nothing, blast included; resuming wakes the writer.
        if self._blast is None or self._closing or self.sim.paused:
            return math.inf
        rate = self._config.blast_rate
        if rate is None:
            return -math.inf
        return self._blast_started_at + self._blast.frames_sent / rate

    async def _paced_send(self) -> None:
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
