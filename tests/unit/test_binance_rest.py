import msgspec
import pytest
from hypothesis import given, settings, strategies as st

from ingestd.venues.binance import rest


def test_depth_weights_follow_the_docs():
    assert [rest.depth_weight(n) for n in (5, 100, 101, 500, 1000, 5000)] == [5, 5, 25, 25, 50, 250]


def test_trades_request_matches_stream_id_space():
    assert rest.trades_request("trade", "BTCUSDT", 7).path == "/api/v3/historicalTrades"
    agg = rest.trades_request("aggTrade", "BTCUSDT", 7)
    assert agg.path == "/api/v3/aggTrades" and agg.params["fromId"] == 7 and agg.weight == 4


def test_parse_historical_and_agg_trades():
    body = b'[{"id":5,"price":"1.5","qty":"2","quoteQty":"3","time":1000,"isBuyerMaker":true,"isBestMatch":true}]'
    (t,) = rest.parse_trades("trade", body, venue="binance", symbol="X", recv_us=9)
    assert (t.trade_id, t.price, t.qty, t.side, t.ts_us) == (5, 1.5, 2.0, "sell", 1_000_000)
    body = b'[{"a":6,"p":"1.5","q":"2","f":6,"l":6,"T":1000,"m":false,"M":true}]'
    (t,) = rest.parse_trades("aggTrade", body, venue="binance", symbol="X", recv_us=9)
    assert (t.trade_id, t.side) == (6, "buy")


def test_parse_depth_and_exchange_info():
    snap = rest.parse_depth(b'{"lastUpdateId":9,"bids":[["1.0","2"]],"asks":[["1.1","3"]]}')
    assert snap.last_update_id == 9 and snap.bids == [(1.0, 2.0)]
    info = rest.parse_exchange_info(b'{"symbols":[{"symbol":"A","status":"TRADING"},{"symbol":"B","status":"HALT"}]}')
    assert info == {"A": "TRADING", "B": "HALT"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_rest_parsers_raise_only_response_error(body):
    for parse in (rest.parse_depth, rest.parse_exchange_info,
                  lambda b: rest.parse_trades("trade", b, venue="v", symbol="s", recv_us=0),
                  lambda b: rest.parse_trades("aggTrade", b, venue="v", symbol="s", recv_us=0)):
        try:
            parse(body)
        except rest.ResponseError:
            pass


def test_budget_spends_up_to_headroom_then_waits_for_next_minute():
    b = rest.WeightBudget(limit_per_minute=100, headroom=0.5)  # 50 per minute
    now = 600.0  # start of minute 10
    for _ in range(10):
        assert b.delay_before(5, now) == 0
        b.spend(5, now)
    assert b.delay_before(5, now + 1) == pytest.approx(59.05)
    assert b.delay_before(5, 660.0) == 0  # new minute, fresh budget


def test_budget_trusts_the_servers_weight_header():
    b = rest.WeightBudget(limit_per_minute=100, headroom=1.0)
    b.spend(1, 0.0)
    b.on_response(200, {"x-mbx-used-weight-1m": "99"}, 0.0)
    assert b.delay_before(5, 1.0) > 0


def test_budget_honours_retry_after_on_429_and_418():
    b = rest.WeightBudget()
    b.on_response(429, {"retry-after": "7"}, 100.0)
    assert b.delay_before(1, 101.0) == pytest.approx(6.0)
    b.on_response(418, {"retry-after": "120"}, 101.0)
    assert b.delay_before(1, 102.0) == pytest.approx(119.0) and b.bans == 1
    assert b.delay_before(1, 222.0) == 0


def test_after_a_block_the_first_request_goes_alone():
    """Requests that all waited out a Retry-After must not leave together: one that reaches the
    venue after the first one's new 429 earns a ban (418)."""
    b = rest.WeightBudget()
    b.on_response(429, {"retry-after": "1"}, 100.0)
    assert b.delay_before(1, 101.0) == 0
    assert b.spend(1, 101.0) is True  # the probe
    assert b.delay_before(1, 101.0) == rest.PROBE_WAIT_S  # the others wait for its answer
    b.on_response(429, {"retry-after": "5"}, 101.1, probe=True)
    assert b.delay_before(1, 102.0) == pytest.approx(4.1)
    assert b.spend(1, 106.2) is True  # the block is over: a new probe
    b.on_response(200, {}, 106.3, probe=True)
    assert b.delay_before(1, 106.3) == 0 and b.spend(1, 106.3) is False  # all clear: no more probes


def test_a_probe_without_an_answer_hands_the_turn_on():
    b = rest.WeightBudget()
    b.on_response(429, {"retry-after": "1"}, 100.0)
    assert b.spend(1, 101.0) is True
    b.release(True)  # transport error or cancelled
    assert b.delay_before(1, 101.0) == 0 and b.spend(1, 101.0) is True  # the next request probes
