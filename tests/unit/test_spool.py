"""The disk spool on its own: round trips, order, crash damage, limits, gauges.

Crashes are simulated on the files themselves: a `kill -9` mid-append leaves a prefix of an entry at
the end of the last segment, which is exactly what these tests write there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import ClassVar

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.samples import one_of_each_new_kind
from ingestd import model
from ingestd.model import BookTop, Checkpoint, Record, Trade
from ingestd.sinks.spool import Spool, SpoolError, decode_batch, encode_batch, spool_dir_for
from ingestd.stats import StatsRegistry


def trades(first: int, n: int, symbol: str = "BTCUSDT") -> list[Record]:
    return [Trade("binance", symbol, i, 100.0 + i, 0.5, "buy", 1_700_000_000_000_000 + i, 1_700_000_000_000_100 + i)
            for i in range(first, first + n)]


def book(update_id: int) -> BookTop:
    return BookTop("binance", "ETHUSDT", update_id, 1, 2, 99.5, 1.0, 100.5, 2.0, 100.0,
                   [(99.5, 1.0), (99.0, 3.0)], [(100.5, 2.0)])


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".seg"))


def drain(spool: Spool) -> list[list[Record]]:
    out = []
    while (batch := spool.peek()) is not None:
        out.append(batch)
        spool.commit()
    return out


@pytest.fixture
def stats() -> StatsRegistry:
    return StatsRegistry("test")


def make(directory: Path, stats: StatsRegistry | None = None, **kw) -> Spool:
    kw.setdefault("max_bytes", 1 << 20)
    kw.setdefault("fsync", False)
    spool = Spool(directory, name="pg", stats=stats, **kw)
    spool.open()
    return spool


# --- encoding ------------------------------------------------------------------------------------


def test_every_record_kind_round_trips_in_batch_order(tmp_path: Path) -> None:
    batch: list[Record] = [*trades(0, 3), book(7), Checkpoint("binance", "BTCUSDT", 2), *one_of_each_new_kind(),
                           *trades(3, 2), book(8), *one_of_each_new_kind(1)]
    assert {type(r) for r in batch} == set(model.RECORD_TYPES.values()), "a new kind needs a line here"
    spool = make(tmp_path)
    assert spool.append(batch)
    spool.close()
    spool = make(tmp_path)  # from the file, not from a cache
    assert spool.peek() == batch
    assert [type(r) for r in spool.peek()] == [type(r) for r in batch]  # type: ignore[union-attr]


class Funding(msgspec.Struct, gc=False):
    """A record kind the spool has never heard of."""

    KIND: ClassVar[str] = "funding"
    venue: str
    symbol: str
    rate: float
    ts_us: int


def test_a_new_record_kind_round_trips_without_spool_changes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(model.RECORD_TYPES, Funding.KIND, Funding)
    batch = [Funding("binance", "BTCUSDT", 0.0001, 5), *trades(0, 2), Funding("binance", "ETHUSDT", -0.0002, 6)]
    spool = make(tmp_path)
    spool.append(batch)
    spool.close()
    assert make(tmp_path).peek() == batch


def test_an_unknown_kind_is_an_error_not_garbage(monkeypatch) -> None:
    monkeypatch.setitem(model.RECORD_TYPES, Funding.KIND, Funding)
    payload = encode_batch([Funding("binance", "BTCUSDT", 0.0001, 5)])
    monkeypatch.delitem(model.RECORD_TYPES, Funding.KIND)
    with pytest.raises(SpoolError, match="unknown"):
        decode_batch(payload)


_records = st.one_of(
    st.builds(Trade, st.just("binance"), st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.integers(0, 2**62),
              st.floats(allow_nan=False), st.floats(allow_nan=False), st.sampled_from(["buy", "sell"]),
              st.integers(0, 2**62), st.integers(0, 2**62)),
    st.builds(book, st.integers(0, 2**62)),
    st.builds(Checkpoint, st.just("binance"), st.sampled_from(["BTCUSDT", "ETHUSDT"]), st.integers(0, 2**62)),
)


@settings(max_examples=100, deadline=None)
@given(batch=st.lists(_records, max_size=50))
def test_encoding_round_trips_any_mix(batch: list[Record]) -> None:
    assert decode_batch(encode_batch(batch)) == batch


def test_decoding_can_skip_kinds() -> None:
    batch = [*trades(0, 3), Checkpoint("binance", "BTCUSDT", 2), book(1), Checkpoint("binance", "ETHUSDT", 9)]
    assert decode_batch(encode_batch(batch), {"checkpoint"}) == [batch[3], batch[5]]


# --- order, segments, reopening --------------------------------------------------------------------


def test_replay_is_in_order_across_segments_and_consumed_segments_are_deleted(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=2 * ONE)
    sent = [batch_n(i) for i in range(30)]
    for batch in sent:
        assert spool.append(batch)
    assert len(segments(tmp_path)) == 15, "two entries a segment"
    assert spool.bytes == sum(p.stat().st_size for p in tmp_path.glob("*.seg")) == 30 * ONE
    got = []
    for i in range(30):
        got.append(spool.peek())
        assert spool.peek() is got[-1], "peek is stable until commit"
        spool.commit()
        assert len(segments(tmp_path)) == 15 - (i + 1) // 2
    assert got == sent
    assert spool.peek() is None and spool.is_empty and spool.bytes == 0
    assert segments(tmp_path) == []
    assert spool.append(trades(600, 1))  # and it starts over, with a fresh segment id
    assert segments(tmp_path) == ["0000000000000016.seg"]


def test_the_spool_survives_reopening_and_committed_entries_stay_committed(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=2 * ONE)
    for i in range(6):
        spool.append(batch_n(i))
    for _ in range(3):  # the third leaves its segment half consumed
        spool.peek()
        spool.commit()
    spool.close()
    spool = make(tmp_path, segment_bytes=2 * ONE)
    assert drain(spool) == [batch_n(3), batch_n(4), batch_n(5)]


def test_a_lost_cursor_replays_again_rather_than_skipping(tmp_path: Path) -> None:
    spool = make(tmp_path)
    for i in range(3):
        spool.append(trades(i * 10, 10))
    spool.peek()
    spool.commit()
    spool.close()
    (tmp_path / "cursor").write_bytes(b"\0" * 7)  # a crash tore it
    spool = make(tmp_path)
    assert [b[0].trade_id for b in drain(spool)] == [0, 10, 20]  # type: ignore[union-attr]


def test_appends_after_reopening_go_after_the_old_entries(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(trades(0, 5))
    spool.close()
    spool = make(tmp_path)
    spool.append(trades(5, 5))
    assert [r.trade_id for b in drain(spool) for r in b] == list(range(10))  # type: ignore[union-attr]


def test_a_second_owner_is_refused(tmp_path: Path) -> None:
    first = make(tmp_path)
    with pytest.raises(SpoolError, match="in use by another process"):
        make(tmp_path)
    first.close()
    make(tmp_path).close()


def test_unopened_spool_refuses_work(tmp_path: Path) -> None:
    with pytest.raises(SpoolError, match="not open"):
        Spool(tmp_path, name="pg", max_bytes=1 << 20).append(trades(0, 1))


def test_spool_dirs_are_per_sink_and_instance_and_safe_names() -> None:
    assert spool_dir_for("/var/lib/ingestd", "pg", "binance-2") == Path("/var/lib/ingestd/spool/pg/binance-2")
    assert spool_dir_for("/s", "../x/y", "..") == Path("/s/spool/..%2Fx%2Fy/%2E%2E")


# --- crash damage --------------------------------------------------------------------------------


@pytest.mark.parametrize("torn", [3, 16, 40, -1], ids=["in the header", "header only", "mid payload", "last byte"])
def test_a_torn_tail_is_truncated_on_open_and_never_replayed(
    tmp_path: Path, torn: int, stats: StatsRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    spool = make(tmp_path, stats)
    spool.append(trades(0, 10))
    spool.append(trades(10, 10))
    spool.close()
    (seg,) = tmp_path.glob("*.seg")
    good = seg.stat().st_size
    # What a kill -9 in the middle of the next append leaves behind: a prefix of the entry.
    other = make(tmp_path / "other")
    other.append(trades(20, 10))
    other.close()
    entry = next((tmp_path / "other").glob("*.seg")).read_bytes()
    with open(seg, "ab") as f:
        f.write(entry[:torn])
    with caplog.at_level(logging.WARNING, logger="ingestd.spool"):
        spool = make(tmp_path, stats)
    assert seg.stat().st_size == good
    assert any("torn write" in r.getMessage() for r in caplog.records)
    spool.append(trades(30, 1))  # appends continue from the last whole entry
    assert [len(b) for b in drain(spool)] == [10, 10, 1]


def test_zeros_from_a_power_loss_are_not_an_entry(tmp_path: Path) -> None:
    spool = make(tmp_path)
    spool.append(trades(0, 10))
    spool.close()
    (seg,) = tmp_path.glob("*.seg")
    with open(seg, "ab") as f:
        f.write(b"\0" * 4096)
    assert [len(b) for b in drain(make(tmp_path))] == [10]


def test_a_bad_entry_further_in_is_set_aside_and_counted(
    tmp_path: Path, stats: StatsRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    spool = make(tmp_path, stats, segment_bytes=2 * ONE)
    for i in range(6):
        spool.append(batch_n(i))  # three segments of two entries
    spool.close()
    first = sorted(tmp_path.glob("*.seg"))[0]
    data = bytearray(first.read_bytes())
    data[ONE + 40] ^= 0xFF  # bit rot in the payload of the 2nd entry
    first.write_bytes(bytes(data))
    spool = make(tmp_path, stats, segment_bytes=2 * ONE)
    with caplog.at_level(logging.ERROR, logger="ingestd.spool"):
        got = drain(spool)
    assert got == [batch_n(0), batch_n(2), batch_n(3), batch_n(4), batch_n(5)]
    assert stats.counters["spool.pg.corrupt_bytes"] == ONE
    assert (tmp_path / (first.name + ".corrupt")).exists()
    assert any("fails its CRC" in r.getMessage() for r in caplog.records)


# --- limits --------------------------------------------------------------------------------------


def entry_size(batch: list[Record]) -> int:
    return 16 + len(encode_batch(batch))


def batch_n(i: int) -> list[Record]:
    """The i-th of a run of 20-trade batches that all encode to the same size (ids 1000 + 20 i ...)."""
    return trades(1000 + 20 * i, 20)


ONE = entry_size(batch_n(0))
assert all(entry_size(batch_n(i)) == ONE for i in range(100))


def test_block_refuses_when_full_and_takes_again_once_a_segment_is_consumed(tmp_path: Path, stats) -> None:
    spool = make(tmp_path, stats, max_bytes=8 * ONE, segment_bytes=2 * ONE)
    for i in range(8):
        assert spool.append(batch_n(i))
    assert spool.bytes == 8 * ONE and spool.fill_ratio == 1.0
    assert not spool.append(batch_n(8)), "block: refused"
    assert spool.bytes == 8 * ONE and len(segments(tmp_path)) == 4, "and nothing written"
    spool.peek()
    spool.commit()
    assert not spool.append(batch_n(8)), "half a segment consumed frees no disk yet"
    spool.peek()
    spool.commit()
    assert spool.append(batch_n(8))
    assert drain(spool) == [batch_n(i) for i in range(2, 9)]
    assert stats.counters.get("spool.pg.dropped_records", 0) == 0


def test_drop_oldest_drops_whole_oldest_segments_counts_and_logs(
    tmp_path: Path, stats: StatsRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    spool = make(tmp_path, stats, max_bytes=8 * ONE, segment_bytes=2 * ONE, when_full="drop_oldest")
    for i in range(8):
        spool.append(batch_n(i))
    with caplog.at_level(logging.WARNING, logger="ingestd.spool"):
        for i in range(8, 11):
            assert spool.append(batch_n(i)), "drop_oldest never refuses"
            assert spool.bytes <= spool.max_bytes
    assert stats.counters["spool.pg.dropped_records"] == 80
    assert stats.counters["spool.pg.dropped_batches"] == 4
    assert sum("dropped the oldest 40 records" in r.getMessage() for r in caplog.records) == 2
    assert drain(spool) == [batch_n(i) for i in range(4, 11)]


def test_drop_oldest_spares_the_batch_being_replayed(tmp_path: Path, stats: StatsRegistry) -> None:
    """The writer may be storing the peeked batch right now: dropping it would leave a stored batch
    inside the dropped stretch and a wrong count. It stays in memory until committed."""
    spool = make(tmp_path, stats, max_bytes=8 * ONE, segment_bytes=2 * ONE, when_full="drop_oldest")
    for i in range(8):
        spool.append(batch_n(i))
    assert spool.peek() == batch_n(0)
    spool.append(batch_n(8))  # drops the segment holding entries 0 and 1: only 1 counts
    spool.append(batch_n(9))
    spool.append(batch_n(10))  # drops 2 and 3
    assert stats.counters["spool.pg.dropped_records"] == 60
    assert not spool.is_empty
    assert spool.peek() == batch_n(0), "still the same batch"
    spool.commit()
    assert drain(spool) == [batch_n(i) for i in range(4, 11)]


def test_a_batch_bigger_than_the_whole_budget_still_fits_an_empty_spool(tmp_path: Path) -> None:
    spool = make(tmp_path, max_bytes=1000)
    assert spool.append(trades(0, 50))
    assert not spool.append(trades(50, 1))
    assert [len(b) for b in drain(spool)] == [50]


def test_gauges_and_one_warning_per_crossing_of_80_percent(
    tmp_path: Path, stats: StatsRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    spool = make(tmp_path, stats, max_bytes=10 * ONE, segment_bytes=ONE)
    with caplog.at_level(logging.WARNING, logger="ingestd.spool"):
        for i in range(9):
            spool.append(batch_n(i))
            assert stats.gauges["spool.pg.bytes"] == (i + 1) * ONE
            assert stats.gauges["spool.pg.fill_ratio"] == pytest.approx((i + 1) / 10)
        assert len([r for r in caplog.records if "full" in r.getMessage()]) == 1, "80 % and 90 %: one warning"
        for _ in range(2):  # down to 70 %
            spool.peek()
            spool.commit()
        assert stats.gauges["spool.pg.fill_ratio"] == pytest.approx(0.7)
        spool.append(batch_n(9))  # 80 % again: a new crossing
    warnings = [r.getMessage() for r in caplog.records if "full" in r.getMessage()]
    assert len(warnings) == 2 and "80% full" in warnings[0]


def test_fsync_on_by_default_and_the_policy_is_stated() -> None:
    from ingestd.sinks import spool as spool_module

    assert Spool("/nonexistent", name="x", max_bytes=1).fsync is True
    assert "kill -9" in (spool_module.__doc__ or "") and "power loss" in (spool_module.__doc__ or "")


def test_fsync_mode_appends_and_reads(tmp_path: Path) -> None:
    spool = make(tmp_path, fsync=True)
    spool.append(trades(0, 3))
    assert drain(spool) == [trades(0, 3)]


def test_scan_reads_everything_pending_without_consuming(tmp_path: Path) -> None:
    spool = make(tmp_path, segment_bytes=4096)
    for i in range(4):
        spool.append([*trades(i * 20, 20), Checkpoint("binance", "BTCUSDT", i * 20 + 19)])
    spool.peek()
    spool.commit()
    assert [cp.trade_id for cp in spool.scan({"checkpoint"})] == [39, 59, 79]  # type: ignore[union-attr]
    assert len(spool.scan()) == 63
    assert len(drain(spool)) == 3
