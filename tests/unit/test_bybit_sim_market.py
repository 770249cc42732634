"""The simulated Bybit market (ingestd.sim.bybit.market): its messages and its ground truth agree."""

from __future__ import annotations

import json

from ingestd.sim.bybit.market import DERIVATIVE_KEYS, LinearMarket, symbol_names

START = 1_700_000_000_000


def run(steps: int, seed: int = 5, **kwargs) -> tuple[LinearMarket, list]:
    market = LinearMarket(symbol_names(2, 1), seed, START, **kwargs)
    published = []
    for i in range(1, steps + 1):
        published.extend(market.step(START + 100 * i))
    return market, published


def test_replaying_the_messages_reproduces_the_truth():
    market, published = run(300, funding_interval_ms=5_000, repeat_rate=0.3)
    truth = market.truth()
    for symbol in market.symbols:
        history = truth["tickers"][symbol]
        state = dict(history[0]["state"])
        deltas = [json.loads(p.payload) for p in published if p.topic == f"tickers.{symbol}"]
        assert len(deltas) == len(history) - 1 > 100
        for message, entry in zip(deltas, history[1:]):
            assert message["type"] == "delta" and message["ts"] == entry["ts"]
            state.update({k: v for k, v in message["data"].items() if k in DERIVATIVE_KEYS})
            assert state == entry["state"]
        trades = [t for p in published if p.topic == f"publicTrade.{symbol}" for t in json.loads(p.payload)["data"]]
        assert [t["i"] for t in trades] == [t["i"] for t in truth["trades"][symbol]]
        assert len({t["i"] for t in trades}) == len(trades)


def test_deltas_omit_unchanged_fields_and_contracts_go_quiet():
    market, published = run(200, quiet_rate=0.3, repeat_rate=0.0)
    deltas = [json.loads(p.payload)["data"] for p in published if p.topic.startswith("tickers.")]
    assert any("markPrice" not in d for d in deltas) and any("fundingRate" not in d for d in deltas)
    assert len(deltas) < 200 * 3 * 0.8  # quiet ticks publish nothing
    snapshot = json.loads(market.snapshot("BTCUSDT"))
    assert snapshot["type"] == "snapshot" and snapshot["ts"] == market.truth()["tickers"]["BTCUSDT"][-1]["ts"]
    assert set(DERIVATIVE_KEYS) - {"basis"} <= set(snapshot["data"])


def test_funding_rolls_over_and_futures_carry_basis():
    market, _ = run(120, funding_interval_ms=5_000)
    times = {e["state"]["nextFundingTime"] for e in market.truth()["tickers"]["BTCUSDT"]}
    assert len(times) >= 2
    future = market.truth()["tickers"]["BTC-26DEC25"][-1]["state"]
    assert future["fundingRate"] == "" and future["nextFundingTime"] == "0" and future["basis"] != ""


def test_the_same_seed_makes_the_same_market():
    a, pa = run(50, seed=9)
    b, pb = run(50, seed=9)
    c, _ = run(50, seed=10)
    assert [p.payload for p in pa] == [p.payload for p in pb]
    assert a.truth() == b.truth() != c.truth()


def test_recent_trades_are_newest_first():
    market, _ = run(50)
    page = market.recent_trades("ETHUSDT", 10)
    made = market.truth()["trades"]["ETHUSDT"]
    assert [t["execId"] for t in page] == [t["i"] for t in reversed(made[-10:])]
    assert page[0]["time"] == str(made[-1]["T"])
