"""The subgraph protocol, sans-I/O: request bodies, responses in (bytes), reads or Problems out."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.venues.uniswap import protocol

POOL = "0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640"

# The shape of a real answer to the pool query (venues.md section 5: BigInt/BigDecimal as strings).
POOL_RESPONSE = json.dumps({"data": {
    "_meta": {"block": {"number": 21000123, "timestamp": 1730000000}},
    "bundle": {"ethPriceUSD": "2500.5"},
    "pool": {
        "id": POOL, "feeTier": "500", "liquidity": "22409718374653542064", "sqrtPrice": "1648326534402066540413283735424193",
        "tick": "198914", "totalValueLockedUSD": "311203221.1234",
        "token0": {"id": "0xa0b8", "symbol": "USDC", "decimals": "6", "derivedETH": "0.0003999"},
        "token1": {"id": "0xc02a", "symbol": "WETH", "decimals": "18", "derivedETH": "1"},
        "poolDayData": [{"date": 1729987200, "volumeUSD": "1000", "tvlUSD": "1"},
                        {"date": 1729900800, "volumeUSD": "2400", "tvlUSD": "1"}],
    }}}).encode()


def test_requests_carry_the_query_and_variables():
    body = json.loads(protocol.pool_request(POOL))
    assert body["variables"] == {"pool": POOL} and "poolDayData" in body["query"] and "_meta" in body["query"]
    body = json.loads(protocol.ticks_request(POOL, -5, 7, "0xab#3", 21000123, 1000))
    assert body["variables"] == {"pool": POOL, "lo": "-5", "hi": "7", "after": "0xab#3", "block": 21000123,
                                 "first": 1000}
    assert "id_gt: $after" in body["query"] and "block: {number: $block}" in body["query"]


def test_endpoint_puts_the_key_in_the_path():
    assert protocol.endpoint("https://gateway.thegraph.com/", "ID", "k3y") == \
        "https://gateway.thegraph.com/api/k3y/subgraphs/id/ID"
    assert protocol.endpoint("http://graph-node:8000", "ID", "") == "http://graph-node:8000/subgraphs/id/ID"


def test_pool_read_and_metric():
    read = protocol.decode_pool(POOL_RESPONSE, POOL)
    assert isinstance(read, protocol.PoolRead)
    assert (read.block, read.block_ts, read.tick, read.decimals0, read.decimals1) == (21000123, 1730000000, 198914, 6, 18)
    assert read.liquidity == 22409718374653542064 and read.usd1 == 2500.5
    metric = protocol.to_metric(read, [], chain="ethereum", ts_us=5, recv_us=6)
    assert metric.liquidity == "22409718374653542064" and metric.tvl_usd == 311203221.1234
    # 1730000000 is 12 800 s past midnight: today's 1000 + 2400 × (1 − 12800/86400)
    assert metric.volume_24h_usd == pytest.approx(1000 + 2400 * (1 - 12800 / 86400))
    assert metric.price == pytest.approx((1648326534402066540413283735424193 / 2**96) ** 2 / 1e12)
    assert metric.depth_2pct_usd > 0


def test_graphql_errors_with_http_200_are_problems():
    body = b'{"errors":[{"message":"indexing_error"}],"data":null}'
    assert protocol.decode_pool(body, POOL) == protocol.Problem("graphql_errors", "indexing_error")
    assert protocol.decode_ticks(b'{"errors":[{"message":"x"},{"message":"y"}]}', 10).kind == "graphql_errors"


def test_missing_pool_malformed_and_bad_values():
    missing = b'{"data":{"_meta":{"block":{"number":1}},"bundle":null,"pool":null}}'
    assert protocol.decode_pool(missing, POOL).kind == "pool_not_found"
    assert protocol.decode_pool(b'{"data": {"pool": {"id": "0x', POOL).kind == "malformed"
    bad = POOL_RESPONSE.replace(b'"tick": "198914"', b'"tick": "many"')
    assert protocol.decode_pool(bad, POOL).kind == "bad_value"
    uninitialized = POOL_RESPONSE.replace(b'"tick": "198914"', b'"tick": null')
    assert protocol.decode_pool(uninitialized, POOL).kind == "bad_value"
    huge = POOL_RESPONSE.replace(b'"sqrtPrice": "1648', b'"sqrtPrice": "9' + b"9" * 60 + b'1648')
    assert protocol.decode_pool(huge, POOL).kind == "bad_value"


def test_ticks_pages():
    body = b'{"data":{"ticks":[{"id":"p#-10","tickIdx":"-10","liquidityNet":"-5"},{"id":"p#20","tickIdx":"20","liquidityNet":"7"}]}}'
    page = protocol.decode_ticks(body, 2)
    assert page == protocol.TicksPage(((-10, -5), (20, 7)), "p#20", True)
    assert protocol.decode_ticks(body, 3).full is False
    assert protocol.decode_ticks(b'{"data":{"ticks":[]}}', 3) == protocol.TicksPage((), "", False)
    assert protocol.decode_ticks(b'{"data":{"ticks":[{"id":"p#1","tickIdx":"999999999","liquidityNet":"1"}]}}', 3).kind \
        == "bad_value"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(data):
    assert isinstance(protocol.decode_pool(data, POOL), (protocol.PoolRead, protocol.Problem))
    assert isinstance(protocol.decode_ticks(data, 5), (protocol.TicksPage, protocol.Problem))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(POOL_RESPONSE) - 1), st.binary(min_size=1, max_size=8))
def test_mutated_responses_never_raise(at, junk):
    mutated = POOL_RESPONSE[:at] + junk + POOL_RESPONSE[at + len(junk):]
    result = protocol.decode_pool(mutated, POOL)
    if isinstance(result, protocol.PoolRead):
        protocol.to_metric(result, [(result.tick + 10, 5)], chain="ethereum", ts_us=0, recv_us=0)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["liquidity", "sqrtPrice", "tick", "totalValueLockedUSD", "decimals"]),
                       st.one_of(st.text(max_size=30), st.integers(), st.none(), st.floats())))
def test_odd_field_values_never_raise(fields):
    doc = msgspec.json.decode(POOL_RESPONSE)
    for key, value in fields.items():
        if key == "decimals":
            doc["data"]["pool"]["token0"]["decimals"] = value
        else:
            doc["data"]["pool"][key] = value
    result = protocol.decode_pool(msgspec.json.encode(doc), POOL)
    if isinstance(result, protocol.PoolRead):
        protocol.to_metric(result, [], chain="ethereum", ts_us=0, recv_us=0)
