"""The simulator's sans-I/O pieces: control messages, stream names, frames, limits, bad frames, blast tape."""

from __future__ import annotations

import random

import msgspec
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from ingestd.sim.blast import TIME_PLACEHOLDER, BlastCursor, BlastTape
from ingestd.sim.malformed import MALFORMED_KINDS, malformed_messages
from ingestd.sim.market import Market
from ingestd.sim.request_weight import IM_A_TEAPOT, OK, TOO_MANY_REQUESTS, RequestWeightLimiter
from ingestd.sim.sliding_window import SlidingWindowCounter
from ingestd.sim.stream_names import TargetError, parse_stream_name, parse_ws_target
from ingestd.sim.ws_control import handle_control_message
from ingestd.sim.ws_frames import combined_message, text_frame

SYMBOLS = ("BTCUSDT", "ETHUSDT")


def control(text, subscriptions=(), combined=False, max_streams=1024):
    return handle_control_message(
        text,
        subscriptions=list(subscriptions),
        combined=combined,
        is_known_stream=lambda name: parse_stream_name(name, SYMBOLS) is not None,
        max_streams=max_streams,
    )


def parse_frames(data: bytes) -> list[Frame]:
    reader = StreamReader()
    reader.feed_data(data)
    frames = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            while True:
                next(parser)
        except StopIteration as done:
            frames.append(done.value)
    return frames


# ----- control messages ---------------------------------------------------------------------------


def test_subscribe_unsubscribe_and_list():
    out = control('{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@depth@100ms"],"id":1}')
    assert out.reply == {"result": None, "id": 1}
    assert out.subscribe == ["btcusdt@trade", "ethusdt@depth@100ms"]
    out = control('{"method":"UNSUBSCRIBE","params":["btcusdt@trade"],"id":"abc"}', ["btcusdt@trade"])
    assert out.reply == {"result": None, "id": "abc"} and out.unsubscribe == ["btcusdt@trade"]
    out = control('{"method":"LIST_SUBSCRIPTIONS","id":3}', ["btcusdt@aggTrade"])
    assert out.reply == {"result": ["btcusdt@aggTrade"], "id": 3}


def test_subscribing_twice_adds_nothing():
    assert control('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":1}', ["btcusdt@trade"]).subscribe == []


@pytest.mark.parametrize(
    "text, code, phrase",
    [
        ("{not json", 3, "Invalid JSON"),
        ('["SUBSCRIBE"]', 2, "Invalid request"),
        ('{"params":[],"id":1}', 2, "missing field `method`"),
        ('{"method":"SUBSCRIBE","params":["btcusdt@trade"]}', 2, "request ID"),
        ('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":true}', 2, "request ID"),
        ('{"method":"SUBSCRIBE","params":["btcusdt@trade"],"id":"has space"}', 2, "request ID"),
        ('{"method":"SUBSCRIBEX","params":[],"id":1}', 2, "unknown variant"),
        ('{"method":"SUBSCRIBE","params":["BTCUSDT@trade"],"id":1}', 2, "unknown stream"),
        ('{"method":"SUBSCRIBE","params":["dogeusdt@trade"],"id":1}', 2, "unknown stream"),
        ('{"method":"SUBSCRIBE","params":["btcusdt@kline_1m"],"id":1}', 2, "unknown stream"),
        ('{"method":"SET_PROPERTY","params":["combined","yes"],"id":1}', 1, "expected Boolean"),
        ('{"method":"SET_PROPERTY","params":["other",true],"id":1}', 0, "Unknown property"),
        ('{"method":"GET_PROPERTY","params":[5],"id":1}', 2, "property name must be a string"),
    ],
)
def test_invalid_requests_get_binance_error_replies(text, code, phrase):
    out = control(text)
    assert out.reply["code"] == code and phrase in out.reply["msg"]
    assert not out.subscribe and not out.unsubscribe and out.combined is None


def test_too_many_streams_is_refused():
    request = '{"method":"SUBSCRIBE","params":["btcusdt@trade","ethusdt@trade"],"id":9}'
    out = control(request, ["btcusdt@depth"], max_streams=2)
    assert out.reply["code"] == 2 and "too many streams" in out.reply["msg"] and out.reply["id"] == 9


def test_combined_property():
    assert control('{"method":"SET_PROPERTY","params":["combined",true],"id":5}').combined is True
    out = control('{"method":"GET_PROPERTY","params":["combined"],"id":2}', combined=True)
    assert out.reply == {"result": True, "id": 2}


# ----- stream names and request targets ------------------------------------------------------------


def test_ws_targets():
    assert parse_ws_target("/stream?streams=btcusdt@trade/ethusdt@depth@100ms", SYMBOLS, 10) == (
        True,
        ["btcusdt@trade", "ethusdt@depth@100ms"],
    )
    assert parse_ws_target("/ws/btcusdt@aggTrade", SYMBOLS, 10) == (False, ["btcusdt@aggTrade"])
    assert parse_ws_target("/ws", SYMBOLS, 10) == (False, [])
    assert parse_ws_target("/stream", SYMBOLS, 10) == (True, [])
    with pytest.raises(TargetError) as unknown:
        parse_ws_target("/stream?streams=btcusdt@bogus", SYMBOLS, 10)
    assert unknown.value.status == 400
    with pytest.raises(TargetError) as too_many:
        parse_ws_target("/stream?streams=btcusdt@trade/ethusdt@trade", SYMBOLS, 1)
    assert too_many.value.status == 400
    with pytest.raises(TargetError) as not_found:
        parse_ws_target("/api/stream", SYMBOLS, 10)
    assert not_found.value.status == 404


