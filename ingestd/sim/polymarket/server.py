"""The Polymarket simulator: one PolyMarket model, the market channel WebSocket and the HTTP API.

    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, PolySimConfig(seed=1, rate=50))
        sim.ws_url         # "ws://127.0.0.1:P/ws/market"
        sim.http_url       # "http://127.0.0.1:Q": Data API /trades, CLOB /book, /_sim/ controls
        sim.truth()        # every trade, every whale trade, the current books
        nursery.cancel_scope.cancel()
"""

from __future__ import annotations

import collections
import logging
import random
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import msgspec
import trio

from ingestd.sim.polymarket.http_api import HttpApi, rest_levels, trade_row
from ingestd.sim.polymarket.market import BookChanged, PolyMarket, Traded, price_text, size_text
from ingestd.sim.polymarket.ws import Session, serve_market_channel
from ingestd.sim.rest_server import serve_rest_connection

log = logging.getLogger("ingestd.sim.polymarket")

TICK_S = 0.01  # events are generated in small batches this often


@dataclass(frozen=True)
class PolySimConfig:
    seed: int = 1
    markets: int = 4
    whales: int = 3
    whale_share: float = 0.2  # share of trades taken by whales
    rate: float = 20.0  # market events per second, over all markets
    trade_ratio: float = 0.3  # share of events that are trades (the rest: order book changes)
    host: str = "127.0.0.1"
    ws_port: int = 0
    http_port: int = 0
    book_dump: str = "array"  # "array" (one frame, a JSON array) or "objects" (a frame per book)
    ping_timeout_s: float = 0.0  # cut clients that send no PING this long; 0: never
    drop_every_s: float | None = None
    malformed_rate: float = 0.0  # share of events preceded by a bad frame
    data_limit: int = 200  # Data API requests per window
    data_window_s: float = 10.0
    data_429_rate: float = 0.0
    data_malformed_rate: float = 0.0
    data_lag_ms: int = 0  # a trade shows in the Data API this long after it happened


