"""Bytes in, events out: the Binance decoder never raises and classifies what it cannot use."""

import msgspec
from hypothesis import given, settings, strategies as st

from ingestd.venues.binance import protocol as p

TRADE = {"e": "trade", "E": 1633998523963, "s": "BTCUSDT", "t": 12345, "p": "0.35280000",
         "q": "58.00000000", "T": 1633998523960, "m": False, "M": True}


def frame(data, stream="btcusdt@trade"):
    return msgspec.json.encode({"stream": stream, "data": data})


def test_trade_fields_and_side():
    ev = p.decode(frame(TRADE))
    assert isinstance(ev, p.TradeEvent)
    assert (ev.s, ev.t, ev.p, ev.q, ev.T, ev.m) == ("BTCUSDT", 12345, 0.3528, 58.0, 1633998523960, False)


def test_recorded_agg_trade_message():
    raw = ('{"stream":"nknusdt@aggTrade","data":{"e":"aggTrade","E":1633998523963,"s":"NKNUSDT","a":15683430,'
           '"p":"0.35280000","q":"58.00000000","f":19862790,"l":19862790,"T":1633998523963,"m":false,"M":true}}')
    ev = p.decode(raw)
    assert isinstance(ev, p.AggTradeEvent) and ev.a == 15683430 and ev.p == 0.3528


def test_depth_update_and_raw_stream_frame():
    depth = {"e": "depthUpdate", "E": 5, "s": "BTCUSDT", "U": 10, "u": 12, "b": [["100.5", "0"]], "a": [["101", "2.5"]]}
    ev = p.decode(frame(depth, "btcusdt@depth@100ms"))
    assert isinstance(ev, p.DepthEvent) and ev.b == [(100.5, 0.0)] and ev.a == [(101.0, 2.5)]
    assert isinstance(p.decode(msgspec.json.encode(depth)), p.DepthEvent)


def test_server_shutdown_on_combined_and_raw():
    assert isinstance(p.decode(frame({"e": "serverShutdown", "E": 1}, "!serverShutdown")), p.ServerShutdown)
    assert isinstance(p.decode('{"e":"serverShutdown","E":1}'), p.ServerShutdown)


def test_control_replies():
    assert p.decode('{"result":null,"id":1}') == p.ControlReply(id=1)
    err = p.decode('{"code":2,"msg":"Invalid request: unknown"}')
    assert isinstance(err, p.ControlReply) and err.code == 2


def bad_price(value):
    return p.decode(frame({**TRADE, "p": value}))


def test_bad_prices_are_invalid_fields():
    for value in ["abc", "-1.0", "0", "nan", "inf", "1e400", "", None, [], {}]:
        ev = bad_price(value)
        assert isinstance(ev, p.Problem) and ev.kind == p.INVALID_FIELDS, value


def test_problem_kinds():
    assert p.decode(b"{not json").kind == p.MALFORMED_JSON
    assert p.decode(b'{"stream":"x@trade","data":{"e":"tra').kind == p.MALFORMED_JSON
    assert p.decode(frame({"e": "kline", "E": 1})).kind == p.UNKNOWN_EVENT
    assert p.decode(b"[1,2,3]").kind == p.NOT_AN_EVENT
    assert p.decode(b'{"hello":1}').kind == p.NOT_AN_EVENT
    missing = dict(TRADE)
    del missing["t"]
    assert p.decode(frame(missing)).kind == p.INVALID_FIELDS


def test_stream_names_and_url():
    names = p.stream_names("BTCUSDT", trade_stream="trade", depth=True, depth_speed_ms=100)
    assert names == ["btcusdt@trade", "btcusdt@depth@100ms"]
    assert p.combined_stream_url("ws://h:1/", names) == "ws://h:1/stream?streams=btcusdt@trade/btcusdt@depth@100ms"


# --- property-based: nothing escapes the decoder --------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=5), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    p.decode(data)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(["trade", "aggTrade", "depthUpdate", "serverShutdown"]),
       st.dictionaries(st.sampled_from(list("EstpqTmUuabfl")), json_values, max_size=8))
def test_mutated_events_never_raise(e, fields):
    out = p.decode(frame({"e": e, **fields}))
    assert isinstance(out, (p.TradeEvent, p.AggTradeEvent, p.DepthEvent, p.ServerShutdown, p.Problem))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_byte_flips_of_a_valid_frame_never_raise(data):
    raw = bytearray(frame(TRADE))
    for _ in range(data.draw(st.integers(1, 5))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    out = p.decode(bytes(raw))
    if isinstance(out, p.TradeEvent):  # a flip that still parses must still be a sane trade
        assert out.p > 0 and out.q > 0
