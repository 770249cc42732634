"""Merging Bybit ticker snapshots and deltas into rows (ticker_state) and the trade tape (trade_tape)."""

from __future__ import annotations

import bisect

from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.model import Derivative
from ingestd.venues.bybit.protocol import STATE_KEYS, TickerUpdate, VenueTrade, trade_id_of
from ingestd.venues.bybit.ticker_state import TickerBook
from ingestd.venues.bybit.trade_tape import SEEN_WINDOW, TradeTape

FULL = {"funding_rate": 0.0001, "next_funding_us": 1_000_000, "open_interest": 10.0, "open_interest_value": 1000.0,
        "mark_price": 100.0, "index_price": 99.5, "venue_basis": None}


def snap(ts, **changes):
    return TickerUpdate("BTCUSDT", True, ts, {**FULL, **changes})


def delta(ts, **changes):
    return TickerUpdate("BTCUSDT", False, ts, changes)


def book(interval_ms=0, on_change=True):
    return TickerBook("BTCUSDT", interval_ms=interval_ms, on_change=on_change)


def fields(row: Derivative):
    return (row.ts_us // 1000, row.mark_price, row.index_price, row.open_interest, row.funding_rate, row.basis)


# --- merging -----------------------------------------------------------------------------------------


def test_missing_fields_are_unchanged_and_basis_is_mark_minus_index():
    b = book()
    [first] = b.apply(snap(1000), 1)
    assert (first.ts_us, first.recv_us) == (1_000_000, 1)
    assert first.basis == 100.0 - 99.5 and first.next_funding_us == 1_000_000
    [row] = b.apply(delta(1100, mark_price=101.0), 2)
    assert fields(row) == (1100, 101.0, 99.5, 10.0, 0.0001, 101.0 - 99.5)
    [row] = b.apply(delta(1200, open_interest=11.0, open_interest_value=1111.0), 3)
    assert fields(row) == (1200, 101.0, 99.5, 11.0, 0.0001, 101.0 - 99.5)
    assert row.open_interest_value == 1111.0


def test_the_venue_basis_wins_when_sent():
    b = book()
    [row] = b.apply(snap(1000, venue_basis=-3.25, funding_rate=None, next_funding_us=None), 1)
    assert (row.basis, row.funding_rate, row.next_funding_us) == (-3.25, None, None)


def test_a_delta_that_changes_nothing_stored_writes_nothing():
    b = book()
    b.apply(snap(1000), 1)
    assert b.apply(delta(1100), 2) == []  # only lastPrice or bid/ask changed
    assert b.apply(delta(1200, mark_price=100.0), 3) == []  # present, but the same value


def test_deltas_before_a_snapshot_or_after_a_gap_are_ignored():
    b = book()
    assert b.apply(delta(900, mark_price=1.0), 1) is None
    b.apply(snap(1000), 2)
    b.desync()
    assert b.apply(delta(1100, mark_price=2.0), 3) is None
    assert b.apply(snap(1200), 4) == []  # the fresh snapshot equals what was known: no change row
    [row] = b.apply(snap(1300, mark_price=3.0), 5)
    assert row.mark_price == 3.0


def test_samples_sit_on_the_venue_time_grid():
    b = book(interval_ms=500)
    rows = b.apply(snap(1200), 1)
    assert [r.ts_us // 1000 for r in rows] == [1200]
    rows = b.apply(delta(1400, mark_price=101.0), 2)
    assert [r.ts_us // 1000 for r in rows] == [1400]
    rows = b.apply(delta(2600, mark_price=102.0), 3)  # grid points 1500, 2000, 2500 passed meanwhile
    assert [fields(r)[:2] for r in rows] == [(1500, 101.0), (2000, 101.0), (2500, 101.0), (2600, 102.0)]
    rows = b.apply(delta(3000), 4)  # a message exactly on the grid, changing nothing: still a sample
    assert [fields(r)[:2] for r in rows] == [(3000, 102.0)]
    assert b.sample_until(3499, 5) == []
    assert [fields(r)[:2] for r in b.sample_until(4000, 6)] == [(3500, 102.0), (4000, 102.0)]
    assert b.apply(delta(3900, mark_price=9.0), 7) == []  # late for rows already written: withheld
    assert b.stale_rows == 1


def test_samples_only_and_no_samples_inside_a_gap():
    b = book(interval_ms=1000, on_change=False)
    assert [r.ts_us // 1000 for r in b.apply(snap(500), 1)] == []
    assert [r.ts_us // 1000 for r in b.apply(delta(1500, mark_price=1.0), 2)] == [1000]
    b.desync()
    assert b.sample_until(9000, 3) == []
    assert [r.ts_us // 1000 for r in b.apply(snap(4200, mark_price=2.0), 4)] == []
    assert [(r.ts_us // 1000, r.mark_price) for r in b.apply(delta(5000), 5)] == [(5000, 2.0)]


# --- the property: every row is the venue's state as of its timestamp -----------------------------------

_value = st.one_of(st.none(), st.sampled_from([1.0, 2.0, 3.5]))
_changes = st.dictionaries(st.sampled_from(STATE_KEYS), _value, max_size=4)
_step = st.tuples(
    st.integers(1, 700),  # ms since the previous message
    st.sampled_from(["delta"] * 6 + ["snapshot", "lost", "timer"]),
    _changes,
)


@settings(max_examples=600, deadline=None)
@given(st.lists(_step, max_size=60), st.sampled_from([0, 250, 1000]), st.booleans())
def test_every_row_is_the_venue_state_as_of_its_timestamp(steps, interval_ms, on_change):
    """The venue publishes a snapshot and deltas; some are lost (the consumer notices and desyncs,
    as the feed does on a dropped connection or a bad frame); timers sample quiet spells. Whatever
    happens, each row must equal the venue's merged state at the row's time; and without losses,
    every change and every grid point after the first snapshot must be there."""
    if interval_ms == 0 and not on_change:
        on_change = True
    b = book(interval_ms, on_change)
    venue = dict(FULL)
    history_ts, history = [0], [dict(venue)]  # the venue's state after each message
    rows: list[Derivative] = []
    changes: list[int] = []
    rows.extend(b.apply(snap(0), 0) or [])
    ts = horizon = 0  # the last message's time; the furthest time samples may have been taken to
    lost_any = False
    for dt, kind, change in steps:
        if kind == "timer":
            horizon = max(horizon, ts + dt - 1)
            rows.extend(b.sample_until(horizon, 0))
            continue
        ts = max(ts + dt, horizon + 1)  # nothing arrives for a time already sampled: the grace sees to it
        horizon = ts
        before = dict(venue)
        if kind == "snapshot":
            venue = {key: change.get(key, venue[key]) for key in STATE_KEYS}
        else:
            venue.update(change)
        history_ts.append(ts)
        history.append(dict(venue))
        if venue != before:
            changes.append(ts)
        if kind == "lost":
            b.desync()
            lost_any = True
            continue
        update = TickerUpdate("BTCUSDT", kind == "snapshot", ts, dict(venue) if kind == "snapshot" else change)
        rows.extend(b.apply(update, 0) or [])
    keys = [r.ts_us for r in rows]
    assert keys == sorted(set(keys)), "rows in increasing time, each key once"
    reference = book()
    for row in rows:
        t = row.ts_us // 1000
        reference.values = history[bisect.bisect_right(history_ts, t) - 1]
        assert row == reference.row(t, 0), t
    if not lost_any:
        expected = {0, *changes} if on_change else set()
        if interval_ms:
            expected |= set(range(0, horizon + 1, interval_ms))
        assert {r.ts_us // 1000 for r in rows} == expected


# --- trade tape ---------------------------------------------------------------------------------------


def vt(i, ts):
    return VenueTrade(f"id-{i}", ts, 100.0 + i, 1.0, "buy")


def test_live_trades_are_deduplicated_by_venue_id():
    tape = TradeTape("BTCUSDT")
    out = tape.accept_live([vt(1, 10), vt(2, 11), vt(1, 10)], 5)
    assert [t.trade_id for t in out] == [trade_id_of("id-1"), trade_id_of("id-2")]
    assert out[0].ts_us == 10_000 and out[0].recv_us == 5 and out[0].venue == "bybit"
    assert tape.accept_live([vt(2, 11), vt(3, 12)], 6)[0].trade_id == trade_id_of("id-3")
    assert tape.resume_point == 12


def test_a_gap_is_filled_from_a_page_and_the_resume_point_waits_for_it():
    tape = TradeTape("BTCUSDT")
    tape.accept_live([vt(1, 10), vt(2, 20)], 0)
    assert tape.open_gap()
    generation = tape.gap_generation
    tape.accept_live([vt(6, 60)], 0)  # the new connection's first trade
    assert tape.resume_point == 20  # not past the gap
    page = [vt(6, 60), vt(5, 50), vt(4, 40), vt(3, 20), vt(2, 20), vt(0, 5)]  # newest first, like the venue
    out, lost = tape.apply_catchup(page, generation, full=False, recv_us=0)
    assert [t.trade_id for t in out] == [trade_id_of(f"id-{i}") for i in (3, 4, 5)] and not lost
    assert tape.gap_from_ms is None and tape.resume_point == 60


def test_a_newer_gap_keeps_the_tape_open_and_a_full_page_may_have_lost_trades():
    tape = TradeTape("BTCUSDT")
    tape.accept_live([vt(1, 10)], 0)
    tape.open_gap()
    generation = tape.gap_generation
    tape.open_gap()  # dropped again while the page was in flight
    out, lost = tape.apply_catchup([vt(9, 90), vt(8, 80)], generation, full=True, recv_us=0)
    assert len(out) == 2 and lost
    assert tape.gap_from_ms == 10  # still open: the page was asked for before the newest gap
    out, _ = tape.apply_catchup([vt(9, 90)], tape.gap_generation, full=False, recv_us=0)
    assert out == [] and tape.gap_from_ms is None


def test_a_restart_resumes_from_its_checkpoint():
    tape = TradeTape("BTCUSDT", resume_ms=100)
    assert tape.resume_point == 100 and tape.gap_from_ms == 100
    out, _ = tape.apply_catchup([vt(3, 120), vt(2, 100), vt(1, 99)], tape.gap_generation, full=False, recv_us=0)
    assert [t.trade_id for t in out] == [trade_id_of("id-2"), trade_id_of("id-3")]  # 100 again: the sink has it
    assert TradeTape("X").open_gap() is False  # nothing seen, nothing to resume: nothing to fetch


def test_the_seen_window_is_bounded():
    tape = TradeTape("BTCUSDT")
    for i in range(SEEN_WINDOW + 100):
        tape.accept_live([vt(i, i)], 0)
    assert len(tape._seen) == SEEN_WINDOW and len(tape._owner) == SEEN_WINDOW
    assert tape.accept_live([vt(SEEN_WINDOW + 50, 1)], 0) == []  # still remembered
    assert tape.id_collisions == 0
