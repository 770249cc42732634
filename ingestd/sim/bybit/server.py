"""The simulated Bybit: the public linear WebSocket, the v5 market REST endpoints the feed uses, and
the /_sim/* control endpoints (on the REST port).

REST: GET /v5/market/tickers?category=linear[&symbol=]; GET /v5/market/recent-trade?category=linear
&symbol=&limit= (newest first, limit 1..1000, default 500). Errors as Bybit gives them: HTTP 200
with a non-zero retCode (10001 for a bad parameter).

Control: GET /_sim/truth (LinearMarket.truth()), GET /_sim/stats, POST /_sim/calm (faults off for
the rest of the run), /_sim/pause and /_sim/resume (the market stands still or moves on),
/_sim/drop (cut every WebSocket now). calm and pause answer with `ts`, the venue time of the last
message published, so a test can tell which messages came before and after.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import msgspec
import trio

from ingestd.digits import is_ascii_digits
from ingestd.sim.bybit.market import LinearMarket, symbol_names
from ingestd.sim.bybit.session import PATH, BybitSession
from ingestd.sim.http_server import DROP, FaultDice, HttpRequest, HttpResponse, HttpServer
from ingestd.sim.wall_clock import wall_ms
from ingestd.sim.ws_frames import text_frame

log = logging.getLogger(__name__)
_encode = msgspec.json.encode


@dataclass
class SimOptions:
    seed: int = 1
    perpetuals: int = 3
    futures: int = 0
    tick_ms: int = 100
    trade_rate: float = 20.0  # trades per second per contract
    quiet_rate: float = 0.2
    repeat_rate: float = 0.1
    funding_interval_s: float = 8 * 3600
    drop_every_s: float | None = None
    malformed_rate: float = 0.0
    http_429_rate: float = 0.0
    retry_after_s: int = 1
    rest_malformed_rate: float = 0.0
    rest_drop_rate: float = 0.0
    resnapshot_every_s: float | None = None
    idle_timeout_s: float = 60.0
    max_args_chars: int = 21_000
    max_args_per_request: int = 10


class BybitSim:
    def __init__(self, options: SimOptions) -> None:
        self.options = options
        symbols = symbol_names(options.perpetuals, options.futures)
        self.market = LinearMarket(
            symbols, options.seed, wall_ms(),
            funding_interval_ms=int(options.funding_interval_s * 1000), quiet_rate=options.quiet_rate,
            repeat_rate=options.repeat_rate, trades_per_tick=options.trade_rate * options.tick_ms / 1000,
        )
        self.sessions: set[BybitSession] = set()
        self._subscribers: dict[str, set[BybitSession]] = {}
        self.dice = FaultDice(options.seed, rate_limit=options.http_429_rate, malformed=options.rest_malformed_rate,
                              drop=options.rest_drop_rate)
        self.http = HttpServer(self.handle_http)
        self.counters: dict[str, int] = {}
        for name in ("connections_opened", "handshakes_rejected", "pings", "subscriptions", "unsubscriptions",
                     "subscribe_refused", "malformed_sent", "slow_consumer_closes", "idle_closes", "drops",
                     "resnapshots", "rest_requests", "rest_429", "rest_malformed", "rest_dropped"):
            self.counters[name] = 0
        self.faults_on = True
        self.paused = False
        self.max_sessions = 0
        self.ws_url = ""
        self.rest_url = ""

    # --- fan-out ------------------------------------------------------------------------------------

    def subscribe(self, session: BybitSession, topic: str) -> None:
        self._subscribers.setdefault(topic, set()).add(session)

    def unsubscribe(self, session: BybitSession, topic: str) -> None:
        self._subscribers.get(topic, set()).discard(session)

    def tick(self) -> None:
        """Advance the market one step and publish what it produced."""
        ts = max(wall_ms(), self.market.last_ts + 1)
        for message in self.market.step(ts):
            subscribers = self._subscribers.get(message.topic)
            if not subscribers:
                continue
            frame = text_frame(message.payload)
            for session in list(subscribers):
                session.send_data(message.topic, frame, message.ts_ms)
        self.max_sessions = max(self.max_sessions, len(self.sessions))

    def drop_connections(self) -> int:
        sessions = list(self.sessions)
        for session in sessions:
            session.abort("dropped on purpose (--drop-every or /_sim/drop)")
        self.counters["drops"] += len(sessions)
        return len(sessions)

    # --- tasks --------------------------------------------------------------------------------------

    async def serve_ws(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        ids = itertools.count(1)

        async def handle(stream: trio.SocketStream) -> None:
            try:
                await BybitSession(self, stream, next(ids)).run()
            except Exception:
                log.exception("WebSocket session crashed")

        await trio.serve_tcp(handle, port, host=host, task_status=task_status)

    async def run_market(self) -> None:
        step = self.options.tick_ms / 1000
        while True:
            await trio.sleep(step)
            if not self.paused:
                self.tick()

    async def run_faults(self) -> None:
        async with trio.open_nursery() as nursery:
            if self.options.drop_every_s:
                nursery.start_soon(self._every, self.options.drop_every_s, self.drop_connections)
            if self.options.resnapshot_every_s:
                nursery.start_soon(self._every, self.options.resnapshot_every_s, self._resnapshot)

    async def _every(self, period_s: float, action) -> None:
        while self.faults_on:
            await trio.sleep(period_s)
            if self.faults_on and not self.paused:
                action()

    def _resnapshot(self) -> None:
        for session in list(self.sessions):
            session.resend_snapshots()
        self.counters["resnapshots"] += 1

    # --- HTTP: REST and control ----------------------------------------------------------------------

    async def handle_http(self, req: HttpRequest):
        if req.path.startswith("/_sim/"):
            return self._control(req)
        if req.method != "GET" or req.path not in ("/v5/market/tickers", "/v5/market/recent-trade"):
            return HttpResponse.json(b'{"retCode":10404,"retMsg":"Not found"}', 404)
        self.counters["rest_requests"] += 1
        fault = self.dice.roll()
        if fault == "drop":
            self.counters["rest_dropped"] += 1
            return DROP
        if fault == "rate_limit":
            self.counters["rest_429"] += 1
            return HttpResponse.json(b'{"retCode":10006,"retMsg":"Too many visits!"}', 429,
                                     [("Retry-After", str(self.options.retry_after_s))])
        body = self._market_answer(req)
        if fault == "malformed":
            self.counters["rest_malformed"] += 1
            body = body[: len(body) // 2]
        return HttpResponse.json(body)

    def _market_answer(self, req: HttpRequest) -> bytes:
        q = req.query
        if q.get("category") != "linear":
            return _error(10001, "params error: category only support linear in this simulator")
        symbol = q.get("symbol")
        if symbol is not None and symbol not in self.market.contracts:
            return _error(10001, "params error: symbol invalid")
        if req.path == "/v5/market/tickers":
            return _ok({"category": "linear", "list": self.market.tickers(symbol)})
        if symbol is None:
            return _error(10001, "params error: symbol is required")
        limit_text = q.get("limit", "500")
        if not is_ascii_digits(limit_text) or not 1 <= int(limit_text) <= 1000:
            return _error(10001, "params error: limit must be 1 to 1000")
        return _ok({"category": "linear", "list": self.market.recent_trades(symbol, int(limit_text))})

    def _control(self, req: HttpRequest) -> HttpResponse:
        name = req.path.removeprefix("/_sim/")
        if req.method == "GET" and name == "truth":
            return HttpResponse.json(_encode(self.market.truth()))
        if req.method == "GET" and name == "stats":
            return HttpResponse.json(_encode(self.stats()))
        if req.method != "POST":
            return HttpResponse.json(b'{"error":"not found"}', 404)
        if name == "calm":
            self.faults_on = False
            self.dice.calm()
            return HttpResponse.json(_encode({"calm": True, "ts": self.market.last_ts}))
        if name == "pause":
            self.paused = True
            return HttpResponse.json(_encode({"paused": True, "ts": self.market.last_ts}))
        if name == "resume":
            self.paused = False
            return HttpResponse.json(_encode({"paused": False, "ts": self.market.last_ts}))
        if name == "drop":
            return HttpResponse.json(_encode({"dropped": self.drop_connections()}))
        return HttpResponse.json(b'{"error":"not found"}', 404)

    def stats(self) -> dict:
        return {**self.counters, **self.market.stats(), "connections_open": len(self.sessions),
                "max_connections": self.max_sessions, "faults_on": self.faults_on, "paused": self.paused}


async def serve(options: SimOptions, host: str = "127.0.0.1", *, ws_port: int = 0, rest_port: int = 0,
                task_status: trio.TaskStatus[BybitSim] = trio.TASK_STATUS_IGNORED) -> None:
    """Run the whole simulator until cancelled; reports the BybitSim, its `ws_url` and `rest_url` set."""
    sim = BybitSim(options)
    async with trio.open_nursery() as nursery:
        ws = await nursery.start(sim.serve_ws, host, ws_port)
        http = await nursery.start(sim.http.serve, host, rest_port)
        sim.ws_url = f"ws://{host}:{ws[0].socket.getsockname()[1]}{PATH}"
        sim.rest_url = f"http://{host}:{http[0].socket.getsockname()[1]}"
        nursery.start_soon(sim.run_market)
        nursery.start_soon(sim.run_faults)
        task_status.started(sim)


def _ok(result: dict) -> bytes:
    return _encode({"retCode": 0, "retMsg": "OK", "result": result, "retExtInfo": {}, "time": wall_ms()})


def _error(code: int, message: str) -> bytes:
    return _encode({"retCode": code, "retMsg": message, "result": {}, "retExtInfo": {}, "time": wall_ms()})


__all__ = ["BybitSim", "SimOptions", "PATH", "serve"]
