"""CoinGecko protocol, sans-I/O: markets and chart bodies in, Price records and pair lists out."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.config import ConfigError, parse_config
from ingestd.venues.coingecko import protocol
from ingestd.venues.coingecko.backfill import Progress, windows
from ingestd.venues.coingecko.client import retry_after_s
from ingestd.venues.coingecko.schedule import next_fire

# A /coins/markets row in the API's shape (fields of venues.md section 7).
ROW = {"id": "bitcoin", "symbol": "btc", "name": "Bitcoin", "image": "https://x/btc.png", "current_price": 91234.5,
       "market_cap": 1805234567890, "market_cap_rank": 1, "fully_diluted_valuation": 1915000000000,
       "total_volume": 43211234567.0, "high_24h": 92000, "low_24h": 89000.25, "price_change_24h": -850.3,
       "price_change_percentage_24h": -0.92, "circulating_supply": 19787000.0, "ath": 93477, "atl": 67.81,
       "roi": None, "last_updated": "2024-11-14T17:30:00.123Z"}


def test_markets_row_becomes_a_price_at_last_updated():
    rows = protocol.decode_markets(json.dumps([ROW]).encode())
    price = protocol.price_of(rows[0], recv_us=7)
    assert price.ts_us == 1_731_605_400_123_000 and price.recv_us == 7
    assert (price.source, price.coin_id, price.symbol) == ("coingecko", "bitcoin", "BTC")
    assert (price.price_usd, price.market_cap, price.market_cap_rank, price.high_24h) == (91234.5, 1805234567890, 1, 92000)
    assert price.price_change_pct_24h == -0.92 and price.circulating_supply == 19787000.0


def test_nulls_stay_none_and_rows_without_a_time_are_skipped():
    row = {**ROW, "market_cap_rank": None, "high_24h": None}
    price = protocol.price_of(protocol.decode_markets(json.dumps([row]).encode())[0], 0)
    assert price.market_cap_rank is None and price.high_24h is None
    for bad in (None, "yesterday", "2024-11-14T17:30:00"):  # no zone: not a point in time
        assert protocol.price_of(protocol.decode_markets(json.dumps([{**ROW, "last_updated": bad}]).encode())[0], 0) is None


def test_errors_and_malformed_bodies_are_problems():
    error = b'{"status":{"error_code":429,"error_message":"You\'ve exceeded the Rate Limit."}}'
    assert protocol.decode_markets(error) == protocol.Problem("error", "You've exceeded the Rate Limit.")
    assert protocol.decode_markets(b'[{"id": "bitcoin", "symbol": "btc", "current_price": 6').kind == "malformed"
    assert protocol.decode_markets(b'[{"id": 5}]').kind == "malformed"


def test_market_chart_range():
    body = json.dumps({"prices": [[1731600000000, 90000.5], [1731603600000, 90100.0]],
                       "market_caps": [[1731600000000, 1.78e12], [1731603600000, 1.79e12]],
                       "total_volumes": [[1731600000000, 4.1e10]]}).encode()
    prices = protocol.decode_range(body, "bitcoin", "btc", recv_us=1)
    assert [(p.ts_us, p.price_usd, p.market_cap, p.total_volume, p.symbol) for p in prices] == [
        (1731600000000000, 90000.5, 1.78e12, 4.1e10, "BTC"), (1731603600000000, 90100.0, 1.79e12, None, "BTC")]
    assert protocol.decode_range(b'{"error":"coin not found"}', "x", "x", 0) == protocol.Problem("error", "coin not found")


def test_requests_and_key_headers():
    req = protocol.markets_request(2, ids=["bitcoin", "solana"])
    assert req.path == "/coins/markets"
    assert req.params == {"vs_currency": "usd", "order": "market_cap_desc", "per_page": "250", "page": "2",
                          "ids": "bitcoin,solana"}
    assert protocol.range_request("solana", 10, 20).params == {"vs_currency": "usd", "from": "10", "to": "20"}
    assert protocol.key_header("demo", "k") == {"x-cg-demo-api-key": "k"}
    assert protocol.key_header("pro", "k") == {"x-cg-pro-api-key": "k"}
    assert protocol.key_header("pro", "") == {}


def rows(*symbols):
    return [protocol.MarketRow(id=s.lower(), symbol=s.lower()) for s in symbols]


def test_discovery_maps_symbols_to_usdt_pairs_in_market_cap_order():
    found = protocol.candidate_pairs(rows("BTC", "ETH", "USDT", "BNB", "usd+", "ETH", "USDC"), quote="USDT",
                                     exclude=["USDC"])
    assert found == ["BTCUSDT", "ETHUSDT", "BNBUSDT"]  # USDTUSDT, USD+ (not a Binance symbol), USDC excluded


def test_pairs_limit_counts_the_fallback_pairs_which_always_come_first():
    candidates = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT"]
    assert protocol.pair_list(candidates, ["SOLUSDT", "BTCUSDT"], 3) == ["SOLUSDT", "BTCUSDT", "ETHUSDT"]
    assert protocol.pair_list(candidates, ["SOLUSDT", "BTCUSDT"], 1) == ["SOLUSDT", "BTCUSDT"]
    assert protocol.pair_list([], ["BTCUSDT"], 200) == ["BTCUSDT"]
    assert protocol.tradable(candidates, {"BTCUSDT": "TRADING", "ETHUSDT": "HALT"}) == ["BTCUSDT"]


def test_cron_schedule_and_retry_after():
    assert next_fire("*/5 * * * *", 1_700_000_100.0) == 1_700_000_400.0
    assert next_fire("* * * * * */10", 1_700_000_101.0) == 1_700_000_110.0
    assert retry_after_s("3") == 3.0 and retry_after_s(None) is None
    assert retry_after_s("Wed, 21 Oct 2015 07:28:00 GMT") is None


def test_config_names_the_bad_cron_key_and_the_seed_environment_variables_work():
    with pytest.raises(ConfigError) as caught:
        parse_config('[feeds.coingecko]\nprices_cron = "every five minutes"\n', environ={})
    assert caught.value.problems[0].startswith("feeds.coingecko.prices_cron: expected a cron expression")
    cfg = parse_config("[feeds.coingecko]\n", environ={"PAIRS_LIMIT": "50", "FALLBACK_PAIRS": "BTCUSDT,ETHUSDT",
                                                      "DISCOVERY_REFRESH_SEC": "1800"}).feeds["coingecko"]
    assert (cfg.pairs_limit, cfg.fallback_pairs, cfg.discovery_refresh_s) == (50, ("BTCUSDT", "ETHUSDT"), 1800.0)


def test_backfill_windows_and_plain_progress_lines(tmp_path):
    assert windows(0, 100, 40) == [(0, 39), (40, 79), (80, 100)]
    assert windows(0, 200 * 86_400) == [(0, 90 * 86_400 - 1), (90 * 86_400, 180 * 86_400 - 1),
                                         (180 * 86_400, 200 * 86_400)]
    with open(tmp_path / "err", "w") as out:
        progress = Progress(2, out)
        progress.step(5, "bitcoin")
        progress.step(7, "solana")
    lines = (tmp_path / "err").read_text().splitlines()
    assert lines[0].startswith("backfill coingecko: 1/2 requests, 5 prices")
    assert lines[-1].startswith("backfill coingecko: 2/2 requests, 12 prices")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data):
    markets = protocol.decode_markets(data)
    if not isinstance(markets, protocol.Problem):
        for row in markets:
            protocol.price_of(row, 0)
    assert isinstance(protocol.decode_range(data, "x", "x", 0), (list, protocol.Problem))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(ROW)), st.one_of(st.none(), st.text(max_size=30), st.integers(),
                                                                st.floats(allow_nan=False), st.booleans())))
def test_odd_field_values_never_raise(fields):
    result = protocol.decode_markets(json.dumps([{**ROW, **fields}]).encode())
    if not isinstance(result, protocol.Problem):
        protocol.price_of(result[0], 0)
        protocol.candidate_pairs(result, quote="USDT")
