"""The simulator's market model: deterministic, internally consistent, and a faithful REST view."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.sim.depth_coalescer import DepthCoalescer
from ingestd.sim.fixed_point import render
from ingestd.sim.instruments import default_symbols
from ingestd.sim.market import Market, agg_trade_from_trade

SYMBOLS = ["BTCUSDT", "ETHUSDT", "XRPUSDT"]


def run_events(market: Market, count: int, start_ms: int = 1_700_000_000_000) -> list:
    return [market.step(start_ms + i) for i in range(count)]


def apply_diff(book: dict[str, dict[str, str]], update: dict) -> None:
    for side, key in (("bids", "b"), ("asks", "a")):
        for price, qty in update[key]:
            if Decimal(qty) == 0:
                book[side].pop(price, None)
            else:
                book[side][price] = qty


def as_book(snapshot: dict) -> dict[str, dict[str, str]]:
    return {"bids": dict(map(tuple, snapshot["bids"])), "asks": dict(map(tuple, snapshot["asks"]))}


def test_same_seed_same_market_different_seed_different_market():
    first = run_events(Market(SYMBOLS, seed=7), 2000)
    second = run_events(Market(SYMBOLS, seed=7), 2000)
    other = run_events(Market(SYMBOLS, seed=8), 2000)
    assert first == second
    assert first != other


def test_a_symbols_history_does_not_depend_on_other_symbols():
    alone, crowded = Market(["BTCUSDT"], seed=3), Market(["ETHUSDT", "BTCUSDT", "SOLUSDT"], seed=3)
    for i in range(300):
        crowded.step_trade("ETHUSDT", i)
        assert alone.step_trade("BTCUSDT", i) == crowded.step_trade("BTCUSDT", i)
        assert alone.step_depth("BTCUSDT", i) == crowded.step_depth("BTCUSDT", i)


def test_trade_ids_are_contiguous_per_symbol_and_the_truth_holds_them_all():
    market = Market(SYMBOLS, seed=1, depth_ratio=0.3)
    seen: dict[str, list[int]] = {}
    for event in run_events(market, 3000):
        if event.kind == "trade":
            seen.setdefault(event.symbol, []).append(event.payload["t"])
    for symbol, ids in seen.items():
        assert ids == list(range(ids[0], ids[0] + len(ids)))
        assert list(market.trade_ids(symbol)) == ids
    assert market.trade_count() == sum(map(len, seen.values()))


def test_trade_payload_has_binance_fields_and_decimal_strings():
    payload = Market(["XRPUSDT"], seed=1).step_trade("XRPUSDT", 1_700_000_000_123)
    assert list(payload) == ["e", "E", "s", "t", "p", "q", "T", "m", "M"]
    assert payload["e"] == "trade" and payload["s"] == "XRPUSDT" and payload["M"] is True
    assert payload["E"] == payload["T"] == 1_700_000_000_123
    for field in ("p", "q"):
        whole, dot, frac = payload[field].partition(".")
        assert dot and len(frac) == 8 and Decimal(payload[field]) > 0
    agg = agg_trade_from_trade(payload)
    assert agg["e"] == "aggTrade" and agg["a"] == agg["f"] == agg["l"] == payload["t"]


def test_depth_update_ids_are_contiguous_and_count_the_changed_levels():
    market = Market(SYMBOLS, seed=2, depth_ratio=1.0)
    last_u: dict[str, int] = {s: market.last_update_id(s) for s in SYMBOLS}
    for event in run_events(market, 2000):
        update = event.payload
        assert update["e"] == "depthUpdate"
        assert update["U"] == last_u[event.symbol] + 1
        assert update["u"] - update["U"] + 1 == len(update["b"]) + len(update["a"]) >= 1
        last_u[event.symbol] = update["u"]
    assert last_u == {s: market.last_update_id(s) for s in SYMBOLS}


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), steps=st.integers(1, 400), taken_after=st.integers(0, 100))
def test_diffs_applied_to_an_earlier_snapshot_reproduce_the_reference_book(seed, steps, taken_after):
    market = Market(["BTCUSDT"], seed=seed, depth_ratio=0.8)
    for i in range(taken_after):
        market.step(i)
    snapshot = market.depth_snapshot("BTCUSDT", limit=1000)
    book, local_id = as_book(snapshot), snapshot["lastUpdateId"]
    for i in range(steps):
        event = market.step(1000 + i)
        if event.kind == "depth":
            assert event.payload["U"] == local_id + 1
            apply_diff(book, event.payload)
            local_id = event.payload["u"]
    reference = market.depth_snapshot("BTCUSDT", limit=None)
    assert local_id == reference["lastUpdateId"]
    assert book == as_book(reference)


def test_coalesced_diffs_reproduce_the_book_too():
    market = Market(["ETHUSDT"], seed=5, depth_ratio=1.0)
    snapshot = market.depth_snapshot("ETHUSDT", limit=None)
    book = as_book(snapshot)
    coalescer = DepthCoalescer("ETHUSDT")
    for i in range(500):
        coalescer.add(market.step_depth("ETHUSDT", i))
        if i % 37 == 0:
            merged = coalescer.flush(i)
            apply_diff(book, merged)
    merged = coalescer.flush(999)
    assert merged is not None and coalescer.flush(1000) is None
    apply_diff(book, merged)
    assert merged["u"] == market.last_update_id("ETHUSDT")
    assert book == as_book(market.depth_snapshot("ETHUSDT", limit=None))


def test_best_bid_stays_below_best_ask_and_book_size_stays_bounded():
    market = Market(SYMBOLS, seed=11, depth_ratio=1.0, min_levels=20, max_levels=60)
    for i in range(20_000):
        event = market.step(i)
        if i % 100 == 0:
            book = market.depth_snapshot(event.symbol, limit=None)
            assert Decimal(book["bids"][0][0]) < Decimal(book["asks"][0][0])
            assert 20 <= len(book["bids"]) <= 60 and 20 <= len(book["asks"]) <= 60
            prices = [Decimal(p) for p, _ in book["bids"]]
            assert prices == sorted(prices, reverse=True)


def test_a_depth_1000_snapshot_is_the_whole_book():
    market = Market(["BTCUSDT"], seed=1)
    assert market.depth_snapshot("BTCUSDT", 1000) == market.depth_snapshot("BTCUSDT", None)
    assert len(market.depth_snapshot("BTCUSDT", 5)["asks"]) == 5


def test_trades_print_at_the_touch():
    market = Market(["BTCUSDT"], seed=4, depth_ratio=0.0)
    book = market.depth_snapshot("BTCUSDT", 1)
    trade = market.step_trade("BTCUSDT", 0)
    expected = book["bids"][0][0] if trade["m"] else book["asks"][0][0]
    assert trade["p"] == expected


def test_historical_trades_pages_from_an_id_and_defaults_to_the_most_recent():
    market = Market(["BTCUSDT"], seed=1)
    trades = [market.step_trade("BTCUSDT", 1000 + i) for i in range(50)]
    first = trades[0]["t"]
    page = market.historical_trades("BTCUSDT", from_id=first + 10, limit=5)
    assert [t["id"] for t in page] == list(range(first + 10, first + 15))
    assert page[0]["price"] == trades[10]["p"] and page[0]["qty"] == trades[10]["q"]
    assert page[0]["time"] == 1010 and page[0]["isBuyerMaker"] == trades[10]["m"] and page[0]["isBestMatch"]
    assert Decimal(page[0]["quoteQty"]) == (Decimal(trades[10]["p"]) * Decimal(trades[10]["q"])).quantize(
        Decimal("0.00000001"), rounding="ROUND_DOWN"
    )
    assert [t["id"] for t in market.historical_trades("BTCUSDT", limit=3)] == [first + 47, first + 48, first + 49]
    assert market.historical_trades("BTCUSDT", from_id=first + 48, limit=10)[-1]["id"] == first + 49
    assert market.historical_trades("BTCUSDT", from_id=first + 50) == []
    # A fromId older than every trade starts at the oldest one.
    assert market.historical_trades("BTCUSDT", from_id=1, limit=2)[0]["id"] == first


def test_paging_historical_trades_walks_the_whole_history():
    market = Market(["ETHUSDT"], seed=9)
    for i in range(2345):
        market.step_trade("ETHUSDT", i)
    ids, cursor = [], market.trade_ids("ETHUSDT")[0]
    while page := market.historical_trades("ETHUSDT", from_id=cursor, limit=1000):
        ids += [t["id"] for t in page]
        cursor = page[-1]["id"] + 1
    assert ids == list(market.trade_ids("ETHUSDT"))


def test_agg_trades_are_one_trade_each_and_page_by_id_or_time():
    market = Market(["BTCUSDT"], seed=1)
    trades = [market.step_trade("BTCUSDT", 1000 + 10 * i) for i in range(30)]
    first = trades[0]["t"]
    page = market.agg_trades("BTCUSDT", from_id=first + 3, limit=2)
    assert page == [
        {"a": t["t"], "p": t["p"], "q": t["q"], "f": t["t"], "l": t["t"], "T": t["T"], "m": t["m"], "M": True}
        for t in trades[3:5]
    ]
    by_time = market.agg_trades("BTCUSDT", start_time=1050, end_time=1080, limit=100)
    assert [a["a"] for a in by_time] == [first + 5, first + 6, first + 7, first + 8]
    assert [a["a"] for a in market.agg_trades("BTCUSDT", limit=2)] == [first + 28, first + 29]


def test_halted_symbols_keep_a_book_but_make_no_events():
    market = Market(["BTCUSDT", "ETHUSDT"], seed=1, halted={"ETHUSDT"})
    assert {event.symbol for event in run_events(market, 500)} == {"BTCUSDT"}
    assert market.depth_snapshot("ETHUSDT", 5)["bids"]


def test_unknown_symbols_raise_key_error():
    with pytest.raises(KeyError):
        Market(["BTCUSDT"], seed=1).depth_snapshot("NOPEUSDT")


def test_default_symbols_start_real_looking_then_synthetic():
    names = default_symbols(15)
    assert names[:5] == ["BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT"]
    assert names[-2:] == ["SYM000USDT", "SYM001USDT"] and len(set(names)) == 15


@pytest.mark.parametrize(
    "units, decimals, text",
    [
        (6500000, 2, "65000.00000000"),
        (5200, 4, "0.52000000"),
        (1, 13, "0.00000000"),
        (123456789, 10, "0.01234567"),
        (7, 0, "7.00000000"),
    ],
)
def test_fixed_point_rendering(units, decimals, text):
    assert render(units, decimals) == text
