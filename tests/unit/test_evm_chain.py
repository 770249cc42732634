"""The EVM feed's pure parts: the unfinalized window, the getLogs span, backfill progress."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ingestd.venues.evm.chain import ChainWindow
from ingestd.venues.evm.progress import BackfillProgress
from ingestd.venues.evm.protocol import BlockHeader, Transfer
from ingestd.venues.evm.ranges import GROW_AFTER, SpanSizer


def h(number: int, branch: str = "a") -> str:
    return "0x" + f"{branch}{number:063x}"[-64:]


def header(number: int, branch: str = "a", parent_branch: str | None = None) -> BlockHeader:
    return BlockHeader(number, h(number, branch), h(number - 1, parent_branch or branch), 1_700_000_000 + 12 * number)


def transfer(number: int, index: int, branch: str = "a", removed: bool = False) -> Transfer:
    return Transfer(number, h(number, branch), index, "0x" + "11" * 32, "0x" + "22" * 20, "0x" + "33" * 20,
                    "0x" + "44" * 20, 10**6 * index, removed)


def window_with(first_final: int, blocks: range, branch: str = "a") -> ChainWindow:
    window = ChainWindow(first_final, h(first_final, branch))
    assert window.extend([header(n, branch) for n in blocks], [transfer(n, 0, branch) for n in blocks], 1) is None
    return window


def test_extend_links_headers_and_holds_transfers():
    window = window_with(100, range(101, 104))
    assert (window.finalized, window.tip, window.tip_hash) == (100, 103, h(103))
    assert window.pending_transfers == 3
    assert window.hash_at(100) == h(100) and window.hash_at(102) == h(102) and window.hash_at(99) is None


@pytest.mark.parametrize("headers, transfers, why", [
    ([header(102)], [], "where 101 was expected"),
    ([header(101, "b")], [], "parent"),  # its parent is block 100 of another branch
    ([header(101), header(102, "b")], [], "parent"),  # a reorg between two header reads
    ([header(101)], [transfer(101, 0, "b")], "another branch"),  # logs read from another branch
    ([header(101)], [transfer(105, 0)], "outside"),
])
def test_extend_refuses_what_does_not_continue_the_window(headers, transfers, why):
    window = ChainWindow(100, h(100))
    reason = window.extend(headers, transfers, 1)
    assert reason is not None and why in reason
    assert window.tip == 100 and not window.blocks  # nothing half-applied


def test_an_unknown_finalized_hash_accepts_any_parent():
    window = ChainWindow(100)  # resumed from a checkpoint: block 100's hash is not known
    assert window.extend([header(101, "b", parent_branch="z")], [], 1) is None


def test_rollback_to_the_fork_point_drops_only_blocks_above_it():
    window = window_with(100, range(101, 106))
    assert window.rollback(102) == 3
    assert window.tip == 102 and window.tip_hash == h(102)
    assert window.extend([header(103, "b", parent_branch="a")], [transfer(103, 0, "b")], 2) is None
    assert window.blocks[103].header.hash == h(103, "b")
    assert window.rollback(100) == 3 and window.tip == 100 and not window.blocks


def test_final_blocks_and_advance():
    window = window_with(100, range(101, 106))
    assert [b.header.number for b in window.final_blocks(103)] == [101, 102, 103]
    assert window.final_blocks(100) == []
    assert [b.header.number for b in window.final_blocks(200)] == [101, 102, 103, 104, 105]
    window.advance(103, h(103))
    assert (window.finalized, window.finalized_hash, window.tip, sorted(window.blocks)) == (103, h(103), 105, [104, 105])
    # Next blocks must still link to what is held.
    assert window.extend([header(106)], [], 3) is None


def test_advance_past_an_empty_window_moves_the_mark():
    window = ChainWindow(100)
    window.advance(150, h(150))
    assert (window.finalized, window.tip, window.tip_hash) == (150, 150, h(150))


@given(st.lists(st.tuples(st.sampled_from(["extend", "rollback", "advance"]), st.integers(0, 6)), max_size=40))
def test_window_stays_contiguous_whatever_happens(steps):
    window = ChainWindow(0, h(0))
    branch = iter("abcdefghijklmnopqrstuvwxyz" * 4)
    current = {0: h(0)}
    for op, n in steps:
        if op == "extend" and n:
            b = next(branch)
            tip = window.tip
            headers = [BlockHeader(tip + i, h(tip + i, b), current[tip] if i == 1 else h(tip + i - 1, b), 0)
                       for i in range(1, n + 1)]
            assert window.extend(headers, [transfer(x.number, 0, b) for x in headers], 0) is None
            current.update({x.number: x.hash for x in headers})
        elif op == "rollback":
            window.rollback(max(window.finalized, window.tip - n))
        elif op == "advance":
            to = min(window.tip, window.finalized + n)
            window.advance(to, window.hash_at(to))
        assert list(window.blocks) == list(range(window.finalized + 1, window.tip + 1))
        for number, block in window.blocks.items():
            assert block.header.parent_hash == window.hash_at(number - 1) or number - 1 == window.finalized


# --- the getLogs span ---------------------------------------------------------------------------


def test_span_honours_a_narrower_suggestion_else_halves():
    sizer = SpanSizer(2000)
    assert sizer.next_range(100, 10_000) == (100, 2099)
    assert sizer.next_range(100, 500) == (100, 500)
    assert sizer.on_too_large((100, 2099), (100, 399)) == 300  # Infura's "Try with this block range"
    assert sizer.on_too_large((100, 399), None) == 150  # Alchemy: no range, bisect
    assert sizer.on_too_large((100, 249), (0, 5000)) == 75  # a wider "suggestion" is no help
    for _ in range(20):
        sizer.on_too_large((1, 2), None)
    assert sizer.span == 1


def test_span_grows_back_after_successes_up_to_the_maximum():
    sizer = SpanSizer(100)
    sizer.on_too_large((1, 100), None)
    sizer.on_too_large((1, 50), None)
    assert sizer.span == 25
    for _ in range(GROW_AFTER - 1):
        sizer.on_success()
    assert sizer.span == 25
    sizer.on_success()
    assert sizer.span == 50
    for _ in range(10 * GROW_AFTER):
        sizer.on_success()
    assert sizer.span == 100
    with pytest.raises(ValueError):
        SpanSizer(0)


# --- progress -----------------------------------------------------------------------------------


def test_progress_reports_when_due_with_rate_and_eta():
    progress = BackfillProgress(1001, 2000, now=0.0, interval_s=10.0)
    assert progress.advance(1100, now=5.0) is None
    line = progress.advance(1250, now=10.0)
    assert line == {"blocks_done": 250, "blocks_total": 1000, "percent": 25.0, "blocks_per_s": 25.0,
                    "eta_s": 30, "at_block": 1250}
    assert progress.advance(1300, now=12.0) is None
    assert progress.advance(2000, now=20.0)["eta_s"] == 0
