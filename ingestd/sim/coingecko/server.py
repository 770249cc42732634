"""The simulated CoinGecko API: /api/v3/coins/markets and /api/v3/coins/{id}/market_chart/range,
plus the /_sim/* control endpoints.

Each coin's market data changes every --update-interval seconds (an "epoch"); its values and its
`last_updated` are a pure function of (seed, coin, epoch), and chart points of (seed, coin, time).
The ranking by market cap can be rearranged (POST /_sim/ranking) to make discovery see a new list.

Ground truth (GET /_sim/truth): every price row and chart point served in a successful answer,
each row tagged with how it was asked for ("ids" when the request named coins, else "top").
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from datetime import datetime, timezone

import trio

from ingestd.sim.http_server import DROP, FaultDice, HttpRequest, HttpResponse, HttpServer

# (id, symbol, name, price USD, market cap USD)
COINS: tuple[tuple[str, str, str, float, float], ...] = (
    ("bitcoin", "btc", "Bitcoin", 65000.0, 1.28e12),
    ("ethereum", "eth", "Ethereum", 3200.0, 3.85e11),
    ("tether", "usdt", "Tether", 1.0, 1.2e11),
    ("binancecoin", "bnb", "BNB", 580.0, 8.5e10),
    ("solana", "sol", "Solana", 150.0, 7.0e10),
    ("usd-coin", "usdc", "USDC", 1.0, 3.5e10),
    ("ripple", "xrp", "XRP", 0.52, 2.9e10),
    ("staked-ether", "steth", "Lido Staked Ether", 3199.0, 2.8e10),
    ("dogecoin", "doge", "Dogecoin", 0.12, 1.7e10),
    ("cardano", "ada", "Cardano", 0.45, 1.6e10),
    ("tron", "trx", "TRON", 0.12, 1.05e10),
    ("avalanche-2", "avax", "Avalanche", 35.0, 1.4e10),
    ("chainlink", "link", "Chainlink", 14.0, 8.5e9),
    ("polkadot", "dot", "Polkadot", 6.5, 9.0e9),
    ("litecoin", "ltc", "Litecoin", 80.0, 6.0e9),
    ("wrapped-bitcoin", "wbtc", "Wrapped Bitcoin", 64990.0, 9.9e9),
)
_RANGE = re.compile(r"^/api/v3/coins/(?P<id>[a-z0-9.-]+)/market_chart/range$")
SIM_EPOCH_TS = 1_731_600_000  # when epoch 0 of the simulated market starts (2024-11-14T16:00Z)


@dataclass
class SimOptions:
    seed: int = 1
    coins: int = len(COINS)  # the known coins, then synthetic ones
    update_interval_s: float = 60.0
    api_key: str = ""
    plan: str = "demo"
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    malformed_rate: float = 0.0
    drop_rate: float = 0.0


def coin_table(count: int) -> list[tuple[str, str, str, float, float]]:
    table = list(COINS[:count])
    for i in range(count - len(table)):
        table.append((f"coin-{i:03d}", f"c{i:03d}", f"Coin {i}", 1.0 + i, 5.0e8 / (i + 1)))
    return table


def _iso_ms(ts_ms: int) -> str:
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


class CoinGeckoSim:
    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.coins = {c[0]: c for c in coin_table(options.coins)}
        self.order = sorted(self.coins, key=lambda c: -self.coins[c][4])
        self.dice = FaultDice(options.seed, error=options.error_rate, rate_limit=options.rate_limit_rate,
                              malformed=options.malformed_rate, drop=options.drop_rate)
        self.server = HttpServer(self.handle)
        self._started = trio.current_time()
        self._frozen_epoch: int | None = None
        self.served_rows: dict[tuple[str, int, str], dict] = {}
        self.served_points: dict[tuple[str, int], list] = {}
        self.requests = 0

    def epoch(self) -> int:
        if self._frozen_epoch is not None:
            return self._frozen_epoch
        return int((trio.current_time() - self._started) / self.options.update_interval_s)

    def row(self, coin_id: str, epoch: int, rank: int) -> dict:
        cid, symbol, name, price, cap = self.coins[coin_id]
        rng = random.Random(f"{self.options.seed}:{coin_id}:{epoch}")
        p = round(price * (1 + rng.uniform(-0.03, 0.03)), 8)
        supply = round(cap / price, 2)
        offset_ms = rng.randrange(int(self.options.update_interval_s * 1000))
        updated_ms = int((SIM_EPOCH_TS + epoch * self.options.update_interval_s) * 1000) + offset_ms
        return {
            "id": cid, "symbol": symbol, "name": name, "image": f"https://example.invalid/{cid}.png",
            "current_price": p, "market_cap": round(p * supply, 2), "market_cap_rank": rank,
            "fully_diluted_valuation": None, "total_volume": round(cap * rng.uniform(0.01, 0.1), 2),
            "high_24h": round(p * 1.02, 8), "low_24h": round(p * 0.97, 8),
            "price_change_24h": round(p * rng.uniform(-0.05, 0.05), 8),
            "price_change_percentage_24h": round(rng.uniform(-5, 5), 5),
            "circulating_supply": supply, "total_supply": None, "max_supply": None, "ath": round(p * 1.5, 8),
            "atl": round(p * 0.01, 8), "roi": None, "last_updated": _iso_ms(updated_ms),
        }

    def chart_point(self, coin_id: str, ts_ms: int) -> tuple[float, float, float]:
        _, _, _, price, cap = self.coins[coin_id]
        rng = random.Random(f"{self.options.seed}:{coin_id}:chart:{ts_ms}")
        p = round(price * (1 + rng.uniform(-0.1, 0.1)), 8)
        return p, round(cap * p / price, 2), round(cap * rng.uniform(0.01, 0.1), 2)

    # --- HTTP -----------------------------------------------------------------------------------

    async def handle(self, req: HttpRequest):
        if req.path.startswith("/_sim/"):
            return self._control(req)
        if req.method != "GET":
            return _json({"error": "method not allowed"}, 405)
        opts = self.options
        if opts.api_key:
            header = "x-cg-pro-api-key" if opts.plan == "pro" else "x-cg-demo-api-key"
            if req.headers.get(header) != opts.api_key:
                return _json({"status": {"error_code": 10002, "error_message": f"missing or wrong {header}"}}, 401)
        self.requests += 1
        fault = self.dice.roll()
        if fault == "drop":
            return DROP
        if fault == "rate_limit":
            return _json({"status": {"error_code": 429, "error_message": "You've exceeded the Rate Limit."}}, 429,
                         [("Retry-After", str(opts.retry_after_s))])
        if fault == "error":
            return _json({"error": "upstream unavailable"}, 503)
        if fault == "malformed":
            return HttpResponse.json(b'[{"id": "bitcoin", "symbol": "btc", "current_price": 6', 200)
        if req.path == "/api/v3/coins/markets":
            return self._markets(req.query)
        match = _RANGE.match(req.path)
        if match:
            return self._range(match["id"], req.query)
        return _json({"error": "Incorrect path. Please check https://www.coingecko.com/api/"}, 404)

    def _markets(self, q: dict[str, str]) -> HttpResponse:
        if q.get("vs_currency") != "usd":
            return _json({"error": "invalid vs_currency"}, 400)
        try:
            per_page = int(q.get("per_page", "100"))
            page = int(q.get("page", "1"))
        except ValueError:
            return _json({"error": "invalid per_page or page"}, 400)
        if not 1 <= per_page <= 250 or page < 1:
            return _json({"error": "per_page must be 1 to 250"}, 400)
        epoch = self.epoch()
        ranks = {coin: i + 1 for i, coin in enumerate(self.order)}
        if q.get("ids"):
            chosen = [c for c in self.order if c in set(q["ids"].split(","))]
            via = "ids"
        else:
            chosen = list(self.order)
            via = "top"
        chosen = chosen[(page - 1) * per_page: page * per_page]
        rows = [self.row(c, epoch, ranks[c]) for c in chosen]
        for row in rows:
            key = (row["id"], epoch, via)
            self.served_rows.setdefault(key, {**row, "via": via})
        return _json(rows)

    def _range(self, coin_id: str, q: dict[str, str]) -> HttpResponse:
        if coin_id not in self.coins:
            return _json({"error": "coin not found"}, 404)
        try:
            start, end = int(float(q["from"])), int(float(q["to"]))
        except (KeyError, ValueError):
            return _json({"error": "from and to are required UNIX timestamps"}, 400)
        # CoinGecko's automatic granularity: 5-minutely within a day, hourly up to 90 days, else daily.
        span = end - start
        step = 300 if span <= 86_400 else 3600 if span <= 90 * 86_400 else 86_400
        first = -(-start // step) * step
        points = [(t * 1000, *self.chart_point(coin_id, t * 1000)) for t in range(first, end + 1, step)]
        for ms, p, cap, vol in points:
            self.served_points[(coin_id, ms)] = [coin_id, ms, p, cap, vol]
        return _json({"prices": [[ms, p] for ms, p, _, _ in points],
                      "market_caps": [[ms, cap] for ms, _, cap, _ in points],
                      "total_volumes": [[ms, vol] for ms, _, _, vol in points]})

    # --- control --------------------------------------------------------------------------------

    def _control(self, req: HttpRequest):
        name = req.path[len("/_sim/"):]
        if name == "truth" and req.method == "GET":
            return _json(self.truth())
        if req.method != "POST":
            return _json({"error": "unknown control endpoint"}, 404)
        if name == "calm":
            self.dice.calm()
            return _json({"calm": True})
        if name == "pause":
            self._frozen_epoch = self.epoch()
            return _json({"paused": True, "epoch": self._frozen_epoch})
        if name == "resume":
            if self._frozen_epoch is not None:
                self._started = trio.current_time() - self._frozen_epoch * self.options.update_interval_s
                self._frozen_epoch = None
            return _json({"paused": False})
        if name == "drop":
            return _json({"dropped": self.server.drop_all()})
        if name == "ranking":
            try:
                wanted = [c for c in json.loads(req.body or b"{}").get("order", []) if c in self.coins]
            except (ValueError, AttributeError):
                return _json({"error": 'expected {"order": [coin ids]}'}, 400)
            rest = sorted((c for c in self.coins if c not in wanted), key=lambda c: -self.coins[c][4])
            self.order = wanted + rest
            return _json({"order": self.order})
        return _json({"error": "unknown control endpoint"}, 404)

    def truth(self) -> dict:
        return {
            "prices": list(self.served_rows.values()),
            "chart": sorted(self.served_points.values()),
            "order": self.order,
            "epoch": self.epoch(),
            "requests": self.requests,
            "faults": dict(self.dice.counts),
        }


def _json(doc, status: int = 200, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    return HttpResponse.json(json.dumps(doc).encode(), status, headers)
