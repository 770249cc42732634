"""Bybit v5 public WebSocket and market REST: bytes in, typed values out (ingestd.venues.bybit.protocol, .rest)."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.venues.bybit import protocol, rest
from ingestd.venues.bybit.protocol import (
    INVALID_FIELDS,
    MALFORMED_JSON,
    NOT_AN_EVENT,
    UNKNOWN_TOPIC,
    OpReply,
    Problem,
    TickerUpdate,
    TradeBatch,
    VenueTrade,
    decode,
    trade_id_of,
)

# Recorded messages: reference/venues.md section 3 and bybit-exchange/docs (v5 websocket pages).
REAL_DELTA = (
    b'{"topic":"tickers.BTCUSD","type":"delta","data":{"symbol":"BTCUSD","price24hPcnt":"0.023362",'
    b'"openInterest":"449736674","fundingRate":"0.0001","bid1Price":"28560.00","bid1Size":"340549",'
    b'"ask1Price":"28560.50","ask1Size":"70817"},"cs":20856433603,"ts":1680673822776}'
)
REAL_LINEAR_SNAPSHOT = json.dumps({
    "topic": "tickers.BTCUSDT", "type": "snapshot",
    "data": {"symbol": "BTCUSDT", "tickDirection": "PlusTick", "price24hPcnt": "0.017103", "lastPrice": "17216.00",
             "prevPrice24h": "16926.50", "highPrice24h": "17281.50", "lowPrice24h": "16915.00",
             "prevPrice1h": "17238.00", "markPrice": "17217.33", "indexPrice": "17227.36",
             "openInterest": "68744.761", "openInterestValue": "1183601235.91", "turnover24h": "1570383121.943499",
             "volume24h": "91705.276", "nextFundingTime": "1673280000000", "fundingRate": "-0.000212",
             "bid1Price": "17215.50", "bid1Size": "84.489", "ask1Price": "17216.00", "ask1Size": "83.020"},
    "cs": 24987956059, "ts": 1673272861686,
})
REAL_TRADE = json.dumps({
    "topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1672304486868,
    "data": [{"T": 1672304486865, "s": "BTCUSDT", "S": "Buy", "v": "0.001", "p": "16578.50", "L": "PlusTick",
              "i": "20f43950-d8dd-5b31-9112-a178eb6023af", "BT": False}],
})
REAL_ACK = '{"success":true,"ret_msg":"","conn_id":"cejreaspqfh3sjdnldmg-p","req_id":"x","op":"subscribe"}'
REAL_SPOT_ACK = '{"success":true,"ret_msg":"subscribe","conn_id":"2324d924-aa4d-45b0-a858-7b8be29ab52b","req_id":"10001","op":"subscribe"}'
REAL_PONG = '{"success":true,"ret_msg":"pong","conn_id":"0970e817-426e-429a-a679-ff7f55e0b16a","req_id":"1","op":"ping"}'
REAL_SPOT_PONG = '{"req_id":"","op":"pong","args":["1675418560633"],"conn_id":"cfcb4ocsvfriu23r3er0-1b"}'
REAL_REFUSAL = ('{"success":false,"ret_msg":"error:already subscribed,topic:tickers.BTCUSDT",'
                '"conn_id":"cejreaspqfh3sjdnldmg-p","req_id":"7","op":"subscribe"}')


def ticker(data: dict, *, kind: str = "delta", topic: str = "tickers.BTCUSDT", ts: int = 1000) -> str:
    return json.dumps({"topic": topic, "type": kind, "data": data, "cs": 1, "ts": ts})


# --- recorded messages ------------------------------------------------------------------------------


def test_real_delta_carries_only_the_fields_present():
    ev = decode(REAL_DELTA)
    assert ev == TickerUpdate("BTCUSD", False, 1680673822776, {"funding_rate": 0.0001, "open_interest": 449736674.0})


def test_real_linear_snapshot():
    ev = decode(REAL_LINEAR_SNAPSHOT)
    assert isinstance(ev, TickerUpdate) and ev.snapshot and ev.ts_ms == 1673272861686
    assert ev.values == {
        "funding_rate": -0.000212, "next_funding_us": 1673280000000_000, "open_interest": 68744.761,
        "open_interest_value": 1183601235.91, "mark_price": 17217.33, "index_price": 17227.36,
    }


def test_real_trade():
    assert decode(REAL_TRADE) == TradeBatch("BTCUSDT", 1672304486868, [
        VenueTrade("20f43950-d8dd-5b31-9112-a178eb6023af", 1672304486865, 16578.5, 0.001, "buy"),
    ])


@pytest.mark.parametrize("frame, expected", [
    (REAL_ACK, OpReply("subscribe", True, "", "x")),
    (REAL_SPOT_ACK, OpReply("subscribe", True, "subscribe", "10001")),
    (REAL_PONG, OpReply("ping", True, "pong", "1")),
    (REAL_SPOT_PONG, OpReply("pong", True, "", "")),
    (REAL_REFUSAL, OpReply("subscribe", False, "error:already subscribed,topic:tickers.BTCUSDT", "7")),
])
def test_replies(frame, expected):
    assert decode(frame) == expected


# --- edge cases -------------------------------------------------------------------------------------


def test_dated_future_has_basis_and_no_funding():
    ev = decode(ticker({"symbol": "BTC-26DEC25", "fundingRate": "", "nextFundingTime": "0", "basis": "-12.5",
                        "markPrice": "64000.1"}, topic="tickers.BTC-26DEC25", kind="snapshot"))
    assert ev.values == {"funding_rate": None, "next_funding_us": None, "venue_basis": -12.5, "mark_price": 64000.1}


@pytest.mark.parametrize("data, why", [
    ({"symbol": "BTCUSDT", "markPrice": "12x.5"}, "markPrice"),
    ({"symbol": "BTCUSDT", "markPrice": "NaN"}, "markPrice"),
    ({"symbol": "BTCUSDT", "markPrice": "0"}, "markPrice"),
    ({"symbol": "BTCUSDT", "indexPrice": "-1"}, "indexPrice"),
    ({"symbol": "BTCUSDT", "openInterest": "1e400"}, "openInterest"),
    ({"symbol": "BTCUSDT", "fundingRate": "2"}, "fundingRate"),
    ({"symbol": "BTCUSDT", "nextFundingTime": "soon"}, "nextFundingTime"),
    ({"symbol": "BTCUSDT", "nextFundingTime": "1673280000²"}, "nextFundingTime"),  # isdigit() but not int()
    ({"symbol": "BTCUSDT", "markPrice": 17217.33}, "markPrice"),  # a number, not Bybit's string
    ({"symbol": "ETHUSDT", "markPrice": "1"}, "ETHUSDT"),  # data of another contract
])
def test_bad_ticker_fields_name_their_topic(data, why):
    ev = decode(ticker(data))
    assert isinstance(ev, Problem) and ev.kind == INVALID_FIELDS and ev.topic == "tickers.BTCUSDT"
    assert why in ev.detail


@pytest.mark.parametrize("item", [
    {"T": 1, "s": "BTCUSDT", "S": "Buy ", "v": "1", "p": "1", "i": "a"},
    {"T": 1, "s": "BTCUSDT", "S": "Buy", "v": "1", "p": "0", "i": "a"},
    {"T": 1, "s": "BTCUSDT", "S": "Buy", "v": "-1", "p": "1", "i": "a"},
    {"T": 1, "s": "BTCUSDT", "S": "Buy", "v": "1", "p": "1", "i": ""},
    {"T": 1, "s": "ETHUSDT", "S": "Buy", "v": "1", "p": "1", "i": "a"},
    {"s": "BTCUSDT", "S": "Buy", "v": "1", "p": "1", "i": "a"},
])
def test_bad_trades_name_their_topic(item):
    ev = decode(json.dumps({"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 5, "data": [item]}))
    assert isinstance(ev, Problem) and ev.topic == "publicTrade.BTCUSDT"


@pytest.mark.parametrize("frame, kind, topic", [
    (b'{"topic":"tickers.BTC', MALFORMED_JSON, None),
    (b"\xff\xfe", MALFORMED_JSON, None),
    (b"[1,2]", NOT_AN_EVENT, None),
    (b'"pong"', NOT_AN_EVENT, None),
    (b"{}", NOT_AN_EVENT, None),
    (b'{"topic":"tickers.BTCUSDT","type":"delta","data":{}}', INVALID_FIELDS, "tickers.BTCUSDT"),
    (b'{"topic":"tickers.BTCUSDT","ts":"1","data":{}}', INVALID_FIELDS, "tickers.BTCUSDT"),
    (b'{"topic":"tickers.BTCUSDT","type":"partial","ts":1,"data":{}}', INVALID_FIELDS, "tickers.BTCUSDT"),
    (b'{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{}}', UNKNOWN_TOPIC, "orderbook.50.BTCUSDT"),
    (b'{"topic":"tickers","type":"delta","ts":1,"data":{}}', INVALID_FIELDS, "tickers"),
])
def test_unusable_frames(frame, kind, topic):
    ev = decode(frame)
    assert isinstance(ev, Problem) and (ev.kind, ev.topic) == (kind, topic)


def test_a_delta_without_derivative_fields_is_empty_not_a_problem():
    assert decode(ticker({"symbol": "BTCUSDT", "lastPrice": "1"})).values == {}


# --- trade ids --------------------------------------------------------------------------------------


def test_trade_ids_are_pinned():
    # The mapping is the natural key of stored trades: changing it would store every re-fetched
    # trade a second time. These values must never change.
    assert trade_id_of("20f43950-d8dd-5b31-9112-a178eb6023af") == 6873674054342083061
    assert trade_id_of("2290000000036455162") == 2290000000036455162  # spot ids are numbers already
    assert trade_id_of("0123") != 123  # not canonical: hashed, so "123" and "0123" stay apart
    assert trade_id_of("9223372036854775808") != 9223372036854775808  # past 2**63 - 1: hashed


@given(st.text(min_size=1, max_size=60))
def test_trade_ids_fit_a_signed_64_bit_column(venue_id):
    assert 0 <= trade_id_of(venue_id) < 2**63
    assert trade_id_of(venue_id) == trade_id_of(venue_id)


# --- requests and connection planning -------------------------------------------------------------------


def test_requests():
    assert json.loads(protocol.subscribe(["tickers.BTCUSDT"], "7")) == {
        "req_id": "7", "op": "subscribe", "args": ["tickers.BTCUSDT"]}
    assert json.loads(protocol.unsubscribe(["a"], "8"))["op"] == "unsubscribe"
    assert json.loads(protocol.ping("9")) == {"req_id": "9", "op": "ping"}
    assert protocol.topics_for("BTCUSDT", trades=True) == ["tickers.BTCUSDT", "publicTrade.BTCUSDT"]


_SYMBOLS = st.lists(st.from_regex(r"[A-Z0-9]{2,25}", fullmatch=True), unique=True, max_size=200)


@given(_SYMBOLS, st.booleans(), st.integers(100, 21_000))
def test_connection_plans_respect_the_args_limit(symbols, trades, max_chars):
    groups = protocol.plan_connections(symbols, trades=trades, max_chars=max_chars)
    assert [s for g in groups for s in g] == symbols
    for group in groups:
        assert group
        chars = protocol.args_chars([t for s in group for t in protocol.topics_for(s, trades=trades)])
        assert chars <= max_chars or len(group) == 1


def test_the_venue_limit_splits_a_long_list():
    symbols = [f"SYM{i:05d}USDT" for i in range(1000)]  # tickers.X + publicTrade.X: 44 characters
    groups = protocol.plan_connections(symbols, trades=True, max_chars=21_000)
    assert [len(g) for g in groups] == [477, 477, 46]  # 21000 // 44 = 477
    assert protocol.chunks(list("abcdefghijk"), 10) == [list("abcdefghij"), ["k"]]


# --- never raises ----------------------------------------------------------------------------------------

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=12))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=5)), max_leaves=20)
_keys = ("topic", "type", "ts", "data", "cs", "op", "success", "ret_msg", "req_id", "symbol", "markPrice",
         "indexPrice", "openInterest", "fundingRate", "nextFundingTime", "basis", "T", "s", "S", "v", "p", "i")


@settings(max_examples=400)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(frame):
    assert isinstance(decode(frame), (TickerUpdate, TradeBatch, OpReply, Problem))


@settings(max_examples=400)
@given(st.dictionaries(st.sampled_from(_keys), _json, max_size=8),
       st.sampled_from(["tickers.BTCUSDT", "publicTrade.BTCUSDT", "orderbook.1.X", "", "tickers."]))
def test_arbitrary_objects_never_raise(obj, topic):
    obj.setdefault("topic", topic)
    assert isinstance(decode(json.dumps(obj)), (TickerUpdate, TradeBatch, OpReply, Problem))


@settings(max_examples=400)
@given(st.sampled_from([REAL_DELTA, REAL_LINEAR_SNAPSHOT.encode(), REAL_TRADE.encode(), REAL_PONG.encode()]),
       st.data())
def test_mutated_real_frames_never_raise(frame, data):
    i = data.draw(st.integers(0, len(frame) - 1))
    j = data.draw(st.integers(i, min(len(frame), i + 8)))
    mutated = frame[:i] + data.draw(st.binary(max_size=8)) + frame[j:]
    assert isinstance(decode(mutated), (TickerUpdate, TradeBatch, OpReply, Problem))


# --- REST -------------------------------------------------------------------------------------------------

RECENT_TRADES = json.dumps({
    "retCode": 0, "retMsg": "OK",
    "result": {"category": "linear", "list": [
        {"execId": "2a6b4e50-22b4-5f4d-8a1c-3d2f6a9b0c11", "symbol": "BTCUSDT", "price": "16618.49", "size": "0.012",
         "side": "Buy", "time": "1672052955758", "isBlockTrade": False, "isRPITrade": False},
        {"execId": "2100000000007764263", "symbol": "BTCUSDT", "price": "16618.00", "size": "0.5",
         "side": "Sell", "time": "1672052955700", "isBlockTrade": False},
    ]},
    "retExtInfo": {}, "time": 1672053054358,
}).encode()


def test_recent_trades_page():
    assert rest.parse_recent_trades(RECENT_TRADES, "BTCUSDT") == [
        VenueTrade("2a6b4e50-22b4-5f4d-8a1c-3d2f6a9b0c11", 1672052955758, 16618.49, 0.012, "buy"),
        VenueTrade("2100000000007764263", 1672052955700, 16618.0, 0.5, "sell"),
    ]
    with pytest.raises(rest.ResponseError):
        rest.parse_recent_trades(RECENT_TRADES, "ETHUSDT")


def test_non_ascii_digits_in_rest_answers_are_refused_not_raised():
    page = RECENT_TRADES.replace(b'"1672052955758"', '"167205295575\u00b2"'.encode())
    assert page != RECENT_TRADES
    with pytest.raises(rest.ResponseError):
        rest.parse_recent_trades(page, "BTCUSDT")
    assert rest.retry_after_s({"x-bapi-limit-reset-timestamp": "1002\u00b2"}, 1000.0) is None


def test_rest_failures_are_told_apart():
    too_many = b'{"retCode":10006,"retMsg":"Too many visits!","result":{},"time":1}'
    with pytest.raises(rest.RateLimited) as limited:
        rest.parse_recent_trades(too_many, "BTCUSDT", {"x-bapi-limit-reset-timestamp": "1002500"}, 1000.0)
    assert limited.value.retry_after_s == pytest.approx(2.5) and limited.value.status == 200
    with pytest.raises(rest.Refused):
        rest.parse_recent_trades(b'{"retCode":10001,"retMsg":"params error: symbol invalid","result":{}}', "X")
    with pytest.raises(rest.ResponseError) as malformed:
        rest.parse_recent_trades(RECENT_TRADES[:50], "BTCUSDT")
    assert not isinstance(malformed.value, rest.Refused)  # worth retrying
    with pytest.raises(rest.RateLimited) as http_429:
        rest.check_http(429, {"retry-after": "3"}, b"", 0.0)
    assert http_429.value.retry_after_s == 3.0 and http_429.value.status == 429
    with pytest.raises(rest.RateLimited):
        rest.check_http(403, {}, b"access too frequent", 0.0)
    with pytest.raises(rest.Refused):
        rest.check_http(404, {}, b"", 0.0)
    with pytest.raises(rest.ResponseError) as server_error:
        rest.check_http(502, {}, b"", 0.0)
    assert not isinstance(server_error.value, rest.Refused)
    rest.check_http(200, {}, b"", 0.0)


def test_tickers_list():
    body = msgspec.json.encode({"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": [
        {"symbol": "BTCUSDT", "lastPrice": "1"}, {"symbol": "BTC-26DEC25"}]}})
    assert rest.parse_ticker_symbols(body) == {"BTCUSDT", "BTC-26DEC25"}
