"""The Bybit simulator's wire rules over real loopback sockets: subscribe answers and limits, the
snapshot-first ticker stream, ping/pong, the idle cut, REST answers and faults."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from ingestd.sim.bybit.server import SimOptions, serve
from ingestd.transport.ws import ConnectionClosed, connect_ws

pytestmark = pytest.mark.trio


async def replies(ws, count: int, timeout: float = 5.0) -> list[dict]:
    out: list[dict] = []
    with trio.fail_after(timeout):
        while len(out) < count:
            out.extend(json.loads(f) for f in await ws.receive_batch())
    return out


async def test_subscribe_rules_snapshot_first_and_ping():
    options = SimOptions(perpetuals=3, max_args_chars=50, max_args_per_request=2)
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, options)
        ws = await connect_ws(sim.ws_url, max_outgoing_per_s=100)
        requests = [
            {"op": "subscribe", "req_id": "a", "args": ["tickers.NOPE"]},
            {"op": "subscribe", "req_id": "b", "args": ["tickers.BTCUSDT", "tickers.ETHUSDT", "tickers.SOLUSDT"]},
            {"op": "subscribe", "req_id": "c", "args": ["tickers.BTCUSDT", "publicTrade.BTCUSDT"]},
            {"op": "subscribe", "req_id": "d", "args": ["tickers.BTCUSDT"]},
            {"op": "subscribe", "req_id": "e", "args": ["tickers.ETHUSDT"]},  # 34 + 15 = 49 characters: fits
            {"op": "subscribe", "req_id": "f", "args": ["tickers.SOLUSDT"]},  # 64: over the 50 allowed
            {"op": "ping", "req_id": "g"},
        ]
        for request in requests:
            await ws.send_text(json.dumps(request))
        got = [m for m in await replies(ws, 12) if "op" in m]
        answers = {m["req_id"]: (m["success"], m["ret_msg"]) for m in got}
        assert answers["a"] == (False, "error:handler not found,topic:tickers.NOPE")
        assert answers["b"][0] is False and "exceeds 2" in answers["b"][1]
        assert answers["c"] == (True, "")
        assert answers["d"] == (False, "error:already subscribed,topic:tickers.BTCUSDT")
        assert answers["e"] == (True, "")
        assert answers["f"][0] is False and "50 characters" in answers["f"][1]
        assert answers["g"] == (True, "pong")
        assert sim.counters["subscribe_refused"] == 4
        await ws.aclose()

        ws = await connect_ws(sim.ws_url)
        await ws.send_text(json.dumps({"op": "subscribe", "req_id": "x", "args": ["tickers.SOLUSDT"]}))
        first = await replies(ws, 3)
        assert first[0]["op"] == "subscribe" and first[1]["type"] == "snapshot"
        assert all(m["type"] == "delta" for m in first[2:])
        await ws.send_text(json.dumps({"op": "unsubscribe", "req_id": "y", "args": ["tickers.SOLUSDT"]}))
        await trio.sleep(0.3)
        assert sim.counters["unsubscriptions"] == 1
        await ws.aclose()
        nursery.cancel_scope.cancel()


async def test_a_silent_client_is_cut_and_a_pinging_one_is_not():
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, SimOptions(perpetuals=1, idle_timeout_s=0.6))
        silent = await connect_ws(sim.ws_url)
        pinging = await connect_ws(sim.ws_url)

        async def keep_pinging():
            while True:
                await pinging.send_text('{"op":"ping","req_id":"p"}')
                await trio.sleep(0.2)

        nursery.start_soon(keep_pinging)
        with trio.fail_after(5), pytest.raises(ConnectionClosed):
            while True:
                await silent.receive_batch()
        await trio.sleep(0.5)
        assert sim.counters["idle_closes"] == 1 and len(sim.sessions) == 1
        nursery.cancel_scope.cancel()


async def test_rest_answers_and_429s():
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, SimOptions(perpetuals=2, http_429_rate=0.5, retry_after_s=2))
        await trio.sleep(0.5)
        statuses = []
        async with httpx.AsyncClient(base_url=sim.rest_url) as http:
            for _ in range(30):
                r = await http.get("/v5/market/recent-trade", params={"category": "linear", "symbol": "BTCUSDT"})
                statuses.append(r.status_code)
                if r.status_code == 429:
                    assert r.headers["retry-after"] == "2" and r.json()["retCode"] == 10006
                else:
                    assert r.json()["retCode"] == 0 and r.json()["result"]["list"]
            assert 429 in statuses and 200 in statuses
            await http.post("/_sim/calm")
            bad = await http.get("/v5/market/recent-trade", params={"category": "linear", "symbol": "NOPE"})
            assert bad.status_code == 200 and bad.json()["retCode"] == 10001
            tickers = (await http.get("/v5/market/tickers", params={"category": "linear"})).json()
            assert [t["symbol"] for t in tickers["result"]["list"]] == ["BTCUSDT", "ETHUSDT"]
        nursery.cancel_scope.cancel()
