"""The simulated CLOB market channel (`/ws/market`): one session per WebSocket connection.

The WebSocket protocol is websockets' sans-I/O `ServerProtocol`; this module adds the channel's
rules: the first message `{"assets_ids":[...],"type":"market"}` subscribes and is answered with a
book dump (a JSON array of book objects, or one frame per book with --book-dump objects), later
`{"assets_ids":[...],"operation":"subscribe"|"unsubscribe"}` change the subscription (a subscribe
sends those books again), text `PING` is answered `PONG`, and a client that sends no PING for
`ping_timeout_s` is cut off. Events go only to sessions subscribed to their token.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import msgspec
import trio
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from ingestd.sim.ws_frames import text_frame

if TYPE_CHECKING:
    from ingestd.sim.polymarket.server import PolySim

PATH = "/ws/market"
HANDSHAKE_TIMEOUT_S = 10.0
MAX_READ = 64 * 1024
MAX_INCOMING_MESSAGE = 256 * 1024
SEND_BUFFER_BYTES = 16 * 2**20  # a consumer this far behind is cut off, as venues do

log = logging.getLogger("ingestd.sim.polymarket")
_protocol_log = logging.getLogger("ingestd.sim.polymarket.websockets")
_protocol_log.setLevel(logging.WARNING)


class Session:
    def __init__(self, sim: PolySim, stream: trio.abc.Stream, session_id: int) -> None:
        self.sim = sim
        self.id = session_id
        self.assets: set[str] = set()
        self._stream = stream
        self._protocol = ServerProtocol(max_size=MAX_INCOMING_MESSAGE, logger=_protocol_log)
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._eof = False
        self._wakeup = trio.Event()
        self._scope = trio.CancelScope()
        self._last_ping = trio.current_time()
        self._subscribed_once = False
        self.end_reason = "client went away"

    async def run(self) -> None:
        try:
            with self._scope:
                if not await self._handshake():
                    return
                self.sim.sessions.add(self)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._ends_session, self._read_loop)
                        nursery.start_soon(self._ends_session, self._write_loop)
                        if self.sim.config.ping_timeout_s:
                            nursery.start_soon(self._ping_watch)
                finally:
                    self.sim.sessions.discard(self)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self._stream)
            log.info("ws#%d closed: %s", self.id, self.end_reason)

    async def _ends_session(self, task) -> None:
        try:
            await task()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._scope.cancel()

    def abort(self, reason: str) -> None:
        """Cut TCP without a close frame: a network failure, as the client sees it."""
        self.end_reason = reason
        self.sim.sessions.discard(self)
        self._scope.cancel()

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
                    await self._flush_handshake()
                    return False
        if request is None:
            return False
        if request.path.split("?")[0] != PATH:
            response = self._protocol.reject(404, f"unknown path {request.path}; the market channel is {PATH}\n")
        else:
            response = self._protocol.accept(request)
        self._protocol.send_response(response)
        await self._flush_handshake()
        if response.status_code == 101:
            self.sim.counters["connections_opened"] += 1
            return True
        return False

    async def _flush_handshake(self) -> None:
        data = b"".join(self._protocol.data_to_send())
        if data:
            await self._stream.send_all(data)

    # --- reading ---------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            data = await self._stream.receive_some(MAX_READ)
            if not data:
                self._protocol.receive_eof()
                return
            self._protocol.receive_data(data)
            for event in self._protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                    self._on_text(event.data)
            self._pump()
            if self._protocol.state is State.CLOSED:
                return

    def _on_text(self, data: bytes) -> None:
        if data == b"PING":
            self._last_ping = trio.current_time()
            self.sim.counters["pings"] += 1
            self.send_text(b"PONG")
            return
        try:
            message = msgspec.json.decode(data)
        except msgspec.DecodeError:
            message = None
        ids = message.get("assets_ids") if isinstance(message, dict) else None
        if not isinstance(ids, list) or not all(isinstance(a, str) for a in ids):
            self.send_text(b"INVALID OPERATION")
            return
        operation = message.get("operation")
        channel = str(message.get("type", "")).lower()
        if operation is None and channel == "market" and not self._subscribed_once:
            self._subscribe(ids)
        elif operation == "subscribe":
            self._subscribe(ids)
        elif operation == "unsubscribe":
            self.assets.difference_update(ids)
            self.sim.counters["unsubscribes"] += 1
        else:
            self.send_text(b"INVALID OPERATION")

    def _subscribe(self, ids: list[str]) -> None:
        self._subscribed_once = True
        known = [a for a in ids if a in self.sim.market.outcomes]
        self.assets.update(known)
        self.sim.counters["subscribes"] += 1
        books = [self.sim.book_message(a) for a in known]
        for book in books:
            self.sim.note_subscribed(book["asset_id"], int(book["timestamp"]))
        if not books:
            return
        if self.sim.config.book_dump == "array":
            self.send_text(msgspec.json.encode(books))
        else:
            for book in books:
                self.send_text(msgspec.json.encode(book))

    # --- writing ---------------------------------------------------------------------------------

    def send_text(self, payload: bytes) -> None:
        if self._protocol.state is not State.OPEN:
            return
        self._outbox.append(text_frame(payload))
        self._outbox_bytes += len(payload)
        if self._outbox_bytes > SEND_BUFFER_BYTES:
            self.abort("slow consumer")
            return
        self._wakeup.set()

    def _pump(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                self._outbox.append(data)
            else:
                self._eof = True
        self._wakeup.set()

    async def _write_loop(self) -> None:
        while True:
            if self._outbox:
                pending, self._outbox, self._outbox_bytes = self._outbox, [], 0
                await self._stream.send_all(b"".join(pending))
                continue
            if self._eof:
                return
            await self._wakeup.wait()
            self._wakeup = trio.Event()

    async def _ping_watch(self) -> None:
        timeout = self.sim.config.ping_timeout_s
        while True:
            await trio.sleep_until(self._last_ping + timeout)
            if trio.current_time() >= self._last_ping + timeout:
                self.sim.counters["ping_timeouts"] += 1
                self.abort(f"no PING for {timeout:g} s")
                return


async def serve_market_channel(sim: PolySim, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    ids = iter(range(1, 1 << 62))

    async def handle(stream: trio.abc.Stream) -> None:
        try:
            await Session(sim, stream, next(ids)).run()
        except Exception:
            log.exception("market channel connection crashed")

    await trio.serve_tcp(handle, sim.config.ws_port, host=sim.config.host, task_status=task_status)
