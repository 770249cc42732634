"""The simulated CLOB market channel (`/ws/market`): one session per WebSocket connection.

`WsServerSession` (ws_base) does the WebSocket part; this module adds the channel's
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
from websockets.http11 import Request, Response

from ingestd.sim.ws_base import WsServerSession
from ingestd.sim.ws_frames import text_frame

if TYPE_CHECKING:
    from ingestd.sim.polymarket.server import PolySim

PATH = "/ws/market"
MAX_INCOMING_MESSAGE = 256 * 1024
SEND_BUFFER_BYTES = 16 * 2**20  # a consumer this far behind is cut off, as venues do

log = logging.getLogger("ingestd.sim.polymarket")
_protocol_log = logging.getLogger("ingestd.sim.polymarket.websockets")
_protocol_log.setLevel(logging.WARNING)


class Session(WsServerSession):
    def __init__(self, sim: PolySim, stream: trio.abc.Stream, session_id: int) -> None:
        super().__init__(
            stream, session_id, max_message_bytes=MAX_INCOMING_MESSAGE, log=log, protocol_log=_protocol_log
        )
        self.sim = sim
        self.assets: set[str] = set()
        self._subscribed_once = False

    def _answer_upgrade(self, request: Request) -> Response:
        if request.path.split("?")[0] != PATH:
            response = self._protocol.reject(404, f"unknown path {request.path}; the market channel is {PATH}\n")
        else:
            response = self._protocol.accept(request)
        if response.status_code == 101:
            self.sim.counters["connections_opened"] += 1
        return response

    def _on_open(self, nursery: trio.Nursery) -> None:
        self.sim.sessions.add(self)
        if self.sim.config.ping_timeout_s:
            nursery.start_soon(self._cut_when_ping_overdue)

    def _detach(self) -> None:
        self.sim.sessions.discard(self)

    async def _cut_when_ping_overdue(self) -> None:
        timeout = self.sim.config.ping_timeout_s
        await self._wait_for_silence(timeout)
        self.sim.counters["ping_timeouts"] += 1
        self.abort(f"no PING for {timeout:g} s")

    # --- reading ---------------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT:
            self._on_text(frame.data)

    def _on_text(self, data: bytes) -> None:
        if data == b"PING":
            self._client_heard_at = trio.current_time()
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
        # The channel has always charged its buffer by payload, not whole frame (a few bytes apart).
        if not self._queue(text_frame(payload), buffer_charge=len(payload)):
            return
        if self._outbox_bytes > SEND_BUFFER_BYTES:
            self.abort("slow consumer")


async def serve_market_channel(sim: PolySim, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    ids = iter(range(1, 1 << 62))

    async def handle(stream: trio.abc.Stream) -> None:
        try:
            await Session(sim, stream, next(ids)).run()
        except Exception:
            log.exception("market channel connection crashed")

    await trio.serve_tcp(handle, sim.config.ws_port, host=sim.config.host, task_status=task_status)
