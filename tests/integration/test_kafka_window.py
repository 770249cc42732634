"""The Kafka sink's pieces that need no broker: the de-duplication window, ISO times, routes, partitioner."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.model import Trade
from ingestd.sinks import kafka as kafka_module
from ingestd.sinks.kafka import ROUTES, DeliveredWindow, iso_ms, market_key


def test_the_window_remembers_the_last_capacity_keys_and_raises_the_floor_of_what_it_forgets():
    w = DeliveredWindow(5)
    a, b = w.market("trade", "v", "A"), w.market("trade", "v", "B")
    for i in range(4):
        w.add(a, i)
    w.add(b, 100)
    w.add(a, 3)  # already known: no new slot
    assert len(w) == 5 and a.floor is None
    w.add(b, 101)  # forgets a's 0
    w.add(b, 102)  # forgets a's 1
    assert len(w) == 5
    assert sorted(a.ids) == [2, 3] and a.floor == 1
    assert sorted(b.ids) == [100, 101, 102] and b.floor is None
    assert w.contains("trade", "v", "B", 101) and not w.contains("trade", "v", "A", 0)
    assert not w.contains("book", "v", "A", 2)  # kinds are separate markets


def test_ids_that_are_not_64_bit_ints_are_remembered_and_forgotten_too():
    w = DeliveredWindow(2)
    m = w.market("whale", "polymarket", "0xabc")
    w.add(m, "0x123")
    w.add(m, 2**70)
    assert w.contains("whale", "polymarket", "0xabc", "0x123")
    w.add(m, 7)
    w.add(m, 8)
    assert set(m.ids) == {7, 8} and m.floor is None  # only int64 ids raise the floor
    assert w._ring_other == {}


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 20), st.lists(st.tuples(st.integers(0, 3), st.integers(-3, 40)), max_size=200))
def test_the_window_matches_a_model_of_the_last_n_distinct_additions(capacity, additions):
    w = DeliveredWindow(capacity)
    markets = [w.market("trade", "v", str(k)) for k in range(4)]
    model: list[tuple[int, int]] = []  # distinct keys, oldest first
    for k, i in additions:
        w.add(markets[k], i)
        if (k, i) not in model:
            model.append((k, i))
            del model[:-capacity]
    assert len(w) == len(model)
    for k in range(4):
        assert set(markets[k].ids) == {i for kk, i in model if kk == k}


def test_a_full_window_adds_nothing_for_the_collector_to_walk():
    w = DeliveredWindow(50_000)
    m = w.market("trade", "binance", "BTCUSDT")
    for i in range(60_000):
        w.add(m, 10**12 + i)
    gc.collect()
    assert not gc.is_tracked(m.ids)  # a dict of ints: untracked; the ring is two arrays


def test_iso_ms_is_utc_with_milliseconds_truncated():
    assert iso_ms(1_730_464_496_123_999) == "2024-11-01T12:34:56.123Z"
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"
    assert iso_ms(-1) == "1969-12-31T23:59:59.999Z"


def test_market_keys_are_utf8_venue_colon_symbol():
    assert market_key("binance", "BTCUSDT") == b"binance:BTCUSDT"
    assert market_key("b", "É€🐋") == "b:É€🐋".encode()
    with pytest.raises(UnicodeEncodeError):
        market_key("b", "\ud800")


def test_iso_us_and_iso_s_are_exact():
    assert kafka_module.iso_us(1_730_464_496_123_999) == "2024-11-01T12:34:56.123999Z"
    assert kafka_module.iso_s(1_730_464_496_000_000) == "2024-11-01T12:34:56Z"  # the legacy whale format
    assert kafka_module.iso_s(1_730_464_496_000_001) == "2024-11-01T12:34:56.000001Z"


def test_every_record_kind_has_a_route_with_a_probe_that_reads_its_messages_back():
    from ingestd.model import RECORD_TYPES
    from tests import samples

    assert set(ROUTES) == set(RECORD_TYPES) - {"checkpoint"}
    records = [*samples.one_of_each_new_kind(3), Trade("binance", "BTCUSDT", 7, 1.0, 2.0, "buy", 5_000_123, 5_000_999)]
    for record in records:
        route = ROUTES[record.KIND]
        probe = kafka_module._decode_probe(kafka_module._encode(route.to_event(record)))
        assert probe.KIND == record.KIND
        assert probe.market() == route.market(record) and probe.natural_id() == route.natural_id(record), record.KIND


def test_routes_are_extendable(monkeypatch):
    monkeypatch.setitem(ROUTES, "x", None)
    kafka_module.register_route(
        kafka_module.Route("x", "whales_topic", "x_event", lambda r: r, lambda r: ("v", "s"), lambda r: r.trade_id)
    )
    assert ROUTES["x"].topic_option == "whales_topic"
