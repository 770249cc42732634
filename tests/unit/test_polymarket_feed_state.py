"""The Polymarket feed's state logic without sockets: which window each whale poll asks for, and
what a poll result becomes (records, resume points, markets followed)."""

from __future__ import annotations

import pytest
import trio

from ingestd.config import parse_config
from ingestd.model import Checkpoint, WhaleTrade
from ingestd.stats import StatsRegistry
from ingestd.venues.polymarket import feed as feed_module
from ingestd.venues.polymarket.data_api import DataTrade
from ingestd.venues.polymarket.feed import PolymarketFeed

pytestmark = pytest.mark.trio

WHALE = "0x" + "a" * 40


class FakeClient:
    """Answers every poll from a list of trades, honouring `start`; records what was asked."""

    def __init__(self) -> None:
        self.trades: list[DataTrade] = []
        self.asked: list[int | None] = []

    async def fetch_trades(self, make, key, start_s):
        self.asked.append(start_s)
        return [t for t in self.trades if start_s is None or t.timestamp_s >= start_s], 123


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def trade(ts: int, tx: str, asset: str = "77") -> DataTrade:
    return DataTrade(WHALE, "BUY", asset, "0xcond", 10.0, 0.5, ts, tx)


def make_feed(monkeypatch, clock, resume=None, **extra):
    settings = {"whale_addresses": f'["{WHALE}"]', "whale_history_s": 0, "whale_lookback_s": 60,
                "follow_whale_markets": "false", **extra}
    text = "[feeds.polymarket]\n" + "\n".join(f"{k} = {v}" for k, v in settings.items())
    cfg = parse_config(text, environ={}).feeds["polymarket"]
    monkeypatch.setattr(feed_module.time, "time", clock)
    feed = PolymarketFeed(cfg, router=None, stats=StatsRegistry("polymarket"), resume=resume)
    feed._client = FakeClient()
    feed._apply_whales({WHALE: None})
    return feed


async def poll(feed):
    """One poll of the whale, its result applied as the state task would; the records it made."""
    out = []
    send, recv = trio.open_memory_channel(1)

    async def state():
        msg = await recv.receive()
        out.extend(feed._on_whale_polled(msg))
        msg.applied.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(state)
        await feed._poll_whale(WHALE, send)
    return out


async def test_a_whale_with_no_trade_yet_is_asked_from_its_first_poll_then_from_its_progress(monkeypatch):
    clock = Clock(1000.5)
    feed = make_feed(monkeypatch, clock)
    assert await poll(feed) == []
    clock.now = 1010.5
    await poll(feed)  # not just "this second": a trade made at 1003 must still be found
    clock.now = 1100.5
    await poll(feed)
    clock.now = 1101.5
    feed._client.trades = [trade(1099, "0x1")]
    records = await poll(feed)
    assert feed._client.asked == [1000, 1000, 1000, 1040]  # then the lookback before the last poll
    assert [type(r) for r in records] == [WhaleTrade, Checkpoint]
    assert records[1] == Checkpoint("polymarket", WHALE, 1099)
    clock.now = 1102.5
    feed._client.trades.append(trade(1102, "0x2"))
    records = await poll(feed)  # asks from the newest trade minus the lookback; the repeat is dropped
    assert feed._client.asked[-1] == 1099 - 60
    assert [r.trade_id for r in records if type(r) is WhaleTrade] == ["0x2"]


async def test_after_a_restart_older_trades_only_reveal_markets(monkeypatch):
    clock = Clock(2000.0)
    feed = make_feed(monkeypatch, clock, resume={WHALE: 1900}, whale_history_s=3600, whale_lookback_s=10,
                     follow_whale_markets="true", backfill_max_s=3600)
    feed._client.trades = [trade(1500, "0xold", asset="11"), trade(1895, "0xlate", asset="22"),
                           trade(1950, "0xnew", asset="33")]
    records = await poll(feed)
    assert feed._client.asked == [2000 - 3600]  # the history, for the markets
    assert [r.trade_id for r in records if type(r) is WhaleTrade] == ["0xlate", "0xnew"]  # from 1900 - 10
    assert set(feed._assets) == {"11", "22", "33"}
    # Each market's tape starts at the whale's first trade in it, once its first book arrives.
    assert {a: st.wanted_from_s for a, st in feed._assets.items()} == {"11": 1500, "22": 1895, "33": 1950}


async def test_a_whale_no_longer_watched_takes_its_markets_along(monkeypatch):
    other = "0x" + "b" * 40
    feed = make_feed(monkeypatch, Clock(3000.0), whale_history_s=3600, follow_whale_markets="true")
    feed._apply_whales({WHALE: None, other: None})
    feed._client.trades = [trade(2990, "0x1", asset="11"), trade(2991, "0x2", asset="22")]
    await poll(feed)
    feed._on_whale_polled(feed_module._WhalePolled(other, [DataTrade(other, "SELL", "22", "0xc", 1.0, 0.4, 2992,
                                                                          "0x3")], None, 1))
    assert set(feed._assets) == {"11", "22"}
    feed._apply_whales({other: None})
    assert set(feed._assets) == {"22"}  # still traded by a watched whale
    feed._apply_whales({})
    feed._symbols_changed()
    assert feed._assets == {} and feed.symbols == [] and "11" in feed._retired
