"""SIGHUP's reload for every family: a symbol list is applied where the family has one, and a family
without one (or a broken config) keeps running instead of dying on the reload."""

from __future__ import annotations

import logging
import os
import signal
from functools import partial
from pathlib import Path

import pytest
import trio

from ingestd import supervisor
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


# --- signals against start-up and reloads -------------------------------------------------------------


class NeverStarts:
    """A feed whose start-up waits on the venue forever (say, rate limited on every try)."""

    def __init__(self, cfg, router, stats, *, resume=None) -> None:
        self.cfg, self.symbols, self.stopped = cfg, [], False

    async def run(self, *, task_status):
        await trio.sleep_forever()

    def stop(self) -> None:
        self.stopped = True


class ReloadNeverEnds(NeverStarts):
    """Starts at once, then takes a symbol-list change that never finishes."""

    async def run(self, *, task_status):
        task_status.started()
        while not self.stopped:
            await trio.sleep(0.01)

    async def update_symbols(self, wanted):
        await trio.sleep_forever()


class NotesSent:
    """What the instance tells systemd, in order (only the verbs)."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    def __getattr__(self, verb: str):
        return lambda *args, **kwargs: self.sent.append(verb)


def use_feed(monkeypatch, family: str, cls) -> None:
    monkeypatch.setitem(supervisor.FEED_CLASSES, family, f"{__name__}:{cls.__name__}")


@pytest.mark.trio
async def test_a_stop_during_start_up_ends_the_instance(tmp_path, monkeypatch):
    use_feed(monkeypatch, "bybit", NeverStarts)
    path = write(tmp_path / "ingestd.toml", "bybit", 'symbols = ["BTCUSDT"]')
    instance = Instance(load_config(path), "bybit", tmp_path / "state")
    stop = trio.Event()
    with trio.fail_after(20):  # a hang guard: before the fix, run() never returned
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(instance.run, stop=stop))
            await trio.sleep(0.3)
            stop.set()
    assert not instance.feed_started and instance.feed.stopped


@pytest.mark.trio
async def test_sigterm_is_acted_on_while_a_reload_hangs(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    use_feed(monkeypatch, "bybit", ReloadNeverEnds)
    path = write(tmp_path / "ingestd.toml", "bybit", 'symbols = ["BTCUSDT"]')
    instance = Instance(load_config(path), "bybit", tmp_path / "state")
    instance.notifier = notes = NotesSent()
    write(path, "bybit", 'symbols = ["BTCUSDT", "ETHUSDT"]')
    with trio.fail_after(20):  # a hang guard: before the fix, the reload held up the signal watcher
        async with trio.open_nursery() as nursery:
            nursery.start_soon(instance.run)
            while not instance.feed_started:
                await trio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGHUP)
            await trio.sleep(0.3)
            os.kill(os.getpid(), signal.SIGHUP)  # a second reload waits its turn
            await trio.sleep(0.3)
            os.kill(os.getpid(), signal.SIGTERM)
    assert instance.feed.stopped
    assert "stopped cleanly" in caplog.text
    # The reload cut short by the stop says nothing after STOPPING=1 (no READY=1 undoing it).
    assert notes.sent.count("reloading") == 1 and notes.sent[-1] == "stopping", notes.sent
