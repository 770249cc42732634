from hypothesis import given, settings, strategies as st

from ingestd.venues.trade_ids import ACCEPTED, ACCEPTED_NEW_GAP, DUPLICATE, TradeIdTracker


def test_in_order_then_duplicate():
    t = TradeIdTracker()
    assert [t.accept(i) for i in (5, 6, 7)] == [ACCEPTED] * 3
    assert t.accept(6) == DUPLICATE and t.watermark == 7


def test_gap_then_fill_in_any_order():
    t = TradeIdTracker.resuming_after(9)
    assert t.accept(10) == ACCEPTED
    assert t.accept(15) == ACCEPTED_NEW_GAP
    assert t.first_gap() == (11, 14) and t.watermark == 10 and t.missing_count() == 4
    assert t.accept(13) == ACCEPTED and t.gaps == [[11, 12], [14, 14]]
    assert t.accept(13) == DUPLICATE
    for i in (11, 12, 14):
        assert t.accept(i) == ACCEPTED
    assert t.gaps == [] and t.watermark == 15


def test_abandon_unrecoverable_ids():
    t = TradeIdTracker.resuming_after(0)
    t.accept(10)  # gap 1..9
    t.accept(20)  # gap 11..19
    assert t.abandon(5, 12) == 5 + 2
    assert t.gaps == [[1, 4], [13, 19]]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(0, 60), min_size=1, max_size=200))
def test_every_id_accepted_exactly_once_and_watermark_is_safe(ids):
    t = TradeIdTracker.resuming_after(-1)
    accepted = [i for i in ids if t.accept(i)]
    assert sorted(accepted) == sorted(set(ids))
    wm = t.watermark
    assert all(i in set(ids) for i in range(0, wm + 1))  # nothing missing at or below the watermark
    assert wm + 1 not in set(ids) or wm + 1 == t.next_id  # and it is the highest such id
