"""The pair list file: atomic writes, validation, and following changes by stat signature."""

from __future__ import annotations

import json
import os

import pytest
import trio

from ingestd.venues.pairs_file import PairsFileError, PairsFileFollower, parse_pairs, read_pairs_file, write_pairs_file


def test_write_then_read(tmp_path):
    path = tmp_path / "sub" / "pairs.json"
    write_pairs_file(path, ["BTCUSDT", "ETHUSDT"], source="coingecko")
    doc = json.loads(path.read_text())
    assert doc["pairs"] == ["BTCUSDT", "ETHUSDT"] and doc["source"] == "coingecko" and doc["version"] == 1
    assert read_pairs_file(path) == ["BTCUSDT", "ETHUSDT"]
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in path.parent.iterdir()] == ["pairs.json"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "pairs.json"
    write_pairs_file(path, ["BTCUSDT"])

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        write_pairs_file(path, ["ETHUSDT"])
    assert read_pairs_file(path) == ["BTCUSDT"]
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.json"]


@pytest.mark.parametrize("data, problem", [
    (b"{not json", "not JSON"),
    (b"[]", 'expected an object with a "pairs" list'),
    (b'{"pairs": "BTCUSDT"}', 'expected an object with a "pairs" list'),
    (b'{"pairs": ["btcusdt"]}', "invalid symbols"),
    (b'{"pairs": ["BTCUSDT", 5]}', "invalid symbols"),
    (b"\xff\xfe", "not JSON"),
])
def test_invalid_documents_say_what_is_wrong(data, problem):
    with pytest.raises(PairsFileError, match=problem):
        parse_pairs(data)


def test_duplicates_are_dropped_in_order():
    assert parse_pairs(b'{"pairs": ["ETHUSDT", "BTCUSDT", "ETHUSDT"]}') == ["ETHUSDT", "BTCUSDT"]


def test_missing_file():
    with pytest.raises(PairsFileError, match="missing"):
        read_pairs_file("/nonexistent/pairs.json")


@pytest.mark.trio
async def test_follower_sees_each_change_and_falls_back_to_nothing_on_a_bad_file(tmp_path):
    path = tmp_path / "pairs.json"
    follower = PairsFileFollower(path)
    assert await follower.pairs() == [] and follower.problem == "missing"
    write_pairs_file(path, ["BTCUSDT"])
    with trio.fail_after(5):
        await follower.wait_for_change(0.01)
    assert await follower.pairs() == ["BTCUSDT"] and follower.problem is None
    # The same size and (possibly) the same mtime tick: the rename's new inode still shows it.
    write_pairs_file(path, ["ETHUSDT"])
    with trio.fail_after(5):
        await follower.wait_for_change(0.01)
    assert await follower.pairs() == ["ETHUSDT"]
    path.write_text("{broken")
    with trio.fail_after(5):
        await follower.wait_for_change(0.01)
    assert await follower.pairs() == [] and follower.problem.startswith("not JSON")
    with trio.move_on_after(0.1) as idle:
        await follower.wait_for_change(0.01)  # nothing changed: keeps waiting
    assert idle.cancelled_caught
