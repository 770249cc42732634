"""SIGHUP's reload for every family: a symbol list is applied where the family has one, and a family
without one (or a broken config) keeps running instead of dying on the reload."""

from __future__ import annotations

from pathlib import Path

import pytest

from ingestd.config import load_config
from ingestd.supervisor import Instance


class RecordingFeed:
    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.updates: list[list[str]] = []

    async def update_symbols(self, wanted: list[str]):
        self.updates.append(wanted)
        return wanted, []


def write(path: Path, family: str, body: str) -> Path:
    path.write_text(f'[sinks.local]\ntype = "sqlite"\n\n[feeds.{family}]\n{body}\n')
    return path


@pytest.mark.trio
async def test_a_family_without_a_symbol_list_survives_a_reload(tmp_path, caplog):
    path = write(tmp_path / "ingestd.toml", "uniswap", 'pools = ["0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640"]')
    instance = Instance(load_config(path), "uniswap", tmp_path / "state")
    instance.feed = RecordingFeed(instance.feed_cfg)
    write(path, "uniswap", 'pools = ["0x8ad599c3a0ff1de082011efddc58f1908eb6e6d8"]')
    await instance.reload()
    assert instance.feed.updates == []
    [warning] = [r for r in caplog.records if r.getMessage() == "changed keys need a restart to apply"]
    assert warning.keys == "pools"


@pytest.mark.trio
async def test_a_symbol_list_is_applied_live(tmp_path):
    path = write(tmp_path / "ingestd.toml", "bybit", 'symbols = ["BTCUSDT"]')
    instance = Instance(load_config(path), "bybit", tmp_path / "state")
    instance.feed = RecordingFeed(instance.feed_cfg)
    write(path, "bybit", 'symbols = ["BTCUSDT", "ETHUSDT"]')
    await instance.reload()
    assert instance.feed.updates == [["BTCUSDT", "ETHUSDT"]]
    assert instance.feed_cfg.symbols == ("BTCUSDT", "ETHUSDT")


@pytest.mark.trio
async def test_a_failing_update_is_logged_and_the_feed_keeps_its_list(tmp_path, caplog):
    path = write(tmp_path / "ingestd.toml", "bybit", 'symbols = ["BTCUSDT"]')
    instance = Instance(load_config(path), "bybit", tmp_path / "state")

    class Broken(RecordingFeed):
        async def update_symbols(self, wanted):
            raise RuntimeError("venue refused")

    instance.feed = Broken(instance.feed_cfg)
    write(path, "bybit", 'symbols = ["ETHUSDT"]')
    await instance.reload()  # no exception escapes: SIGHUP must never take the daemon down
    assert "reload failed, keeping the running configuration" in caplog.text
