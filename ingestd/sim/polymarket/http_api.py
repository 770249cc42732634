"""The simulated Data API (`GET /trades`), the CLOB's `GET /book`, and the `/_sim/` controls, as a
function of (method, target, time) -> response, served by ingestd.sim.rest_server's h11 server.

`/trades` follows data-api.polymarket.com: `user`, `market` (condition ids, comma-separated),
`limit` (<= 10000, default 100), `offset` (<= 10000), `takerOnly`, `side`, `start`/`end` (epoch
seconds, inclusive); newest first; rows shaped like the real ones. It allows `data_limit` requests
per `data_window_s` (the venue: 200 per 10 s) and answers 429 with Retry-After beyond that.
Faults while not calm: a share of requests refused with 429 (Retry-After: 1), a share answered
with a malformed body.
"""

from __future__ import annotations

import math
import random
from collections import deque
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import msgspec

from ingestd.sim.polymarket.market import Trade, price_text, size_text
from ingestd.sim.rest_api import RestResponse

if TYPE_CHECKING:
    from ingestd.sim.polymarket.server import PolySim

JSON = [("Content-Type", "application/json")]
MAX_LIMIT = 10_000
MAX_OFFSET = 10_000

_MALFORMED_BODIES = (
    b'[{"proxyWallet":"0x',  # cut short
    b"<html><body>502 Bad Gateway</body></html>",
    b'{"error":"internal"}',  # an object, not the list
)


def _json(status: int, value, headers: list[tuple[str, str]] | None = None) -> RestResponse:
    return RestResponse(status, msgspec.json.encode(value), JSON + (headers or []))


def _error(status: int, message: str) -> RestResponse:
    return _json(status, {"error": message})


def trade_row(t: Trade) -> dict:
    return {
        "proxyWallet": t.taker.address, "side": t.side, "asset": t.asset_id, "conditionId": t.condition_id,
        "size": t.shares, "price": t.price, "timestamp": t.ts_ms // 1000, "title": t.title, "slug": t.slug,
        "icon": "", "eventSlug": t.slug, "outcome": t.outcome, "outcomeIndex": t.outcome_index,
        "name": t.taker.pseudonym, "pseudonym": t.taker.pseudonym, "bio": "", "profileImage": "",
        "profileImageOptimized": "", "transactionHash": t.tx_hash,
    }


class HttpApi:
    def __init__(self, sim: PolySim) -> None:
        self.sim = sim
        self.config = sim.config
        self._window: deque[float] = deque()
        self._rng = random.Random(f"polymarket-data-api/{sim.config.seed}")

    def handle(self, method: str, target: str, now: float) -> RestResponse:
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        path = parts.path
        sim = self.sim
        if path.startswith("/_sim/"):
            return self._control(method, path)
        if method != "GET":
            return _error(405, "method not allowed")
        if path == "/trades":
            return self._trades(query, now)
        if path == "/book":
            asset = query.get("token_id", "")
            if asset not in sim.market.outcomes:
                return _error(404, "No orderbook exists for the requested token id")
            return _json(200, sim.rest_book(asset))
        return _error(404, "not found")

    def _control(self, method: str, path: str) -> RestResponse:
        sim = self.sim
        if method == "GET" and path == "/_sim/truth":
            return _json(200, sim.truth())
        if method == "GET" and path == "/_sim/stats":
            return _json(200, sim.stats())
        if method == "POST":
            action = {"/_sim/calm": sim.calm, "/_sim/pause": sim.pause, "/_sim/resume": sim.resume,
                      "/_sim/drop": sim.drop_connections}.get(path)
            if action is not None:
                return _json(200, action())
        return _error(404, "unknown control endpoint")

    def _trades(self, query: dict[str, str], now: float) -> RestResponse:
        sim, config = self.sim, self.config
        counters = sim.counters
        counters["data_requests"] += 1
        window = self._window
        while window and window[0] <= now - config.data_window_s:
            window.popleft()
        if len(window) >= config.data_limit:
            counters["data_429"] += 1
            retry = max(1, math.ceil(window[0] + config.data_window_s - now))
            return _json(429, {"error": "Too Many Requests"}, [("Retry-After", str(retry))])
        window.append(now)
        if sim.faults_on and config.data_429_rate and self._rng.random() < config.data_429_rate:
            counters["data_429"] += 1
            return _json(429, {"error": "Too Many Requests"}, [("Retry-After", "1")])
        if sim.faults_on and config.data_malformed_rate and self._rng.random() < config.data_malformed_rate:
            counters["data_malformed"] += 1
            return RestResponse(200, self._rng.choice(_MALFORMED_BODIES), JSON)
        try:
            limit = int(query.get("limit", "100"))
            offset = int(query.get("offset", "0"))
            start = int(query["start"]) if query.get("start") else None
            end = int(query["end"]) if query.get("end") else None
        except ValueError:
            return _error(400, "invalid number")
        if not 0 < limit <= MAX_LIMIT or not 0 <= offset <= MAX_OFFSET:
            return _error(400, f"limit must be 1..{MAX_LIMIT} and offset 0..{MAX_OFFSET}")
        user = query.get("user", "").lower()
        markets = {m for m in query.get("market", "").split(",") if m}
        side = query.get("side", "").upper()
        visible_before_ms = int(now * 1000) - config.data_lag_ms
        rows = []
        skipped = 0
        for t in reversed(sim.market.trades):  # newest first
            if t.ts_ms > visible_before_ms:
                continue
            ts = t.ts_ms // 1000
            if start is not None and ts < start:
                break  # older from here on
            if end is not None and ts > end:
                continue
            if user and t.taker.address != user:
                continue
            if markets and t.condition_id not in markets:
                continue
            if side and t.side != side:
                continue
            if skipped < offset:
                skipped += 1
                continue
            rows.append(trade_row(t))
            if len(rows) >= limit:
                break
        return _json(200, rows)


def rest_levels(levels: dict[int, int], *, ascending: bool) -> list[dict[str, str]]:
    """The CLOB REST book lists bids ascending and asks descending: the best is last."""
    return [{"price": price_text(t), "size": size_text(s)} for t, s in sorted(levels.items(), reverse=not ascending)]