# ----- frames --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 125, 126, 65535, 65536, 100_000])
def test_text_frames_parse_back_with_websockets(size):
    payload = b"x" * size
    (frame,) = parse_frames(text_frame(payload))
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data == payload


def test_combined_wrapping():
    message = combined_message("btcusdt@trade", b'{"e":"trade"}')
    assert msgspec.json.decode(message) == {"stream": "btcusdt@trade", "data": {"e": "trade"}}


# ----- limits --------------------------------------------------------------------------------------


def test_sliding_window_allows_n_in_any_second():
    window = SlidingWindowCounter(5)
    assert all(window.record(t) for t in (0.0, 0.1, 0.2, 0.3, 0.4))
    assert not window.record(0.9)
    spaced = SlidingWindowCounter(5)
    assert all(spaced.record(i * 0.21) for i in range(50))


def test_weight_limiter_429_then_418_then_recovery():
    limiter = RequestWeightLimiter(limit=10, window_s=60, ban_s=120)
    assert limiter.admit(5, 60.0).status == OK
    second = limiter.admit(5, 61.0)
    assert second.status == OK and second.used_weight == 10
    refused = limiter.admit(5, 70.0)
    assert refused.status == TOO_MANY_REQUESTS and refused.retry_after_s == 50 and refused.used_weight == 10
    banned = limiter.admit(1, 71.0)
    assert banned.status == IM_A_TEAPOT and banned.retry_after_s == 120 > refused.retry_after_s
    assert limiter.admit(1, 150.0).status == IM_A_TEAPOT  # still banned in the next window
    after = limiter.admit(1, 191.5)
    assert after.status == OK and after.used_weight == 1


def test_weight_limiter_without_repeat_offence_recovers_at_the_window():
    limiter = RequestWeightLimiter(limit=10, window_s=60)
    limiter.admit(10, 0.0)
    assert limiter.admit(1, 30.0).status == TOO_MANY_REQUESTS
    assert limiter.admit(1, 60.0).status == OK


# ----- malformed frames ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_malformed_messages_are_bad_in_the_advertised_way(kind):
    market = Market(["BTCUSDT"], seed=1)
    trade = market.step_trade("BTCUSDT", 1)
    depth = market.step_depth("BTCUSDT", 2)
    for payload, stream in ((trade, "btcusdt@trade"), (depth, "btcusdt@depth@100ms")):
        raw, combined = malformed_messages(kind, stream, payload, random.Random(1))
        raw.decode("ascii")  # text frames must stay valid UTF-8
        if kind in ("invalid_json", "truncated"):
            for message in (raw, combined):
                with pytest.raises(msgspec.DecodeError):
                    msgspec.json.decode(message)
            continue
        data = msgspec.json.decode(raw)
        assert msgspec.json.decode(combined) == {"stream": stream, "data": data}
        if kind == "unknown_event":
            assert data["e"] == "mysteryEvent"
        elif kind == "missing_field":
            assert set(payload) - set(data) == ({"u"} if payload["e"] == "depthUpdate" else {"p"})
        else:
            bad = "abc" if kind == "non_numeric_price" else "-1.00000000"
            prices = [data["p"]] if "p" in data else [level[0] for level in data["b"] + data["a"]]
            assert bad in prices


# ----- blast tape ----------------------------------------------------------------------------------


@pytest.mark.trio
async def test_blast_tape_is_in_the_truth_and_stamped_at_send_time():
    market = Market(["BTCUSDT", "ETHUSDT"], seed=1)
    tape = BlastTape(market, 1000)
    assert market.trade_count() == len(tape) == 1000
    for combined, kind in ((False, "trade"), (True, "trade"), (False, "aggTrade"), (True, "aggTrade")):
        store = await tape.frames(combined, kind)
        cursor = BlastCursor(store, None, frames_per_chunk=300)
        chunks = []
        while not cursor.done:
            chunks.append(cursor.next_chunk(1_799_999_999_999))
        assert [count for _, count in chunks] == [300, 300, 300, 100]
        data = b"".join(chunk for chunk, _ in chunks)
        assert TIME_PLACEHOLDER not in data
        messages = [msgspec.json.decode(frame.data) for frame in parse_frames(data)]
        trades = [m["data"] for m in messages] if combined else messages
        if combined:
            assert all(m["stream"] == m["data"]["s"].lower() + "@" + kind for m in messages)
        assert all(t["e"] == kind and t["E"] == t["T"] == 1_799_999_999_999 for t in trades)
        id_field = "t" if kind == "trade" else "a"
        by_symbol: dict[str, list[int]] = {}
        for t in trades:
            by_symbol.setdefault(t["s"], []).append(t[id_field])
        assert by_symbol == {s: list(market.trade_ids(s)) for s in ("BTCUSDT", "ETHUSDT")}


@pytest.mark.trio
async def test_blast_selection_keeps_only_the_subscribed_symbols():
    market = Market(["BTCUSDT", "ETHUSDT", "SOLUSDT"], seed=2)
    tape = BlastTape(market, 600)
    selection = tape.selection({"ETHUSDT"})
    cursor = BlastCursor(await tape.frames(False), selection, frames_per_chunk=64)
    frames = []
    while not cursor.done:
        frames += parse_frames(bytes(cursor.next_chunk(1_700_000_000_000)[0]))
    ids = [msgspec.json.decode(f.data)["t"] for f in frames]
    assert ids == list(market.trade_ids("ETHUSDT"))
    assert tape.selection({"BTCUSDT", "ETHUSDT", "SOLUSDT"}) is None
