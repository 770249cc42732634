import random

from ingestd.venues.binance.book import LIVE, SYNCING, DepthSnapshot, LocalBook
from ingestd.venues.binance.protocol import DepthEvent


def ev(U, u, b=(), a=()):
    return DepthEvent(E=U, s="X", U=U, u=u, b=list(b), a=list(a))


def test_documented_procedure_drops_old_and_applies_bridging_event():
    book = LocalBook("X")
    book.on_diff(ev(5, 7, b=[(1.0, 1.0)]))
    book.on_diff(ev(8, 9, b=[(1.0, 2.0)]))
    assert book.needs_snapshot
    assert book.apply_snapshot(DepthSnapshot(8, [(1.0, 9.0), (0.9, 1.0)], [(1.1, 1.0)]))
    # 5..7 is older than the snapshot and dropped; 8..9 bridges lastUpdateId=8 and is applied
    assert book.state == LIVE and book.last_update_id == 9 and book.bids == {1.0: 2.0, 0.9: 1.0}


def test_snapshot_older_than_buffer_is_refused_and_buffer_kept():
    book = LocalBook("X")
    book.on_diff(ev(100, 101))
    assert not book.apply_snapshot(DepthSnapshot(50, [], []))
    assert book.state == SYNCING and book.needs_snapshot


def test_gap_resyncs_and_zero_qty_deletes():
    book = LocalBook("X")
    book.on_diff(ev(1, 1))
    book.apply_snapshot(DepthSnapshot(1, [(1.0, 1.0)], [(2.0, 1.0)]))
    assert book.on_diff(ev(2, 3, b=[(1.0, 0.0)], a=[(1.9, 4.0)]))
    assert book.bids == {} and book.asks == {2.0: 1.0, 1.9: 4.0}
    assert not book.on_diff(ev(3, 3))  # already applied
    assert not book.on_diff(ev(6, 7))  # 4..5 missing
    assert book.state == SYNCING and book.resyncs == 1 and book.needs_snapshot and book.bids == {}


def test_top_n_orders_best_first():
    book = LocalBook("X")
    book.on_diff(ev(1, 1))
    book.apply_snapshot(DepthSnapshot(1, [(1.0, 1), (3.0, 1), (2.0, 1)], [(5.0, 1), (4.0, 1), (6.0, 1)]))
    bids, asks = book.top(2)
    assert [p for p, _ in bids] == [3.0, 2.0] and [p for p, _ in asks] == [4.0, 5.0]


def test_random_diffs_match_a_reference_book():
    rng = random.Random(7)
    ref_b, ref_a, uid = {}, {}, 0
    events = []
    for _ in range(500):
        changes_b = [(float(rng.randint(90, 99)), float(rng.choice([0, 1, 2, 3]))) for _ in range(rng.randint(1, 3))]
        changes_a = [(float(rng.randint(101, 110)), float(rng.choice([0, 1, 2]))) for _ in range(rng.randint(0, 2))]
        U = uid + 1
        uid += len(changes_b) + len(changes_a)
        for p, q in changes_b:
            ref_b.pop(p, None) if q == 0 else ref_b.__setitem__(p, q)
        for p, q in changes_a:
            ref_a.pop(p, None) if q == 0 else ref_a.__setitem__(p, q)
        events.append((ev(U, uid, changes_b, changes_a), dict(ref_b), dict(ref_a), uid))
    book = LocalBook("X")
    # join late: buffer from event 100, snapshot as of event 120
    for e, *_ in events[100:130]:
        book.on_diff(e)
    _, snap_b, snap_a, snap_u = events[120]
    book.apply_snapshot(DepthSnapshot(snap_u, list(snap_b.items()), list(snap_a.items())))
    for e, *_ in events[130:]:
        book.on_diff(e)
    assert book.state == LIVE and book.bids == ref_b and book.asks == ref_a
