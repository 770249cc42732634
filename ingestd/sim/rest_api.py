"""The simulated Binance REST API as a pure function of (method, target, time) -> response.

Public endpoints follow binance-spot-api-docs rest-api.md: request weights, `X-MBX-USED-WEIGHT-1M` on
every response, 429 then 418 with `Retry-After`, and Binance's `{"code":..,"msg":..}` error bodies.
Endpoints under `/_sim/` are the simulator's own controls for tests; they cost no weight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import msgspec

from ingestd.digits import is_ascii_digits
from ingestd.sim.fixed_point import step_text
from ingestd.sim.request_weight import IM_A_TEAPOT, OK, TOO_MANY_REQUESTS, RequestWeightLimiter
from ingestd.sim.wall_clock import wall_ms

if TYPE_CHECKING:
    from ingestd.sim.server import Simulator

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
MAX_TRADES_LIMIT = 1000
MAX_DEPTH_LIMIT = 5000
EXCHANGE_INFO_WEIGHT = 20


@dataclass
class RestResponse:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)


class ApiError(Exception):
    """A Binance error reply: HTTP status plus the {"code", "msg"} body."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status
        self.code = code
        self.msg = msg


def depth_weight(limit: int) -> int:
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    if limit <= 1000:
        return 50
    return 250


