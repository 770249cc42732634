"""One client connection to the simulated Bybit public linear WebSocket.

websockets' sans-I/O `ServerProtocol` does the WebSocket part; this module adds Bybit's rules:
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
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from ingestd.sim.ws_frames import text_frame

if TYPE_CHECKING:
    from ingestd.sim.bybit.server import BybitSim

PATH = "/v5/public/linear"
HANDSHAKE_TIMEOUT_S = 10.0
MAX_READ = 64 * 1024
SEND_BUFFER_BYTES = 8 << 20  # a client this far behind is cut off, as venues do

log = logging.getLogger(__name__)
_protocol_log = logging.getLogger("ingestd.sim.bybit.websockets")
_protocol_log.setLevel(logging.WARNING)
_encode = msgspec.json.encode


class BybitSession:
    def __init__(self, sim: BybitSim, stream: trio.SocketStream, session_id: int) -> None:
        self.sim = sim
        self.id = session_id
        self.conn_id = f"sim-{session_id:06d}"
        self.topics: dict[str, None] = {}
        self._stream = stream
        self._protocol = ServerProtocol(max_size=1 << 20, logger=_protocol_log)
        self._rng = random.Random(f"{sim.options.seed}/session/{session_id}")
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        self._wakeup = trio.Event()
        self._scope = trio.CancelScope()
        self._last_request = trio.current_time()
        self._closing = False
        self.end_reason = "client went away"

    async def run(self) -> None:
        try:
            with self._scope:
                if not await self._handshake():
                    return
                self.sim.sessions.add(self)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._until_done, self._read_loop)
                        nursery.start_soon(self._until_done, self._write_loop)
                        nursery.start_soon(self._idle_watch)
                finally:
                    self._detach()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(self._stream)
            log.info("ws#%d closed: %s", self.id, self.end_reason)

    async def _until_done(self, task) -> None:
        try:
            await task()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._scope.cancel()

    def _detach(self) -> None:
        self.sim.sessions.discard(self)
        for topic in self.topics:
            self.sim.unsubscribe(self, topic)

    def abort(self, reason: str) -> None:
        """Cut TCP now, no close frame: a network failure as the client sees it."""
        self.end_reason = reason
        self._closing = True
        self._detach()
        self._scope.cancel()

    # --- handshake ----------------------------------------------------------------------------------

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
            response = self._protocol.reject(404, f"no such endpoint {request.path}\n")
        else:
            response = self._protocol.accept(request)
        self._protocol.send_response(response)
        await self._flush_handshake()
        accepted = response.status_code == 101
        self.sim.counters["connections_opened" if accepted else "handshakes_rejected"] += 1
        return accepted

    async def _flush_handshake(self) -> None:
        data = b"".join(self._protocol.data_to_send())
        if data:
            await self._stream.send_all(data)

    # --- requests ---------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            data = await self._stream.receive_some(MAX_READ)
            if not data:
                self._protocol.receive_eof()
                return
            self._protocol.receive_data(data)
            for event in self._protocol.events_received():
                if isinstance(event, Frame) and event.opcode is Opcode.TEXT and not self._closing:
                    self._last_request = trio.current_time()
                    self._on_request(event.data)
            self._pump_protocol()
            if self._protocol.state is State.CLOSED:
                return

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

    def _queue(self, frame: bytes) -> None:
        if self._closing or self._protocol.state is not State.OPEN:
            return
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        self._wakeup.set()

    def _pump_protocol(self) -> None:
        for data in self._protocol.data_to_send():
            if data:
                self._outbox.append(data)
        self._wakeup.set()

    async def _write_loop(self) -> None:
        while True:
            if self._outbox:
                pending, self._outbox, self._outbox_bytes = self._outbox, [], 0
                await self._stream.send_all(b"".join(pending))
                continue
            if self._protocol.state is State.CLOSED:
                return
            await self._wakeup.wait()
            self._wakeup = trio.Event()

    async def _idle_watch(self) -> None:
        timeout = self.sim.options.idle_timeout_s
        if not timeout or math.isinf(timeout):
            return
        while True:
            await trio.sleep_until(self._last_request + timeout)
            if trio.current_time() >= self._last_request + timeout:
                self.sim.counters["idle_closes"] += 1
                self.abort(f"no request for {timeout:g} s")
                return
