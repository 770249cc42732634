"""The simulator over real loopback sockets: Binance's wire behaviour and every fault knob.

WebSocket checks use websockets' sans-I/O ClientProtocol directly, so a test can see ping frames,
choose not to answer them, and tell a close frame from a bare TCP close. REST checks use httpx.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import httpx
import msgspec
import pytest
import trio
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from ingestd.sim import SimConfig, Simulator, serve

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
TEST_TIMEOUT_S = 10


@asynccontextmanager
async def running_sim(**overrides: Any) -> AsyncIterator[Simulator]:
    config = SimConfig(**{"symbols": SYMBOLS, "seed": 1, "rate": 400, **overrides})
    with trio.fail_after(TEST_TIMEOUT_S):
        async with trio.open_nursery() as nursery:
            sim = await nursery.start(serve, config)
            yield sim
            nursery.cancel_scope.cancel()


class WsClient:
    """A minimal Trio WebSocket client over the sans-I/O protocol, for looking at raw frames."""

    def __init__(self, stream: trio.SocketStream, protocol: ClientProtocol, answer_pings: bool) -> None:
        self.stream = stream
        self.protocol = protocol
        self.answer_pings = answer_pings
        self.response: Response | None = None
        self.eof = False
        self._frames: list[Frame] = []

    @classmethod
    async def connect(cls, url: str, *, answer_pings: bool = True) -> WsClient:
        uri = parse_uri(url)
        protocol = ClientProtocol(uri, max_size=None)
        stream = await trio.open_tcp_stream(uri.host, uri.port)
        client = cls(stream, protocol, answer_pings)
        protocol.send_request(protocol.connect())
        await client._flush(force=True)
        while client.response is None and not client.eof:
            await client._receive()
        return client

    async def _flush(self, force: bool = False) -> None:
        data = b"".join(self.protocol.data_to_send())
        if data and (force or self.answer_pings) and not self.eof:
            try:
                await self.stream.send_all(data)
            except trio.BrokenResourceError:
                pass

    async def _receive(self) -> None:
        data = await self.stream.receive_some(65536)
        if not data:
            self.eof = True
            self.protocol.receive_eof()
            return
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self.response = event
            else:
                self._frames.append(event)
        # Pongs (and the close echo) go out only when we answer pings: a silent client sends nothing.
        await self._flush()

    async def next_frame(self) -> Frame | None:
        """The next frame of any kind, or None once the server has closed TCP."""
        while not self._frames:
            if self.eof:
                return None
            await self._receive()
        return self._frames.pop(0)

    async def next_message(self) -> Any:
        """The next text message, decoded; pings are skipped. None on EOF, "CLOSE" on a close frame."""
        while True:
            frame = await self.next_frame()
            if frame is None:
                return None
            if frame.opcode is Opcode.CLOSE:
                return "CLOSE"
            if frame.opcode is Opcode.TEXT:
                return msgspec.json.decode(frame.data)

    async def messages(self, count: int) -> list[Any]:
        return [await self.next_message() for _ in range(count)]

    async def send_json(self, obj: Any) -> None:
        self.protocol.send_text(msgspec.json.encode(obj))
        await self._flush(force=True)

    async def send_ping(self, payload: bytes = b"") -> None:
        self.protocol.send_ping(payload)
        await self._flush(force=True)

    async def until_closed(self) -> list[Frame]:
        """Read until the server closes TCP; every frame seen on the way."""
        frames = []
        while (frame := await self.next_frame()) is not None:
            frames.append(frame)
        return frames

    async def aclose(self) -> None:
        await self.stream.aclose()


def trades_of(messages: list[Any]) -> list[dict]:
    return [m["data"] if "stream" in m else m for m in messages if isinstance(m, dict)]


# ----- WebSocket: streams and control messages ----------------------------------------------------


@pytest.mark.trio
async def test_combined_stream_wraps_each_message_and_trade_ids_are_contiguous():
    async with running_sim(rate=2000) as sim:
        client = await WsClient.connect(sim.ws_url + "/stream?streams=btcusdt@trade/ethusdt@aggTrade")
        assert client.response is not None and client.response.status_code == 101
        messages = await client.messages(60)
        assert {m["stream"] for m in messages} == {"btcusdt@trade", "ethusdt@aggTrade"}
        for message in messages:
            data = message["data"]
            assert message["stream"] == data["s"].lower() + "@" + data["e"]
        btc = [m["data"]["t"] for m in messages if m["stream"] == "btcusdt@trade"]
        eth = [m["data"]["a"] for m in messages if m["stream"] == "ethusdt@aggTrade"]
        assert btc == list(range(btc[0], btc[0] + len(btc)))
        assert eth == list(range(eth[0], eth[0] + len(eth)))
        await client.aclose()


@pytest.mark.trio
async def test_raw_stream_sends_bare_payloads():
    async with running_sim() as sim:
        client = await WsClient.connect(sim.ws_url + "/ws/solusdt@trade")
        for message in await client.messages(5):
            assert message["e"] == "trade" and message["s"] == "SOLUSDT" and "stream" not in message
        await client.aclose()


@pytest.mark.trio
async def test_live_subscribe_list_unsubscribe_and_errors():
    async with running_sim(rate=2000, max_incoming_per_s=100) as sim:
        client = await WsClient.connect(sim.ws_url + "/ws")
        await client.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@trade", "ethusdt@depth@100ms"], "id": 1})
        assert await client.next_message() == {"result": None, "id": 1}
        await client.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 2})
        reply = await client.next_message()
        while "id" not in reply:  # market data may already be flowing
            reply = await client.next_message()
        assert reply == {"result": ["btcusdt@trade", "ethusdt@depth@100ms"], "id": 2}
        kinds = set()
        while kinds != {"trade", "depthUpdate"}:
            message = await client.next_message()
            assert message.get("s") in {"BTCUSDT", "ETHUSDT"}
            kinds.add(message["e"])
        await client.send_json({"method": "UNSUBSCRIBE", "params": ["btcusdt@trade"], "id": 3})
        await client.send_json({"method": "SUBSCRIBE", "params": ["btcusdt@nonsense"], "id": 4})
        replies = {}
        while len(replies) < 2:
            message = await client.next_message()
            if "id" in message:
                replies[message["id"]] = message
        assert replies[3] == {"result": None, "id": 3}
        assert replies[4]["code"] == 2 and replies[4]["msg"].startswith("Invalid request")
        await client.send_json({"method": "SET_PROPERTY", "params": ["combined", True], "id": 5})
        message = await client.next_message()
        while message.get("id") != 5:
            message = await client.next_message()
        assert (await client.next_message())["stream"] == "ethusdt@depth@100ms"
        await client.aclose()


@pytest.mark.trio
async def test_unknown_streams_are_refused_at_the_handshake():
    async with running_sim() as sim:
        client = await WsClient.connect(sim.ws_url + "/stream?streams=btcusdt@trade/nopeusdt@trade")
        assert client.response is not None and client.response.status_code == 400
        assert b"nopeusdt@trade" in client.response.body
        assert sim.counters.handshakes_rejected == 1


# ----- WebSocket: keepalive and limits -----------------------------------------------------------


@pytest.mark.trio
async def test_server_pings_and_keeps_a_client_that_pongs():
    # Pongs count towards the incoming-message limit; with pings this frequent, lift the limit.
    async with running_sim(rate=0, ping_interval_s=0.05, pong_timeout_s=0.15, max_incoming_per_s=1000) as sim:
        client = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        pings = [await client.next_frame() for _ in range(6)]  # 0.3 s: well past the pong timeout
        assert all(frame is not None and frame.opcode is Opcode.PING and frame.data for frame in pings)
        assert sim.counters.pong_timeouts == 0 and len(sim.sessions) == 1
        await client.aclose()


@pytest.mark.trio
async def test_server_drops_a_client_that_does_not_pong():
    async with running_sim(rate=0, ping_interval_s=0.05, pong_timeout_s=0.2) as sim:
        client = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade", answer_pings=False)
        start = trio.current_time()
        frames = await client.until_closed()
        assert 0.2 <= trio.current_time() - start < 1.0
        assert frames and all(frame.opcode is Opcode.PING for frame in frames)
        assert sim.counters.pong_timeouts == 1


@pytest.mark.trio
async def test_more_than_five_incoming_messages_a_second_closes_the_connection():
    async with running_sim(rate=0) as sim:
        polite = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        for i in range(5):
            await polite.send_ping(b"%d" % i)
        flooder = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        for i in range(5):
            await flooder.send_ping(b"%d" % i)
        await flooder.send_json({"method": "LIST_SUBSCRIPTIONS", "id": 1})
        frames = await flooder.until_closed()
        assert frames[-1].opcode is Opcode.CLOSE
        assert flooder.protocol.close_rcvd is not None and flooder.protocol.close_rcvd.code == 1008
        assert sim.counters.rate_limit_closes == 1
        assert len(sim.sessions) == 1, "five messages in a second are within the limit"
        await polite.aclose()


@pytest.mark.trio
async def test_a_consumer_that_stops_reading_is_disconnected_not_waited_for():
    async with running_sim(rate=20_000, depth_ratio=0.0, send_buffer_bytes=64 * 1024) as sim:
        stalled = await WsClient.connect(sim.ws_url + "/stream?streams=btcusdt@trade/ethusdt@trade/solusdt@trade")
        reader = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        with trio.fail_after(5):
            while sim.counters.slow_consumer_closes == 0:
                await reader.messages(100)  # the generator and the other connection keep going
        assert len(sim.sessions) == 1
        await stalled.aclose()
        await reader.aclose()


# ----- WebSocket: connection lifecycle faults -----------------------------------------------------


@pytest.mark.trio
async def test_server_shutdown_notice_then_close_after_the_grace_period():
    async with running_sim(rate=1000, shutdown_every_s=0.2, shutdown_grace_s=0.2) as sim:
        combined = await WsClient.connect(sim.ws_url + "/stream?streams=btcusdt@trade")
        raw = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        for client, is_combined in ((combined, True), (raw, False)):
            message = await client.next_message()
            while message.get("e") != "serverShutdown" and message.get("stream") != "!serverShutdown":
                message = await client.next_message()
            if is_combined:
                assert message["stream"] == "!serverShutdown" and message["data"]["e"] == "serverShutdown"
                noticed_ms = message["data"]["E"]
            else:
                assert message["e"] == "serverShutdown" and isinstance(message["E"], int)
                noticed_ms = message["E"]
            data_after_notice = 0
            while await client.next_message() != "CLOSE":
                data_after_notice += 1
            assert data_after_notice > 10, "the connection keeps serving during the grace period"
            assert time.time() * 1000 - noticed_ms >= 150
            assert client.protocol.close_rcvd is not None and client.protocol.close_rcvd.code == 1001
        assert sim.counters.shutdowns == 2


@pytest.mark.trio
async def test_drop_every_cuts_tcp_without_a_close_frame():
    async with running_sim(drop_every_s=0.2) as sim:
        client = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        frames = await client.until_closed()
        assert frames and Opcode.CLOSE not in {frame.opcode for frame in frames}
        assert client.protocol.close_rcvd is None
        assert sim.counters.drops == 1


@pytest.mark.trio
async def test_connections_older_than_max_age_are_closed():
    async with running_sim(rate=0, max_connection_age_s=0.2) as sim:
        client = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        start = trio.current_time()
        await client.until_closed()
        assert trio.current_time() - start >= 0.15
        assert client.protocol.close_rcvd is not None and client.protocol.close_rcvd.code == 1001
        assert sim.counters.max_age_closes == 1


# ----- WebSocket: data faults ---------------------------------------------------------------------


@pytest.mark.trio
async def test_drop_rate_makes_per_connection_gaps_while_the_truth_stays_complete():
    async with running_sim(symbols=["BTCUSDT"], rate=2000, depth_ratio=0.0, drop_rate=0.2) as sim:
        first = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        second = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        got_first = {m["t"] for m in await first.messages(150)}
        got_second = {m["t"] for m in await second.messages(150)}
        sim.pause()
        truth = set(sim.truth("BTCUSDT")["BTCUSDT"])
        assert got_first <= truth and got_second <= truth
        low = max(min(got_first), min(got_second))
        high = min(max(got_first), max(got_second))
        window = set(range(low, high + 1))
        assert window - got_first and window - got_second, "both connections should have gaps"
        assert (window & got_first) != (window & got_second), "each connection loses different frames"
        assert sim.counters.frames_dropped > 0
        async with httpx.AsyncClient(base_url=sim.rest_url) as rest:
            assert set((await rest.get("/_sim/truth", params={"symbol": "BTCUSDT"})).json()["BTCUSDT"]) == truth


@pytest.mark.trio
async def test_at_a_pause_every_connection_gets_its_streams_last_frame():
    # Otherwise a dropped last trade would leave a gap no consumer could ever detect.
    async with running_sim(symbols=["BTCUSDT"], rate=2000, depth_ratio=0.0, drop_rate=0.5) as sim:
        # With 8 connections at 50% drops, some connection's last frame is dropped 255 times in 256.
        clients = [await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade") for _ in range(8)]
        seen = [[m["t"] for m in await client.messages(20)] for client in clients]
        sim.pause()
        last_id = sim.truth("BTCUSDT")["BTCUSDT"][-1]
        for client, ids in zip(clients, seen):
            while ids[-1] != last_id:
                ids.append((await client.next_message())["t"])


@pytest.mark.trio
async def test_malformed_frames_arrive_next_to_real_ones():
    async with running_sim(symbols=["BTCUSDT"], rate=1000, depth_ratio=0.0, malformed_rate=0.2) as sim:
        client = await WsClient.connect(sim.ws_url + "/stream?streams=btcusdt@trade")
        good, bad = [], 0
        while len(good) < 200:
            frame = await client.next_frame()
            assert frame is not None
            if frame.opcode is not Opcode.TEXT:
                continue
            try:
                message = msgspec.json.decode(frame.data)
                trade = message["data"]
                price = Decimal(trade["p"])
                assert trade["e"] == "trade" and price > 0 and {"t", "q", "T"} <= set(trade)
            except (msgspec.DecodeError, KeyError, ArithmeticError, AssertionError, TypeError):
                bad += 1
                continue
            good.append(trade["t"])
        assert bad > 10
        assert good == list(range(good[0], good[0] + len(good))), "bad frames never consume trade ids"
        await client.aclose()


@pytest.mark.trio
async def test_snapshot_plus_diffs_matches_the_reference_book_at_a_pause():
    async with running_sim(symbols=["ETHUSDT"], rate=1500, depth_ratio=0.9) as sim:
        client = await WsClient.connect(sim.ws_url + "/stream?streams=ethusdt@depth@100ms")
        buffered = [await client.next_message()]
        async with httpx.AsyncClient(base_url=sim.rest_url) as rest:
            snapshot = (await rest.get("/api/v3/depth", params={"symbol": "ETHUSDT", "limit": 1000})).json()
            buffered += await client.messages(3)
            book = {"b": dict(map(tuple, snapshot["bids"])), "a": dict(map(tuple, snapshot["asks"]))}
            local_id = snapshot["lastUpdateId"]
            assert buffered[0]["data"]["U"] <= local_id + 1

            def apply(update: dict) -> None:
                nonlocal local_id
                if update["u"] <= local_id:
                    return
                assert update["U"] <= local_id + 1 <= update["u"]
                for side in ("b", "a"):
                    for price, qty in update[side]:
                        if Decimal(qty) == 0:
                            book[side].pop(price, None)
                        else:
                            book[side][price] = qty
                local_id = update["u"]

            for message in buffered:
                apply(message["data"])
            await rest.post("/_sim/pause")
            reference = (await rest.get("/_sim/book", params={"symbol": "ETHUSDT"})).json()
            while local_id < reference["lastUpdateId"]:
                apply((await client.next_message())["data"])
            assert local_id == reference["lastUpdateId"]
            assert book == {"b": dict(map(tuple, reference["bids"])), "a": dict(map(tuple, reference["asks"]))}
            with trio.move_on_after(0.3):
                message = await client.next_message()
                pytest.fail(f"no data expected while paused, got {message}")
            stats = (await rest.get("/_sim/stats")).json()
            assert stats["paused"] is True
            await rest.post("/_sim/resume")
            assert (await client.next_message())["data"]["U"] == local_id + 1
        await client.aclose()


@pytest.mark.trio
async def test_pings_keep_flowing_while_paused():
    async with running_sim(ping_interval_s=0.05, max_incoming_per_s=1000) as sim:
        sim.pause()
        client = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        frames = [await client.next_frame() for _ in range(3)]
        assert [frame.opcode for frame in frames if frame is not None] == [Opcode.PING] * 3
        await client.aclose()


# ----- blast mode ---------------------------------------------------------------------------------


@pytest.mark.trio
async def test_blast_sends_every_pregenerated_trade_stamped_with_send_time():
    async with running_sim(blast_trades=5000) as sim:
        assert sim.market.trade_count() == 5000
        client = await WsClient.connect(sim.ws_url + "/stream?streams=btcusdt@trade/solusdt@trade")
        before = trio.current_time()
        wall_before = time.time() * 1000
        expected = len(sim.truth("BTCUSDT")["BTCUSDT"]) + len(sim.truth("SOLUSDT")["SOLUSDT"])
        trades = trades_of(await client.messages(expected))
        assert trio.current_time() - before < 5
        for symbol in ("BTCUSDT", "SOLUSDT"):
            assert [t["t"] for t in trades if t["s"] == symbol] == list(sim.truth(symbol)[symbol])
        assert all(t["E"] == t["T"] and t["E"] >= wall_before - 5 for t in trades)
        assert sim.counters.blast_frames_sent == len(trades)
        await client.aclose()


@pytest.mark.trio
async def test_blast_rate_paces_the_offered_load():
    async with running_sim(symbols=["BTCUSDT"], blast_trades=600, blast_rate=2000) as sim:
        client = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        start = trio.current_time()
        trades = await client.messages(600)
        elapsed = trio.current_time() - start
        assert 0.25 <= elapsed < 1.0, f"600 trades at 2000/s should take about 0.3 s, took {elapsed:.2f} s"
        assert [t["t"] for t in trades] == list(sim.truth("BTCUSDT")["BTCUSDT"])
        await client.aclose()


# ----- REST ---------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_rest_endpoints_weights_and_keep_alive():
    async with running_sim(halted={"SOLUSDT": "BREAK"}) as sim:
        async with httpx.AsyncClient(base_url=sim.rest_url) as rest:
            info = await rest.get("/api/v3/exchangeInfo")
            assert info.status_code == 200 and info.headers["X-MBX-USED-WEIGHT-1M"] == "20"
            body = info.json()
            assert body["rateLimits"][0] == {
                "rateLimitType": "REQUEST_WEIGHT",
                "interval": "MINUTE",
                "intervalNum": 1,
                "limit": 6000,
            }
            assert {s["symbol"]: s["status"] for s in body["symbols"]} == {
                "BTCUSDT": "TRADING",
                "ETHUSDT": "TRADING",
                "SOLUSDT": "BREAK",
            }
            used = 20
            for limit, weight in ((100, 5), (500, 25), (1000, 50), (5000, 250)):
                depth = await rest.get("/api/v3/depth", params={"symbol": "BTCUSDT", "limit": limit})
                used += weight
                assert depth.status_code == 200 and int(depth.headers["X-MBX-USED-WEIGHT-1M"]) == used
            assert set(depth.json()) == {"lastUpdateId", "bids", "asks"}

            await trio.sleep(0.1)  # let some trades happen
            recent = (await rest.get("/api/v3/trades", params={"symbol": "BTCUSDT", "limit": 3})).json()
            first = recent[0]["id"]
            params = {"symbol": "BTCUSDT", "fromId": first, "limit": 2}
            historical = await rest.get("/api/v3/historicalTrades", params=params)
            assert [t["id"] for t in historical.json()] == [first, first + 1]
            agg = await rest.get("/api/v3/aggTrades", params={"symbol": "BTCUSDT", "fromId": first, "limit": 1})
            assert agg.json()[0]["a"] == agg.json()[0]["f"] == agg.json()[0]["l"] == first
            used += 25 + 25 + 4
            assert int(agg.headers["X-MBX-USED-WEIGHT-1M"]) == used

            bad = await rest.get("/api/v3/depth", params={"symbol": "NOPEUSDT"})
            assert bad.status_code == 400 and bad.json() == {"code": -1121, "msg": "Invalid symbol."}
            too_many = await rest.get("/api/v3/historicalTrades", params={"symbol": "BTCUSDT", "limit": 1001})
            assert too_many.status_code == 400
            missing = await rest.get("/api/v3/aggTrades")
            assert missing.status_code == 400 and missing.json()["code"] == -1102
            assert sim.counters.connections_opened == 0
        assert sim.counters.rest_requests == 11
        assert sim.counters.rest_connections == 1, "httpx kept the one HTTP/1.1 connection alive"


@pytest.mark.trio
async def test_rest_429_then_418_with_retry_after_then_recovery():
    async with running_sim(weight_limit=10, weight_window_s=0.5, ban_s=0.2) as sim:
        async with httpx.AsyncClient(base_url=sim.rest_url) as rest:
            # Start at the beginning of a weight window so the sequence below fits in one.
            await trio.sleep(0.5 - (time.time() % 0.5) + 0.01)
            params = {"symbol": "BTCUSDT", "limit": 5}
            assert (await rest.get("/api/v3/depth", params=params)).status_code == 200
            assert (await rest.get("/api/v3/depth", params=params)).status_code == 200
            refused = await rest.get("/api/v3/depth", params=params)
            assert refused.status_code == 429 and refused.json()["code"] == -1003
            assert refused.headers["Retry-After"] == "1" and refused.headers["X-MBX-USED-WEIGHT-1M"] == "10"
            banned = await rest.get("/api/v3/depth", params=params)
            assert banned.status_code == 418 and int(banned.headers["Retry-After"]) >= 1
            assert "banned" in banned.json()["msg"]
            await trio.sleep(0.5)  # past the ban, and in a fresh window
            assert (await rest.get("/api/v3/depth", params=params)).status_code == 200
        assert sim.counters.http_429 == 1 and sim.counters.http_418 == 1


@pytest.mark.trio
async def test_slow_ms_delays_responses():
    async with running_sim(slow_ms=150) as sim:
        async with httpx.AsyncClient(base_url=sim.rest_url) as rest:
            start = trio.current_time()
            assert (await rest.get("/api/v3/ping")).status_code == 200
            assert trio.current_time() - start >= 0.15


@pytest.mark.trio
async def test_control_endpoints_drop_and_shutdown():
    async with running_sim(shutdown_grace_s=0.1) as sim:
        first = await WsClient.connect(sim.ws_url + "/ws/btcusdt@trade")
        second = await WsClient.connect(sim.ws_url + "/stream?streams=ethusdt@trade")
        async with httpx.AsyncClient(base_url=sim.rest_url) as rest:
            assert (await rest.post("/_sim/shutdown")).json() == {"notified": 2}
            frames = await second.until_closed()
            assert any(b"!serverShutdown" in frame.data for frame in frames if frame.opcode is Opcode.TEXT)
            third = await WsClient.connect(sim.ws_url + "/ws/solusdt@trade")
            await first.until_closed()
            assert (await rest.post("/_sim/drop")).json() == {"dropped": 1}
            assert third.protocol.close_rcvd is None and await third.until_closed() is not None
            stats = (await rest.get("/_sim/stats")).json()
            assert stats["shutdowns"] == 2 and stats["drops"] == 1 and stats["connections_opened"] == 3
            assert (await rest.get("/_sim/nope")).status_code == 404