class Params:
    """Query parameters with Binance's validation errors."""

    def __init__(self, query: str) -> None:
        self._values = {name: values[-1] for name, values in parse_qs(query, keep_blank_values=True).items()}

    def text(self, name: str) -> str | None:
        value = self._values.get(name)
        return value if value else None

    def required(self, name: str) -> str:
        value = self.text(name)
        if value is None:
            raise ApiError(400, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        return value

    def integer(self, name: str, default: int | None = None) -> int | None:
        value = self.text(name)
        if value is None:
            return default
        if not is_ascii_digits(value) or len(value) > 20:
            raise ApiError(
                400, -1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'."
            )
        return int(value)

    def trades_limit(self) -> int:
        limit = self.integer("limit", 500)
        assert limit is not None
        if not 1 <= limit <= MAX_TRADES_LIMIT:
            raise ApiError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        return limit


@dataclass(frozen=True)
class _Endpoint:
    weight: Callable[[Params], int]
    handler: Callable[[Params], Any]


class RestApi:
    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._market = sim.market
        config = sim.config
        self.limiter = RequestWeightLimiter(config.weight_limit, config.weight_window_s, config.ban_s)
        self._public: dict[str, _Endpoint] = {
            "/api/v3/ping": _Endpoint(lambda p: 1, lambda p: {}),
            "/api/v3/time": _Endpoint(lambda p: 1, lambda p: {"serverTime": wall_ms()}),
            "/api/v3/exchangeInfo": _Endpoint(lambda p: EXCHANGE_INFO_WEIGHT, self._exchange_info),
            "/api/v3/depth": _Endpoint(self._depth_weight, self._depth),
            "/api/v3/trades": _Endpoint(lambda p: 25, self._recent_trades),
            "/api/v3/historicalTrades": _Endpoint(lambda p: 25, self._historical_trades),
            "/api/v3/aggTrades": _Endpoint(lambda p: 4, self._agg_trades),
        }
        self._controls: dict[tuple[str, str], Callable[[Params], Any]] = {
            ("GET", "/_sim/truth"): self._truth,
            ("GET", "/_sim/book"): self._book,
            ("GET", "/_sim/stats"): lambda p: sim.stats(),
            ("POST", "/_sim/pause"): lambda p: sim.pause(),
            ("POST", "/_sim/resume"): lambda p: sim.resume(),
            ("POST", "/_sim/calm"): lambda p: sim.calm(),
            ("POST", "/_sim/drop"): lambda p: {"dropped": sim.drop_connections()},
            ("POST", "/_sim/shutdown"): lambda p: {"notified": sim.announce_shutdown()},
        }

    def handle(self, method: str, target: str, now: float) -> RestResponse:
        """Answer one request; `now` is wall-clock seconds (weight windows align to the clock)."""
        self._sim.counters.rest_requests += 1
        url = urlsplit(target)
        params = Params(url.query)
        extra_headers: list[tuple[str, str]] = []
        try:
            if url.path.startswith("/_sim/"):
                control = self._controls.get((method, url.path))
                if control is None:
                    raise ApiError(404, -1000, f"No simulator control {method} {url.path}")
                status, body = 200, control(params)
            else:
                status, body = self._public_call(method, url.path, params, now, extra_headers)
        except ApiError as exc:
            status, body = exc.status, {"code": exc.code, "msg": exc.msg}
        headers = [
            ("Content-Type", JSON_CONTENT_TYPE),
            ("X-MBX-USED-WEIGHT-1M", str(self.limiter.used_weight(now))),
            *extra_headers,
        ]
        return RestResponse(status, msgspec.json.encode(body), headers)

    def _public_call(
        self, method: str, path: str, params: Params, now: float, extra_headers: list[tuple[str, str]]
    ) -> tuple[int, Any]:
        endpoint = self._public.get(path)
        if endpoint is None:
            raise ApiError(404, -1000, f"Unknown endpoint {path}")
        if method != "GET":
            raise ApiError(405, -1000, f"Method {method} not allowed on {path}")
        admission = self.limiter.admit(endpoint.weight(params), now)
        if admission.status != OK:
            assert admission.retry_after_s is not None
            extra_headers.append(("Retry-After", str(admission.retry_after_s)))
            if admission.status == TOO_MANY_REQUESTS:
                self._sim.counters.http_429 += 1
                limit, window = self.limiter.limit, self._window_text()
                raise ApiError(
                    429,
                    -1003,
                    f"Too much request weight used; current limit is {limit} request weight per {window}. "
                    "Please use WebSocket Streams for live updates to avoid polling the API.",
                )
            assert admission.status == IM_A_TEAPOT and admission.banned_until is not None
            self._sim.counters.http_418 += 1
            raise ApiError(
                418,
                -1003,
                f"Way too much request weight used; IP banned until {math.ceil(admission.banned_until * 1000)}. "
                "Please use WebSocket Streams for live updates to avoid bans.",
            )
        return 200, endpoint.handler(params)

    # ----- public endpoints ---------------------------------------------------------------------

    def _symbol(self, params: Params) -> str:
        symbol = params.required("symbol")
        if symbol not in self._market.symbols:
            raise ApiError(400, -1121, "Invalid symbol.")
        return symbol

    def _exchange_info(self, params: Params) -> dict[str, Any]:
        symbols: list[str] = list(self._market.symbols)
        if params.text("symbol") is not None:
            symbols = [self._symbol(params)]
        elif params.text("symbols") is not None:
            try:
                requested = msgspec.json.decode(params.required("symbols"), type=list[str])
            except msgspec.DecodeError:
                raise ApiError(400, -1100, "Illegal characters found in parameter 'symbols'.") from None
            if any(symbol not in self._market.symbols for symbol in requested):
                raise ApiError(400, -1121, "Invalid symbol.")
            symbols = requested
        return {
            "timezone": "UTC",
            "serverTime": wall_ms(),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", **self._window_fields(), "limit": self.limiter.limit},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 100},
                {"rateLimitType": "ORDERS", "interval": "DAY", "intervalNum": 1, "limit": 200000},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 61000},
            ],
            "exchangeFilters": [],
            "symbols": [self._symbol_info(symbol) for symbol in symbols],
        }

    def _window_fields(self) -> dict[str, Any]:
        window = self.limiter.window_s
        if window % 60 == 0:
            return {"interval": "MINUTE", "intervalNum": int(window // 60)}
        return {"interval": "SECOND", "intervalNum": max(1, round(window))}

    def _window_text(self) -> str:
        fields = self._window_fields()
        return f"{fields['intervalNum']} {fields['interval']}"

    def _symbol_info(self, symbol: str) -> dict[str, Any]:
        instrument = self._market.instrument(symbol)
        tick, step = step_text(instrument.price_decimals), step_text(instrument.qty_decimals)
        return {
            "symbol": symbol,
            "status": self._sim.config.halted.get(symbol, "TRADING"),
            "baseAsset": instrument.base_asset,
            "baseAssetPrecision": 8,
            "quoteAsset": instrument.quote_asset,
            "quotePrecision": 8,
            "quoteAssetPrecision": 8,
            "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET"],
            "icebergAllowed": True,
            "ocoAllowed": True,
            "isSpotTradingAllowed": True,
            "isMarginTradingAllowed": False,
            "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": tick, "maxPrice": "1000000.00000000", "tickSize": tick},
                {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "9000.00000000", "stepSize": step},
            ],
            "permissions": [],
            "permissionSets": [["SPOT"]],
        }

    @staticmethod
    def _depth_limit(params: Params) -> int:
        try:
            limit = params.integer("limit", 100)
        except ApiError:
            limit = 100  # still charged; the handler reports the bad parameter
        assert limit is not None
        return min(max(limit, 1), MAX_DEPTH_LIMIT)

    def _depth_weight(self, params: Params) -> int:
        return depth_weight(self._depth_limit(params))

    def _depth(self, params: Params) -> dict[str, Any]:
        symbol = self._symbol(params)
        params.integer("limit")  # raise on a malformed limit
        return self._market.depth_snapshot(symbol, self._depth_limit(params))

    def _recent_trades(self, params: Params) -> list[dict[str, Any]]:
        symbol = self._symbol(params)
        return self._market.historical_trades(symbol, None, params.trades_limit())

    def _historical_trades(self, params: Params) -> list[dict[str, Any]]:
        symbol = self._symbol(params)
        return self._market.historical_trades(symbol, params.integer("fromId"), params.trades_limit())

    def _agg_trades(self, params: Params) -> list[dict[str, Any]]:
        symbol = self._symbol(params)
        return self._market.agg_trades(
            symbol,
            params.integer("fromId"),
            params.trades_limit(),
            start_time=params.integer("startTime"),
            end_time=params.integer("endTime"),
        )

    # ----- simulator controls -------------------------------------------------------------------

    def _truth(self, params: Params) -> dict[str, list[int]]:
        symbols = [self._symbol(params)] if params.text("symbol") is not None else self._market.symbols
        return {symbol: list(self._market.trade_ids(symbol)) for symbol in symbols}

    def _book(self, params: Params) -> dict[str, Any]:
        return self._market.depth_snapshot(self._symbol(params), None)
