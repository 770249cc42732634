"""The simulated Bybit linear market, sans I/O: contracts whose tickers move, trades, ground truth.

`step(ts_ms)` advances every contract by one tick and returns the messages to publish: a ticker
`delta` carrying only the fields that changed (a missing field is unchanged, as on Bybit; now and
then an unchanged derivative field is repeated, which must not count as a change), and a
`publicTrade` batch. A contract may stay quiet for a tick (no message at all), which is what makes a
consumer's time-based samples interesting. Perpetuals carry funding (rate, next time, rolling over
every funding interval); dated futures ("BTC-26DEC25") carry `basis` and no funding.

Deterministic from the seed: the same seed and the same number of steps give the same values; only
the timestamps follow the wall clock. Every ticker message's merged derivative state and every
trade are kept for `truth()`.
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass, field

import msgspec

# What a consumer stores from a ticker (the feed's Derivative fields), recorded in the truth.
DERIVATIVE_KEYS = ("markPrice", "indexPrice", "openInterest", "openInterestValue", "fundingRate",
                   "nextFundingTime", "basis")
PERPETUALS = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "DOGEUSDT", "BNBUSDT", "ADAUSDT", "1000PEPEUSDT")
FUTURES = ("BTC-26DEC25", "ETH-26DEC25", "SOL-26DEC25")
_START_PRICES = {"BTC": 64000.0, "ETH": 3100.0, "SOL": 150.0, "XRP": 0.52, "DOGE": 0.12, "BNB": 580.0,
                 "ADA": 0.45, "1000PEPE": 0.011}
_NAMESPACE = uuid.UUID("5f0c1c8e-6a4b-5b7e-9a57-3f1f6c1b2d00")
_encode = msgspec.json.encode


def symbol_names(perpetuals: int, futures: int) -> list[str]:
    perps = list(PERPETUALS[:perpetuals]) + [f"SYN{i}USDT" for i in range(len(PERPETUALS), perpetuals)]
    return perps + list(FUTURES[:futures]) + [f"SYN{i}-26DEC25" for i in range(len(FUTURES), futures)]


@dataclass
class Published:
    topic: str
    payload: bytes
    ts_ms: int


@dataclass
class _Contract:
    symbol: str
    dated: bool
    rng: random.Random
    decimals: int
    last: float
    mark: float
    index: float
    open_interest: float
    funding_rate: float
    next_funding_ms: int
    delivery_ms: int
    volume: float = 0.0
    turnover: float = 0.0
    ts_ms: int = 0
    cs: int = 0
    trades_made: int = 0
    trade_seq: int = 0
    fields: dict[str, str] = field(default_factory=dict)  # the ticker as a snapshot shows it
    history: list[dict] = field(default_factory=list)  # truth: every published ticker state
    trades: list[dict] = field(default_factory=list)  # truth: every trade, oldest first


class LinearMarket:
    def __init__(
        self,
        symbols: list[str],
        seed: int,
        start_ms: int,
        *,
        funding_interval_ms: int = 8 * 3600 * 1000,
        quiet_rate: float = 0.2,
        repeat_rate: float = 0.1,
        trades_per_tick: float = 2.0,
    ) -> None:
        self.seed = seed
        self.funding_interval_ms = funding_interval_ms
        self.quiet_rate = quiet_rate
        self.repeat_rate = repeat_rate
        self.trades_per_tick = trades_per_tick
        self.last_ts = start_ms
        self.contracts: dict[str, _Contract] = {}
        for symbol in symbols:
            self.contracts[symbol] = self._new_contract(symbol, start_ms)

    @property
    def symbols(self) -> tuple[str, ...]:
        return tuple(self.contracts)

    def _new_contract(self, symbol: str, start_ms: int) -> _Contract:
        rng = random.Random(f"{self.seed}:{symbol}")
        base = symbol.split("-")[0].removesuffix("USDT")
        price = _START_PRICES.get(base, 10.0 + rng.random() * 90)
        decimals = max(1, min(6, 4 - int(math.floor(math.log10(price)))))
        dated = "-" in symbol
        interval = self.funding_interval_ms
        c = _Contract(
            symbol=symbol, dated=dated, rng=rng, decimals=decimals, last=price,
            mark=price * (1 + rng.gauss(0, 1e-4)), index=price * (1 + rng.gauss(0, 2e-4)),
            open_interest=round(rng.uniform(1e4, 1e6) / price * 100, 3),
            funding_rate=0.0001, next_funding_ms=(start_ms // interval + 1) * interval,
            delivery_ms=start_ms + 90 * 86_400_000, ts_ms=start_ms, cs=rng.randrange(1 << 30, 1 << 34),
        )
        c.fields = self._fields(c)
        self._record(c, "snapshot")
        return c

    # --- evolution --------------------------------------------------------------------------------

    def step(self, ts_ms: int) -> list[Published]:
        """Advance every contract to venue time ts_ms (> the previous step's)."""
        assert ts_ms > self.last_ts, "venue time must move forward"
        prev_ts, self.last_ts = self.last_ts, ts_ms
        out: list[Published] = []
        for c in self.contracts.values():
            out.extend(self._step_contract(c, prev_ts, ts_ms))
        return out

    def _step_contract(self, c: _Contract, prev_ts: int, ts_ms: int) -> list[Published]:
        r = c.rng
        if r.random() < self.quiet_rate:
            return []
        out: list[Published] = []
        if r.random() < 0.7:
            c.last *= math.exp(r.gauss(0, 5e-4))
        if r.random() < 0.5:
            c.mark = c.last * (1 + r.gauss(0, 2e-4))
        if r.random() < 0.4:
            c.index = c.last * (1 + r.gauss(0, 3e-4))
        if r.random() < 0.3:
            c.open_interest = max(0.0, c.open_interest * (1 + r.gauss(0, 1e-3)))
        if not c.dated:
            if r.random() < 0.05:
                c.funding_rate = max(-0.0375, min(0.0375, c.funding_rate + r.gauss(0, 2e-5)))
            while ts_ms >= c.next_funding_ms:
                c.next_funding_ms += self.funding_interval_ms
        trades = self._make_trades(c, prev_ts, ts_ms)
        old = c.fields
        c.fields = self._fields(c)
        delta = {k: v for k, v in c.fields.items() if old.get(k) != v}
        if delta and r.random() < self.repeat_rate:
            unchanged = [k for k in DERIVATIVE_KEYS if k in old and k not in delta]
            if unchanged:
                key = r.choice(unchanged)
                delta[key] = old[key]  # present but unchanged: not a change
        if delta:
            c.ts_ms = ts_ms
            c.cs += r.randint(1, 50)
            data = {"symbol": c.symbol, **delta}
            message = {"topic": f"tickers.{c.symbol}", "type": "delta", "data": data, "cs": c.cs, "ts": ts_ms}
            out.append(Published(f"tickers.{c.symbol}", _encode(message), ts_ms))
            self._record(c, "delta")
        if trades:
            message = {"topic": f"publicTrade.{c.symbol}", "type": "snapshot", "ts": ts_ms, "data": trades}
            out.append(Published(f"publicTrade.{c.symbol}", _encode(message), ts_ms))
        return out

    def _make_trades(self, c: _Contract, prev_ts: int, ts_ms: int) -> list[dict]:
        r = c.rng
        count = _poisson(r, self.trades_per_tick)
        times = sorted(r.randint(prev_ts + 1, ts_ms) for _ in range(count))
        made = []
        for t in times:
            price = round(c.last * (1 + r.gauss(0, 1e-4)), c.decimals)
            qty = round(r.expovariate(1.0) * 1000 / c.last + 10 ** -3, 3)
            side = "Buy" if r.random() < 0.5 else "Sell"
            c.trades_made += 1
            c.trade_seq += r.randint(1, 3)
            trade = {
                "T": t, "s": c.symbol, "S": side, "v": f"{qty:.3f}", "p": f"{price:.{c.decimals}f}",
                "L": "PlusTick" if side == "Buy" else "MinusTick",
                "i": str(uuid.uuid5(_NAMESPACE, f"{self.seed}/{c.symbol}/{c.trades_made}")),
                "BT": False, "seq": c.trade_seq,
            }
            made.append(trade)
            c.trades.append({"i": trade["i"], "T": t, "p": trade["p"], "v": trade["v"], "S": side})
            c.volume += qty
            c.turnover += qty * price
        return made

    def _fields(self, c: _Contract) -> dict[str, str]:
        d = c.decimals
        fields = {
            "symbol": c.symbol,
            "lastPrice": f"{c.last:.{d}f}",
            "markPrice": f"{c.mark:.{d}f}",
            "indexPrice": f"{c.index:.{d}f}",
            "openInterest": f"{c.open_interest:.3f}",
            "openInterestValue": f"{c.open_interest * c.mark:.2f}",
            "turnover24h": f"{c.turnover:.4f}",
            "volume24h": f"{c.volume:.3f}",
            "bid1Price": f"{c.last - 10 ** -d:.{d}f}",
            "bid1Size": "1.000",
            "ask1Price": f"{c.last:.{d}f}",
            "ask1Size": "1.000",
        }
        if c.dated:
            fields.update({
                "fundingRate": "", "nextFundingTime": "0",
                "basis": f"{c.last - c.index:.{d}f}",
                "basisRate": f"{(c.last - c.index) / c.index:.8f}",
                "deliveryTime": str(c.delivery_ms),
            })
        else:
            fields.update({
                "fundingRate": f"{c.funding_rate:.6f}", "nextFundingTime": str(c.next_funding_ms),
                "fundingIntervalHour": str(max(1, self.funding_interval_ms // 3_600_000)),
            })
        return fields

    def _record(self, c: _Contract, kind: str) -> None:
        state = {k: c.fields[k] for k in DERIVATIVE_KEYS if k in c.fields}
        c.history.append({"ts": c.ts_ms, "type": kind, "state": state})

    # --- what a subscriber or REST client sees ------------------------------------------------------

    def snapshot(self, symbol: str) -> bytes:
        """A tickers snapshot: the whole current ticker, stamped with the time of its state."""
        c = self.contracts[symbol]
        message = {"topic": f"tickers.{symbol}", "type": "snapshot", "data": dict(c.fields), "cs": c.cs,
                   "ts": c.ts_ms}
        return _encode(message)

    def tickers(self, symbol: str | None = None) -> list[dict[str, str]]:
        chosen = self.contracts.values() if symbol is None else [self.contracts[symbol]]
        return [dict(c.fields) for c in chosen]

    def recent_trades(self, symbol: str, limit: int) -> list[dict]:
        """Newest first, in /v5/market/recent-trade's shape."""
        c = self.contracts[symbol]
        return [
            {"execId": t["i"], "symbol": symbol, "price": t["p"], "size": t["v"], "side": t["S"],
             "time": str(t["T"]), "isBlockTrade": False, "isRPITrade": False}
            for t in reversed(c.trades[-limit:])
        ]

    def is_topic(self, topic: str) -> bool:
        channel, _, symbol = topic.partition(".")
        return channel in ("tickers", "publicTrade") and symbol in self.contracts

    def truth(self) -> dict:
        """Every ticker state published (oldest first; `state` holds the derivative fields after the
        message at `ts`), and every trade made, per symbol."""
        return {
            "tickers": {s: c.history for s, c in self.contracts.items()},
            "trades": {s: c.trades for s, c in self.contracts.items()},
            "last_ts": self.last_ts,
        }

    def stats(self) -> dict:
        return {
            "ticker_messages": sum(len(c.history) - 1 for c in self.contracts.values()),
            "trades_made": sum(c.trades_made for c in self.contracts.values()),
            "last_ts": self.last_ts,
        }


def _poisson(r: random.Random, mean: float) -> int:
    if mean <= 0:
        return 0
    limit, k, p = math.exp(-mean), 0, r.random()
    while p > limit:
        k += 1
        p *= r.random()
    return k
