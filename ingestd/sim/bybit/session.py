"""One client connection to the simulated Bybit public linear WebSocket.

`WsServerSession` (ws_base) does the WebSocket part; this module adds Bybit's rules:
- requests are JSON text: `{"op":"subscribe"|"unsubscribe"|"ping","args":[...],"req_id":...}`, each
  answered `{"success":..,"ret_msg":..,"conn_id":..,"req_id":..,"op":..}` (a ping: ret_msg "pong");
- a subscribe is refused whole when a topic is unknown or already subscribed, when it has more than
  `max_args_per_request` args, or when it would take the connection's args past `max_args_chars`;
- `tickers.*` answers a subscribe with a snapshot, then deltas follow;
- a connection that sends nothing for `idle_timeout_s` is cut (a client must ping).

Faults: with probability `malformed_rate` a data frame is replaced, either by truncated JSON (no
topic can be read: every delta chain on the connection is broken) or by a frame naming its topic
with an invalid value. The real frame is lost either way, as a corrupting hop would lose it.
"""

from __future__ import annotations

import logging
import math
import random
from typing import TYPE_CHECKING

import msgspec
import trio
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from ingestd.sim.ws_base import WsServerSession
from ingestd.sim.ws_frames import text_frame

if TYPE_CHECKING:
    from ingestd.sim.bybit.server import BybitSim

PATH = "/v5/public/linear"
MAX_INCOMING_MESSAGE = 1 << 20
SEND_BUFFER_BYTES = 8 << 20  # a client this far behind is cut off, as venues do

log = logging.getLogger(__name__)
_protocol_log = logging.getLogger("ingestd.sim.bybit.websockets")
_protocol_log.setLevel(logging.WARNING)
_encode = msgspec.json.encode


