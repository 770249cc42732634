"""Bytes in, events out: the Polymarket market-channel decoder, the Data API parser, the local book."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings, strategies as st

from ingestd.venues.polymarket import data_api as d
from ingestd.venues.polymarket import protocol as p
from ingestd.venues.polymarket.book import LocalBook

# Shapes as the venue's documentation records them (docs.polymarket.com, market channel).
BOOK = (
    '{"event_type":"book","asset_id":"65818619657568813474341868652308942079804919287380422192892211131408793125422",'
    '"market":"0xbd31dc8a20211944f6b70f31557f1001557b59905b7738480ca09bd4532f84af",'
    '"bids":[{"price":".48","size":"30"},{"price":".49","size":"20"},{"price":".50","size":"15"}],'
    '"asks":[{"price":".52","size":"25"},{"price":".53","size":"60"},{"price":".54","size":"10"}],'
    '"timestamp":"123456789000","hash":"0x0...."}'
)
PRICE_CHANGE = (
    '{"market":"0x5f65177b394277fd294cd75650044e32ba009a95022d88a0c1d565897d72f8f1","price_changes":['
    '{"asset_id":"71321045679252212594626385532706912750332728571942532289631379312455583992563","price":"0.5",'
    '"size":"200","side":"BUY","hash":"56621a121a47ed9333273e21c83b660cff37ae50","best_bid":"0.5","best_ask":"1"},'
    '{"asset_id":"52114319501245915516055106046884209969926127482827954674443846427813813222426","price":"0.5",'
    '"size":"200","side":"SELL","hash":"1895759e4df7a796bf4f1c5a5950b748306923e2","best_bid":"0","best_ask":"0.5"}],'
    '"timestamp":"1757908892351","event_type":"price_change"}'
)
LAST_TRADE = (
    '{"asset_id":"114122071509644379678018727908709560226618148003371446110114509806601493071694",'
    '"event_type":"last_trade_price","fee_rate_bps":"0",'
    '"market":"0x6a67b9d828d53862160e470329ffea5246f338ecfffdf2cab45211ec578b0347","price":"0.456",'
    '"side":"BUY","size":"219.217767","timestamp":"1750428146322",'
    '"transaction_hash":"0xeeefffggghhh"}'
)


def test_book_levels_accept_prices_without_a_leading_zero():
    [ev] = p.decode(BOOK)
    assert isinstance(ev, p.Book)
    assert ev.bids == [(0.48, 30.0), (0.49, 20.0), (0.5, 15.0)]
    assert ev.asks[0] == (0.52, 25.0) and ev.timestamp_ms == 123456789000 and ev.hash == "0x0...."


def test_initial_dump_as_an_array():
    other = BOOK.replace("6581861965", "1111111111")
    events = p.decode(f"[{BOOK},{other}]")
    assert [type(e) for e in events] == [p.Book, p.Book]
    assert events[1].asset_id.startswith("1111111111")


def test_price_change_levels_and_reported_best_prices():
    [ev] = p.decode(PRICE_CHANGE)
    assert isinstance(ev, p.PriceChange) and ev.timestamp_ms == 1757908892351
    a, b = ev.changes
    assert (a.price, a.size, a.is_bid, a.best_bid, a.best_ask) == (0.5, 200.0, True, 0.5, 1.0)
    assert (b.is_bid, b.best_bid, b.hash) == (False, 0.0, "1895759e4df7a796bf4f1c5a5950b748306923e2")


def test_last_trade_price():
    [ev] = p.decode(LAST_TRADE.encode())
    assert ev == p.LastTrade("114122071509644379678018727908709560226618148003371446110114509806601493071694",
                             "0x6a67b9d828d53862160e470329ffea5246f338ecfffdf2cab45211ec578b0347", 0.456, 219.217767,
                             "buy", 1750428146322, "0xeeefffggghhh", 0.0)


def test_old_buys_sells_names_and_integer_timestamps():
    raw = {"event_type": "book", "asset_id": "1", "market": "0xm", "timestamp": 5, "hash": "h",
           "buys": [{"price": "0.1", "size": "2"}], "sells": [{"price": "0.9", "size": "3"}]}
    [ev] = p.decode(msgspec.json.encode(raw))
    assert ev.bids == [(0.1, 2.0)] and ev.asks == [(0.9, 3.0)] and ev.timestamp_ms == 5


def test_pong_and_other_event_types_are_not_problems():
    assert p.decode("PONG") == [p.Pong()]
    tick = '{"event_type":"tick_size_change","asset_id":"1","market":"0x","old_tick_size":"0.01","new_tick_size":"0.001"}'
    assert p.decode(tick) == [p.Ignored("tick_size_change")]
    assert p.decode('{"event_type":"market_resolved","market":"0x"}') == [p.Ignored("market_resolved")]


def test_problems_are_classified_and_good_events_of_the_frame_survive():
    assert [e.kind for e in p.decode(b"{not json")] == [p.MALFORMED_JSON]
    assert [e.kind for e in p.decode("INVALID OPERATION")] == [p.MALFORMED_JSON]
    assert [e.kind for e in p.decode("[1, 2]")] == [p.NOT_AN_EVENT, p.NOT_AN_EVENT]
    assert [e.kind for e in p.decode('{"market":"0x"}')] == [p.NOT_AN_EVENT]
    bad = LAST_TRADE.replace('"price":"0.456"', '"price":"abc"')
    events = p.decode(f"[{bad},{BOOK}]")
    assert events[0].kind == p.INVALID_FIELDS and isinstance(events[1], p.Book)


def test_out_of_range_values_are_invalid_fields():
    for field, value in [("price", "1.5"), ("price", "-0.1"), ("price", "nan"), ("size", "1e400"), ("size", "0"),
                         ("side", "HOLD"), ("timestamp", "soon"), ("timestamp", "-5"), ("timestamp", "17504281463\u00b2"), ("price", " 0.4")]:
        raw = msgspec.json.decode(LAST_TRADE)
        raw[field] = value
        [ev] = p.decode(msgspec.json.encode(raw))
        assert isinstance(ev, p.Problem) and ev.kind == p.INVALID_FIELDS, (field, value)
    [ev] = p.decode(BOOK.replace('"price":".48"', '"price":"1.48"'))
    assert ev.kind == p.INVALID_FIELDS


def test_messages_we_send():
    assert msgspec.json.decode(p.subscribe_message(["1", "2"])) == {"assets_ids": ["1", "2"], "type": "market"}
    assert msgspec.json.decode(p.change_message(["3"], "unsubscribe")) == {"assets_ids": ["3"], "operation": "unsubscribe"}


events = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["event_type", "asset_id", "market", "price", "size", "side", "timestamp", "bids", "asks",
                         "price_changes", "hash", "best_bid", "best_ask", "transaction_hash", "fee_rate_bps"]),
        children, max_size=8),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(events, st.sampled_from(["book", "price_change", "last_trade_price", "x"]))
def test_arbitrary_json_never_raises(value, event_type):
    if isinstance(value, dict):
        value = {**value, "event_type": event_type}
    for out in (p.decode(msgspec.json.encode(value)), d.parse_trades(msgspec.json.encode(value))):
        assert out is not None


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(0, len(BOOK)))
def test_mutated_frames_never_raise(junk, cut):
    for frame in (junk, BOOK[:cut].encode() + junk, PRICE_CHANGE.encode()[:cut] + junk):
        for ev in p.decode(frame):
            assert isinstance(ev, (p.Book, p.PriceChange, p.LastTrade, p.Ignored, p.Pong, p.Problem))
        assert isinstance(d.parse_trades(frame), (d.Page, d.Problem))


# --- Data API ----------------------------------------------------------------------------------

ROW = {"proxyWallet": "0x1F2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf", "side": "BUY",
       "asset": "1234567890", "conditionId": "0xabc", "size": 1000, "price": 0.54, "timestamp": 1730464496,
       "title": "Will it rain?", "slug": "rain", "outcome": "Yes", "outcomeIndex": 0, "name": "theo",
       "pseudonym": "Theo", "transactionHash": "0x123ABC"}


def test_data_api_rows_become_trades():
    page = d.parse_trades(msgspec.json.encode([ROW, {**ROW, "size": "12.5", "price": "0.3", "pseudonym": None}]))
    assert isinstance(page, d.Page) and page.rows == 2 and not page.bad_rows
    a, b = page.trades
    assert (a.wallet, a.side, a.size, a.price, a.timestamp_s, a.tx_hash, a.pseudonym) == (
        "0x1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf", "BUY", 1000.0, 0.54, 1730464496, "0x123abc", "Theo")
    assert (b.size, b.price, b.pseudonym) == (12.5, 0.3, "theo")
    assert a.key == ("0x123abc", "1234567890")


def test_data_api_bad_rows_are_skipped_and_reported_bad_bodies_are_problems():
    rows = [ROW, {**ROW, "price": 2}, {**ROW, "proxyWallet": "nobody"}, {"hello": 1}, 5]
    page = d.parse_trades(msgspec.json.encode(rows))
    assert page.rows == 5 and len(page.trades) == 1 and len(page.bad_rows) == 4
    assert d.parse_trades(b'[{"proxyWallet":"0x').kind == d.MALFORMED_BODY
    assert d.parse_trades(b'{"error":"x"}').kind == d.NOT_A_LIST
    assert d.parse_trades(b"<html>").kind == d.MALFORMED_BODY


def test_requests_and_paging():
    req = d.user_trades("0xabc", start_s=100, limit=500, offset=1000)
    assert req.path == "/trades" and req.params == {"user": "0xabc", "limit": "500", "offset": "1000",
                                                    "takerOnly": "false", "start": "100"}
    assert d.market_trades("0xm", start_s=None, limit=10).params["takerOnly"] == "true"
    full = d.Page([d.DataTrade("0x", "BUY", "1", "0xm", 1.0, 0.5, ts, "0xt") for ts in (300, 200)], 2, [])
    assert d.more_pages(full, limit=2, offset=0, start_s=100)
    assert not d.more_pages(full, limit=2, offset=0, start_s=250)  # the page already went past start
    assert not d.more_pages(full, limit=3, offset=0, start_s=None)  # a short page is the last
    assert not d.more_pages(full, limit=2, offset=9_999, start_s=None)  # the API's offset cap


def test_request_window_and_retry_after():
    w = d.RequestWindow(2, 10.0)
    assert w.delay_before(0.0) == 0
    w.spend(0.0)
    w.spend(1.0)
    assert w.delay_before(2.0) == 8.0
    assert w.delay_before(10.5) == 0  # the first request left the window
    assert w.retry_after("3", 10.5) == 3.0
    assert w.delay_before(11.0) == 2.5
    assert w.retry_after("soon", 20.0) == 1.0 and w.retry_after("1e9", 20.0) == 300.0


# --- the local book ------------------------------------------------------------------------------

def test_book_changes_best_prices_and_checks():
    b = LocalBook("1")
    b.apply_snapshot("0xm", [(0.48, 30.0), (0.5, 15.0), (0.49, 20.0)], [(0.53, 60.0), (0.52, 25.0)], "h1", 1000)
    assert b.live and b.best_bid() == 0.5 and b.best_ask() == 0.52
    assert b.top(2) == ([(0.5, 15.0), (0.49, 20.0)], [(0.52, 25.0), (0.53, 60.0)])
    b.apply_change(0.5, 0.0, True, "h2", 1500)  # "0" removes the level
    b.apply_change(0.51, 5.0, True, "h3", 1400)
    assert b.best_bid() == 0.51 and b.hash == "h3" and b.ts_ms == 1500
    assert b.agrees_with(0.51, 0.52) and b.agrees_with(None, None)
    assert not b.agrees_with(0.5, 0.52) and not b.agrees_with(0.51, 0.53)
    empty = LocalBook("2")
    empty.apply_snapshot("0xm", [], [], "h", 1)
    assert empty.agrees_with(0.0, 1.0) and empty.agrees_with(0.0, 0.0) and not empty.agrees_with(0.1, None)