class PolySim:
    def __init__(self, config: PolySimConfig) -> None:
        if config.book_dump not in ("array", "objects"):
            raise ValueError("book_dump must be array or objects")
        self.config = config
        self.market = PolyMarket(config.seed, markets=config.markets, whales=config.whales,
                                 whale_share=config.whale_share, trade_ratio=config.trade_ratio)
        self.sessions: set[Session] = set()
        self.counters: collections.Counter[str] = collections.Counter()
        self.api = HttpApi(self)
        self.paused = False
        self.faults_on = True
        self.subscribed_ms: dict[str, list[int]] = {}  # asset -> time of each book sent for a subscribe
        self.ws_url = ""
        self.http_url = ""
        self._fault_rng = random.Random(f"polymarket-faults/{config.seed}")

    # --- messages ------------------------------------------------------------------------------

    def book_message(self, asset: str) -> dict[str, Any]:
        o = self.market.outcomes[asset]
        bare = o.bare_prices
        return {
            "event_type": "book", "asset_id": asset, "market": o.condition_id,
            # The venue lists bids from the lowest price up and asks from the highest down.
            "bids": [{"price": price_text(t, bare=bare), "size": size_text(s)} for t, s in sorted(o.bids.items())],
            "asks": [{"price": price_text(t, bare=bare), "size": size_text(s)}
                     for t, s in sorted(o.asks.items(), reverse=True)],
            "timestamp": str(_now_ms()), "hash": o.hash(),
        }

    def rest_book(self, asset: str) -> dict[str, Any]:
        o = self.market.outcomes[asset]
        return {"market": o.condition_id, "asset_id": asset, "timestamp": str(_now_ms()), "hash": o.hash(),
                "bids": rest_levels(o.bids, ascending=True), "asks": rest_levels(o.asks, ascending=False),
                "min_order_size": "5", "tick_size": "0.01", "neg_risk": False}

    def note_subscribed(self, asset: str, book_ms: int) -> None:
        self.subscribed_ms.setdefault(asset, []).append(book_ms)

    def _publish(self, asset: str, payload: bytes) -> None:
        for session in list(self.sessions):
            if asset in session.assets:
                if self.faults_on and self.config.malformed_rate and self._fault_rng.random() < self.config.malformed_rate:
                    self.counters["malformed_sent"] += 1
                    session.send_text(self._malformed(asset))
                session.send_text(payload)

    def _malformed(self, asset: str) -> bytes:
        return self._fault_rng.choice((
            b'{"event_type":"price_change","market":"0x',  # cut short
            b'[1, 2, 3]',
            msgspec.json.encode({"event_type": "last_trade_price", "asset_id": asset, "market": "0x0",
                                 "price": "abc", "size": "1", "side": "BUY", "timestamp": "1"}),
            msgspec.json.encode({"event_type": "book", "asset_id": asset, "market": "0x0", "timestamp": "x"}),
            msgspec.json.encode({"event_type": "tick_size_change", "asset_id": asset, "market": "0x0",
                                 "old_tick_size": "0.01", "new_tick_size": "0.001", "timestamp": str(_now_ms())}),
            b"\xff\xfe not utf-8".decode("latin-1").encode(),
        ))

    def _emit(self, event: BookChanged | Traded | None) -> None:
        if event is None:
            return
        if type(event) is BookChanged:
            c = event.change
            o = c.outcome
            best_bid, best_ask = o.best_bid(), o.best_ask()
            payload = {
                "event_type": "price_change", "market": event.market.condition_id, "timestamp": str(event.ts_ms),
                "price_changes": [{
                    "asset_id": o.asset_id, "price": price_text(c.tick), "size": size_text(c.size),
                    "side": "BUY" if c.is_bid else "SELL", "hash": o.hash(),
                    "best_bid": price_text(best_bid) if best_bid else "0",
                    "best_ask": price_text(best_ask) if best_ask else "1",
                }],
            }
            self.counters["price_changes"] += 1
            self._publish(o.asset_id, msgspec.json.encode(payload))
            return
        t = event.trade
        self.counters["trades"] += 1
        self._publish(t.asset_id, msgspec.json.encode({
            "event_type": "last_trade_price", "asset_id": t.asset_id, "market": t.condition_id,
            "fee_rate_bps": "0", "price": price_text(t.tick), "side": t.side, "size": size_text(t.size),
            "timestamp": str(t.ts_ms), "transaction_hash": t.tx_hash,
        }))
        # The venue sends the token's book again after a trade changed it.
        self._publish(t.asset_id, msgspec.json.encode(self.book_message(t.asset_id)))

    # --- controls ------------------------------------------------------------------------------

    def calm(self) -> dict[str, Any]:
        self.faults_on = False
        return {"calm": True}

    def pause(self) -> dict[str, Any]:
        self.paused = True
        return {"paused": True}

    def resume(self) -> dict[str, Any]:
        self.paused = False
        return {"paused": False}

    def drop_connections(self) -> dict[str, Any]:
        sessions = list(self.sessions)
        for session in sessions:
            session.abort("dropped on purpose (drop_every_s or /_sim/drop)")
        self.counters["drops"] += len(sessions)
        return {"dropped": len(sessions)}

    def truth(self) -> dict[str, Any]:
        m = self.market
        trades = []
        for t in m.trades:
            row = {"seq": t.seq, "asset_id": t.asset_id, "market": t.condition_id, "tx_hash": t.tx_hash,
                   "price": t.price, "size": t.shares, "side": t.side, "ts_ms": t.ts_ms, "taker": t.taker.address}
            trades.append(row)
        books = {}
        for asset, o in m.outcomes.items():
            bids, asks = o.levels()
            books[asset] = {"bids": bids, "asks": asks, "hash": o.hash(), "market": o.condition_id}
        return {
            "markets": [{"condition_id": mk.condition_id, "title": mk.title,
                         "assets": [o.asset_id for o in mk.outcomes]} for mk in m.markets],
            "whales": [{"address": w.address, "pseudonym": w.pseudonym} for w in m.whales],
            "trades": trades,
            "whale_trades": [trade_row(t) for t in m.trades if t.taker.is_whale],
            "books": books,
            "subscribed_ms": self.subscribed_ms,
        }

    def stats(self) -> dict[str, Any]:
        return {**self.counters, "connections_open": len(self.sessions), "paused": self.paused,
                "trades_made": len(self.market.trades), "faults_on": self.faults_on}

    # --- running -------------------------------------------------------------------------------

    async def generate(self) -> None:
        carry = 0.0
        while True:
            await trio.sleep(TICK_S)
            if self.paused:
                continue
            carry += self.config.rate * TICK_S
            while carry >= 1.0:
                carry -= 1.0
                self._emit(self.market.step(_now_ms()))

    async def drop_periodically(self, every_s: float) -> None:
        while self.faults_on:
            await trio.sleep(every_s)
            if self.faults_on:
                self.drop_connections()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


async def serve(config: PolySimConfig, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
    sim = PolySim(config)

    async def handle_http(stream: trio.SocketStream) -> None:
        try:
            await serve_rest_connection(stream, sim.api, 0.0)
        except Exception:
            log.exception("HTTP connection crashed")

    async with trio.open_nursery() as nursery:
        ws_listeners = await nursery.start(serve_market_channel, sim)
        http_listeners = await nursery.start(partial(trio.serve_tcp, handle_http, config.http_port, host=config.host))
        sim.ws_url = f"ws://{_address(ws_listeners)}/ws/market"
        sim.http_url = f"http://{_address(http_listeners)}"
        nursery.start_soon(sim.generate)
        if config.drop_every_s:
            nursery.start_soon(sim.drop_periodically, config.drop_every_s)
        task_status.started(sim)


def _address(listeners) -> str:
    host, port = listeners[0].socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