class BybitSession(WsServerSession):
    def __init__(self, sim: BybitSim, stream: trio.SocketStream, session_id: int) -> None:
        super().__init__(
            stream, session_id, max_message_bytes=MAX_INCOMING_MESSAGE, log=log, protocol_log=_protocol_log
        )
        self.sim = sim
        self.conn_id = f"sim-{session_id:06d}"
        self.topics: dict[str, None] = {}
        self._rng = random.Random(f"{sim.options.seed}/session/{session_id}")

    def _answer_upgrade(self, request: Request) -> Response:
        if request.path.split("?")[0] != PATH:
            response = self._protocol.reject(404, f"no such endpoint {request.path}\n")
        else:
            response = self._protocol.accept(request)
        self.sim.counters["connections_opened" if response.status_code == 101 else "handshakes_rejected"] += 1
        return response

    def _on_open(self, nursery: trio.Nursery) -> None:
        self.sim.sessions.add(self)
        nursery.start_soon(self._cut_when_idle)

    def _detach(self) -> None:
        self.sim.sessions.discard(self)
        for topic in self.topics:
            self.sim.unsubscribe(self, topic)

    def _writer_finished(self) -> bool:
        # Unlike the other venues' sessions, this one has always left closing TCP to the client
        # after the closing handshake (it waits for the client's EOF instead of sending its own);
        # kept so what the client sees on the wire does not change.
        return self._protocol.state is State.CLOSED

    async def _cut_when_idle(self) -> None:
        timeout = self.sim.options.idle_timeout_s
        if not timeout or math.isinf(timeout):
            return
        await self._wait_for_silence(timeout)
        self.sim.counters["idle_closes"] += 1
        self.abort(f"no request for {timeout:g} s")

    # --- requests ---------------------------------------------------------------------------------

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.TEXT and not self._closing:
            self._client_heard_at = trio.current_time()
            self._on_request(frame.data)

    def _on_request(self, text: bytes) -> None:
        try:
            request = msgspec.json.decode(text)
        except msgspec.DecodeError:
            self._reply("", "", False, "error:request is not JSON")
            return
        if not isinstance(request, dict):
            self._reply("", "", False, "error:request is not an object")
            return
        op, req_id, args = request.get("op"), request.get("req_id", ""), request.get("args")
        req_id = req_id if isinstance(req_id, str) else str(req_id)
        if op == "ping":
            self.sim.counters["pings"] += 1
            self._reply("ping", req_id, True, "pong")
        elif op == "subscribe":
            self._subscribe(req_id, args)
        elif op == "unsubscribe":
            self._unsubscribe(req_id, args)
        else:
            self._reply(str(op), req_id, False, f"error:unknown op {op!r}")

    def _subscribe(self, req_id: str, args: object) -> None:
        options, sim = self.sim.options, self.sim
        refusal = None
        if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
            refusal = "error:args must be a non-empty list of topics"
        elif options.max_args_per_request and len(args) > options.max_args_per_request:
            refusal = f"error:args count {len(args)} exceeds {options.max_args_per_request}"
        elif unknown := [a for a in args if not sim.market.is_topic(a)]:
            refusal = f"error:handler not found,topic:{unknown[0]}"
        elif dup := [a for a in args if a in self.topics]:
            refusal = f"error:already subscribed,topic:{dup[0]}"
        elif sum(map(len, self.topics)) + sum(map(len, args)) > options.max_args_chars:
            refusal = f"error:args length exceeds {options.max_args_chars} characters per connection"
        if refusal is not None:
            sim.counters["subscribe_refused"] += 1
            self._reply("subscribe", req_id, False, refusal)
            return
        self._reply("subscribe", req_id, True, "")
        for topic in args:
            self.topics[topic] = None
            sim.subscribe(self, topic)
            sim.counters["subscriptions"] += 1
            if topic.startswith("tickers."):
                self._queue(text_frame(sim.market.snapshot(topic.partition(".")[2])))

    def _unsubscribe(self, req_id: str, args: object) -> None:
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            self._reply("unsubscribe", req_id, False, "error:args must be a list of topics")
            return
        for topic in args:
            if topic in self.topics:
                del self.topics[topic]
                self.sim.unsubscribe(self, topic)
                self.sim.counters["unsubscriptions"] += 1
        self._reply("unsubscribe", req_id, True, "")

    def _reply(self, op: str, req_id: str, success: bool, ret_msg: str) -> None:
        body = {"success": success, "ret_msg": ret_msg, "conn_id": self.conn_id, "req_id": req_id, "op": op}
        self._queue(text_frame(_encode(body)))

    # --- market data --------------------------------------------------------------------------------

    def send_data(self, topic: str, frame: bytes, ts_ms: int) -> None:
        """Queue a published frame (the fan-out calls this), or a corrupted stand-in for it."""
        if self._closing:
            return
        sim = self.sim
        if sim.faults_on and sim.options.malformed_rate and self._rng.random() < sim.options.malformed_rate:
            frame = text_frame(self._corrupt(topic, ts_ms))
            sim.counters["malformed_sent"] += 1
        self._queue(frame)
        if self._outbox_bytes > SEND_BUFFER_BYTES:
            sim.counters["slow_consumer_closes"] += 1
            self.abort("slow consumer")

    def _corrupt(self, topic: str, ts_ms: int) -> bytes:
        symbol = topic.partition(".")[2]
        if self._rng.random() < 0.5:
            whole = _encode({"topic": topic, "type": "delta", "data": {"symbol": symbol}, "ts": ts_ms})
            return whole[: self._rng.randint(1, 12)]  # cut before the topic can be read
        if topic.startswith("tickers."):
            data: object = {"symbol": symbol, "markPrice": "12x.5"}
            kind = "delta"
        else:
            data = [{"T": ts_ms, "s": symbol, "S": "Buy", "v": "-1", "p": "NaN", "i": "", "BT": False}]
            kind = "snapshot"
        return _encode({"topic": topic, "type": kind, "data": data, "ts": ts_ms})

    def resend_snapshots(self) -> None:
        """An unsolicited snapshot of every subscribed ticker (the venue may send one at any time)."""
        for topic in self.topics:
            if topic.startswith("tickers."):
                self._queue(text_frame(self.sim.market.snapshot(topic.partition(".")[2])))
