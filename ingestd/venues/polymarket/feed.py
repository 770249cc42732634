"""The Polymarket feed: the CLOB market channel for books and trades, and the whale watcher.

Task tree (one nursery per level, nothing outlives its parent):

    PolymarketFeed.run
    ├── state task          the only owner of books, tapes and whale state; the only sender to the router
    └── producers           everything that feeds the state task through one bounded inbox
        ├── connection × N  one WebSocket per `assets_per_connection` outcome tokens (channel.py)
        ├── whales loader   reads the whales table every `whales_reload_s`
        ├── whale poller    Data API `trades?user=` for each enabled whale, spread over `poll_interval_s`
        ├── backfill worker Data API `trades?market=` for tapes with a hole
        └── ticker          books due for storing, resume points, gauges, the heartbeat

Books: each token has a local book from the venue's `book` snapshots and `price_change` levels,
stored as a PredictionBook when it changed, at most every `book_interval_ms`, and once more when
it settles. The venue sends no sequence numbers; its best bid/ask after each change is checked
against ours, and a disagreement subscribes the token again for a fresh snapshot. A reconnect
resubscribes and takes the fresh snapshots.

Trades (the tape of each token): `last_trade_price` events while connected, and the Data API
(`?market=`) for every hole: before a token's first snapshot, while disconnected, before a
restart (from the token's Checkpoint), and back to the first trade a whale made in it (within
`backfill_max_s`). Market trade times are whole seconds (`ts`; `recv_ts` keeps the receive time):
the Data API has nothing finer, and one trade must have one natural key (token, tx hash, ts)
whichever source delivered it, so that the sinks drop the copies a backfill brings again. The
feed also drops the copies it remembers (by transaction hash, per token) before sending them.
A Checkpoint per token (trade_id = a second S: every trade before S was emitted) follows the
trades in-band.

Whale trades: every enabled whale's fills are polled from the Data API, de-duplicated by
(transaction hash, token), and stored as WhaleTrade (Kafka: `whale_activity`). A Checkpoint per
wallet (trade_id = the newest trade second seen) follows its trades; a restart asks again from
there minus `whale_lookback_s`, and the sinks' natural key (tx hash, token, wallet) drops repeats.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import trio

from ingestd.logs import RateLimitedLog
from ingestd.model import Checkpoint, PredictionBook, PredictionTrade, Record, WhaleTrade
from ingestd.pipeline import Router
from ingestd.secrets import reveal
from ingestd.stats import StatsRegistry, now_us
from ingestd.venues.polymarket import data_api, protocol
from ingestd.venues.polymarket.book import LocalBook
from ingestd.venues.polymarket.channel import Channel, Chunk, ConnectionDown, Group
from ingestd.venues.polymarket.data_api import DataTrade
from ingestd.venues.polymarket.data_client import DataClient
from ingestd.venues.polymarket.whales import Whale, WhaleStore, normalize_address, store_for_sink_object

VENUE = "polymarket"
log = logging.getLogger("ingestd.polymarket")

TICK_S = 0.1  # book emission check and heartbeat
SLOW_TICK_S = 1.0  # resume points, gauges, forgetting old trades
INBOX_CAPACITY = 64
SEEN_RETENTION_S = 900  # a token remembers the trades it emitted this long (older repeats: the sinks drop them)
BACKFILL_RETRY_S = 1.0


# --- inbox messages ------------------------------------------------------------------------------

@dataclass(slots=True)
class _WhalePolled:
    address: str
    trades: list[DataTrade]
    emit_from_s: int | None  # older trades were stored before a restart; they only reveal markets
    detected_us: int
    applied: trio.Event = field(default_factory=trio.Event)


@dataclass(slots=True)
class _Backfilled:
    condition_id: str
    trades: list[DataTrade]
    applied: trio.Event = field(default_factory=trio.Event)


@dataclass(slots=True)
class _Whales:
    whales: dict[str, Whale | None]  # address -> table row (None: from config only)


@dataclass(slots=True)
class _AssetsChanged:
    added: list[str]
    removed: list[str]
    applied: trio.Event = field(default_factory=trio.Event)


class _Tick:
    __slots__ = ()


_TICK = _Tick()


# --- state ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class _Asset:
    book: LocalBook
    group: Group
    configured: bool
    whales: set[str] = field(default_factory=set)  # the watched whales that traded it
    receiving: bool = False  # its trades arrive over a live connection (since a snapshot)
    tape_start_s: int | None = None  # the tape holds every trade from this second on (set at the first book)
    wanted_from_s: int | None = None  # before the first book: where the tape should start
    needs_from_s: int | None = None  # a hole from here on, to fill once the book is live again
    last_trade_s: int | None = None
    seen: dict[str, int] = field(default_factory=dict)  # tx hash -> trade second
    checkpointed: int | None = None
    dirty: bool = False
    last_emit: float = -math.inf
    emitted: tuple[int, str] | None = None  # (ts_ms, hash) of the last stored book


@dataclass(slots=True)
class _WhaleState:
    row: Whale | None
    watermark_s: int | None  # newest trade second seen; the resume point
    resumed: bool  # the watermark came from a stored checkpoint
    since_s: int | None = None  # before any trade is seen: polls ask from here (history, then progress)
    checkpointed: int | None = None
    polled: bool = False
    seen: dict[tuple[str, str], int] = field(default_factory=dict)


class PolymarketFeed:
    def __init__(self, cfg: Any, router: Router, stats: StatsRegistry, *, resume: dict[str, int] | None = None,
                 store: WhaleStore | None = None) -> None:
        self.cfg = cfg
        self.router = router
        self.stats = stats
        self._resume_points = {k.lower(): v for k, v in (resume or {}).items()}
        if store is None and router is not None:  # the whales table lives in the SQL store it writes to
            store = router.store_in_sinks(store_for_sink_object, getattr(cfg, "whales_sink", ""))
        self.store = store
        self.symbols: list[str] = []
        self._running = trio.Event()
        self._running.set()
        self._channel = Channel(cfg, stats, lambda: self._running)
        self._assets: dict[str, _Asset] = {}
        self._followed_changed = False
        self._retired: set[str] = set()
        self._condition_of: dict[str, str] = {}
        self._whales: dict[str, _WhaleState] = {}
        self._backfill_pending: dict[str, int] = {}  # condition -> earliest second to fetch from
        self._backfill_due: dict[str, float] = {}  # condition -> trio time it may be fetched
        self._backfill_inflight: dict[str, int] = {}
        self._backfill_wakeup = trio.lowlevel.ParkingLot()
        self._client: DataClient | None = None
        self._nursery: trio.Nursery | None = None
        self._control_inbox: trio.MemorySendChannel | None = None
        self._producers: trio.CancelScope | None = None
        self._stopping = False
        self._wedged = False
        self._poll_wakeup = trio.Event()
        self._poll_now = False
        self._rounds_started = 0
        self._rounds_done = 0
        self._rounds_changed = trio.Event()
        self._whale_records = 0  # whale trades emitted so far
        self._last_slow_tick = -math.inf
        self._rl = RateLimitedLog(interval_s=10.0)

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.cfg
        async with httpx.AsyncClient(base_url=reveal(cfg.data_api_url), timeout=cfg.request_timeout_s) as http:
            budget = max(1, int(cfg.data_api_requests * cfg.data_api_headroom))
            self._client = DataClient(http, self.stats, requests=budget, window_s=cfg.data_api_window_s,
                                      page_size=cfg.page_size)
            inbox_send, inbox_recv = trio.open_memory_channel[object](INBOX_CAPACITY)
            self.stats.watch_queue(f"{VENUE}.inbox", lambda: _channel_depth(inbox_recv))
            whales = await self._load_whales()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._state_task, inbox_recv)
                async with inbox_send:
                    try:
                        async with trio.open_nursery() as producers:
                            self._producers = producers.cancel_scope
                            self._nursery, self._control_inbox = producers, inbox_send.clone()
                            if whales is None:  # the table is unreadable now: start with the configured whales
                                whales = {normalize_address(a): None for a in cfg.whale_addresses}
                            self._apply_whales(whales)
                            for asset in cfg.asset_ids:
                                self._follow(asset, configured=True)
                            self._symbols_changed()
                            producers.start_soon(self._whales_loader, inbox_send.clone())
                            producers.start_soon(self._poller, inbox_send.clone())
                            producers.start_soon(self._backfill_worker, inbox_send.clone())
                            producers.start_soon(self._ticker, inbox_send.clone())
                            log.info("polymarket feed starting", extra={
                                "assets": len(self._assets), "whales": len(self._whales), "ws_url": str(cfg.ws_url),
                                "whales_store": self.store.description if self.store else "none"})
                            task_status.started()
                    finally:
                        self._stopping = True
                        if self._control_inbox is not None:
                            self._control_inbox.close()

    def stop(self) -> None:
        if self._producers is not None:
            self._producers.cancel()

    def wedge(self) -> None:
        self._wedged = True

    def reconnect(self) -> int:
        """Drop and remake every connection; what the drop misses is backfilled from the Data API."""
        self._channel.skip_backoff = True
        return self._channel.cut_all()

    def pause(self) -> None:
        if self._running.is_set():
            self._running = trio.Event()
            self._channel.cut_all()

    def resume(self) -> None:
        self._running.set()
        self._poll_wakeup.set()

    async def trigger(self) -> dict:
        """Poll every enabled whale now; returns {"records": whale trades stored meanwhile, "whales": n}."""
        if not self._running.is_set():
            return {"records": 0, "whales": len(self._whales), "paused": True}
        target = self._rounds_started + 1
        before = self._whale_records
        self._poll_now = True
        self._poll_wakeup.set()
        while self._rounds_done < target:
            await self._rounds_changed.wait()
        return {"records": self._whale_records - before, "whales": len(self._whales)}

    async def update_symbols(self, wanted: list[str]) -> tuple[list[str], list[str]]:
        """Follow a new list of configured outcome tokens; tokens whales trade stay followed."""
        keep = set(wanted)
        added = [a for a in wanted if a not in self._assets or not self._assets[a].configured]
        removed = [a for a, st in self._assets.items() if st.configured and a not in keep]
        if not added and not removed:
            return [], []
        change = _AssetsChanged(added, removed)
        await self._control_inbox.send(change)
        await change.applied.wait()
        return added, removed

    # --- following tokens ----------------------------------------------------------------------

    def _follow(self, asset: str, *, configured: bool = False) -> _Asset:
        st = self._assets.get(asset)
        if st is not None:
            st.configured = st.configured or configured
            return st
        channel = self._channel
        group = next((g for g in channel.groups if len(g.assets) < self.cfg.assets_per_connection), None)
        if group is None:
            group = Group(len(channel.groups))
            channel.groups.append(group)
            if self._nursery is not None and not self._stopping:
                self._nursery.start_soon(channel.run_group, group, self._control_inbox.clone())
        st = self._assets[asset] = _Asset(LocalBook(asset), group, configured)
        resumed = self._resume_points.get(asset)
        if resumed is not None:  # a restart: the tape goes on from where it stopped
            st.wanted_from_s = max(resumed, int(time.time()) - self.cfg.backfill_max_s)
            st.checkpointed = resumed
        self._retired.discard(asset)
        self._followed_changed = True
        group.assets.append(asset)
        group.notify()
        return st

    def _unfollow(self, asset: str) -> None:
        st = self._assets.pop(asset, None)
        if st is None:
            return
        self._retired.add(asset)  # events still in flight before the unsubscribe are not errors
        self._followed_changed = True
        st.group.assets.remove(asset)
        st.group.notify()

    def _symbols_changed(self) -> None:
        if self._followed_changed:
            self._followed_changed = False
            self.symbols = list(self._assets)
            self.stats.set_gauge(f"{VENUE}.symbols", len(self._assets))
            self.stats.set_gauge(f"{VENUE}.connections_planned", self._channel.planned())

    def _whale_market(self, address: str, t: DataTrade) -> None:
        """A whale traded token `t.asset`: follow it, with its tape from that trade on."""
        if not self.cfg.follow_whale_markets:
            return
        if t.condition_id:
            self._condition_of.setdefault(t.asset, t.condition_id)
        st = self._follow(t.asset)
        st.whales.add(address)
        if not self.cfg.backfill:
            return
        lower = max(t.timestamp_s, int(time.time()) - self.cfg.backfill_max_s)
        if st.tape_start_s is None:
            st.wanted_from_s = lower if st.wanted_from_s is None else min(st.wanted_from_s, lower)
        elif lower < st.tape_start_s:
            st.tape_start_s = lower
            self._schedule_backfill(t.asset, lower)

    # --- the state task ------------------------------------------------------------------------

    async def _state_task(self, inbox: trio.MemoryReceiveChannel) -> None:
        router = self.router
        async with inbox:
            async for msg in inbox:
                if self._wedged:
                    log.critical("feed wedged on purpose (SIGUSR2): no progress until restarted")
                    await trio.sleep_forever()
                kind = type(msg)
                if kind is Chunk:
                    records = self._on_chunk(msg)
                elif kind is _Tick:
                    records = self._on_tick()
                elif kind is _WhalePolled:
                    records = self._on_whale_polled(msg)
                elif kind is _Backfilled:
                    records = self._on_backfilled(msg)
                elif kind is ConnectionDown:
                    records = self._on_connection_down(msg)
                elif kind is _Whales:
                    records = self._apply_whales(msg.whales)
                else:
                    records = self._on_assets_changed(msg)
                if records:
                    await router.send(records)
                if kind is _WhalePolled or kind is _Backfilled or kind is _AssetsChanged:
                    msg.applied.set()
                self._symbols_changed()
                self.stats.heartbeat(f"feed.{VENUE}")
            # Stopping: the books changed since they were last stored, and the resume points.
            final = self._due_books(force=True) + self._tape_checkpoints() + self._whale_checkpoints()
            if final:
                await router.send(final)

    def _on_chunk(self, chunk: Chunk) -> list[Record]:
        out: list[Record] = []
        lags: list[int] = []
        recv_us = chunk.recv_us
        counts: dict[str, int] = {}
        newest_ms = 0
        for ev in chunk.events:
            kind = type(ev)
            if kind is protocol.LastTrade:
                counts["last_trade_price"] = counts.get("last_trade_price", 0) + 1
                newest_ms = max(newest_ms, ev.timestamp_ms)
                st = self._assets.get(ev.asset_id)
                if st is None:
                    self._unexpected(ev.asset_id)
                    continue
                self._condition_of.setdefault(ev.asset_id, ev.market)
                if ev.tx_hash in st.seen:
                    self.stats.incr(f"{VENUE}.duplicates_dropped")
                    continue
                ts_s = ev.timestamp_ms // 1000
                out.append(PredictionTrade(VENUE, ev.market, ev.asset_id, ts_s * 1_000_000, recv_us, ev.price, ev.size,
                                           ev.side, ev.tx_hash, ev.fee_rate_bps))
                self._remember(st, ev.tx_hash, ts_s)
                lags.append(recv_us - ev.timestamp_ms * 1000)
                self.stats.last_event_us[(VENUE, ev.asset_id)] = recv_us
            elif kind is protocol.PriceChange:
                counts["price_change"] = counts.get("price_change", 0) + 1
                newest_ms = max(newest_ms, ev.timestamp_ms)
                for change in ev.changes:
                    st = self._assets.get(change.asset_id)
                    if st is None:
                        self._unexpected(change.asset_id)
                        continue
                    book = st.book
                    if not book.live:
                        continue  # waiting for a fresh snapshot
                    book.apply_change(change.price, change.size, change.is_bid, change.hash, ev.timestamp_ms)
                    if not book.agrees_with(change.best_bid, change.best_ask):
                        self._resync(change.asset_id, st)
                        continue
                    st.dirty = True
            elif kind is protocol.Book:
                counts["book"] = counts.get("book", 0) + 1
                newest_ms = max(newest_ms, ev.timestamp_ms)
                self._on_book(ev)
            elif kind is protocol.Ignored:
                counts[ev.event_type] = counts.get(ev.event_type, 0) + 1
        chunk.group.venue_ms = max(chunk.group.venue_ms, newest_ms)
        stats = self.stats
        for name, n in counts.items():
            stats.incr(f"{VENUE}.messages.{name}", n)
        if lags:
            stats.incr(f"{VENUE}.market_trades", len(lags))
            stats.lag.record_many(lags)
        out.extend(self._due_books())
        return out

    def _on_book(self, ev: protocol.Book) -> None:
        st = self._assets.get(ev.asset_id)
        if st is None:
            self._unexpected(ev.asset_id)
            return
        if ev.market:
            self._condition_of[ev.asset_id] = ev.market
        st.book.apply_snapshot(ev.market, ev.bids, ev.asks, ev.hash, ev.timestamp_ms)
        st.dirty = True
        st.receiving = True
        if st.tape_start_s is None:
            book_s = ev.timestamp_ms // 1000
            start = book_s if st.wanted_from_s is None else min(book_s, st.wanted_from_s)
            st.tape_start_s, st.wanted_from_s = start, None
            if self.cfg.backfill:
                st.needs_from_s = start  # trades from `start` up to this snapshot came before the subscription
        if st.needs_from_s is not None:
            self._schedule_backfill(ev.asset_id, st.needs_from_s)
            st.needs_from_s = None

    def _resync(self, asset: str, st: _Asset) -> None:
        st.book.invalidate()
        self.stats.incr(f"{VENUE}.book_resyncs")
        self._rl.log(log, logging.WARNING, "book_resync", "book disagrees with the venue's best prices; resubscribing",
                     asset=asset[:24])
        st.group.resync.add(asset)
        st.group.notify()

    def _on_connection_down(self, msg: ConnectionDown) -> list[Record]:
        overlap = self.cfg.backfill_overlap_s
        msg.group.venue_ms = 0
        for asset in msg.assets:
            st = self._assets.get(asset)
            if st is None or st.tape_start_s is None:
                continue  # never live: its first snapshot starts its tape
            if st.receiving and self.cfg.backfill:
                last_seen = max(st.last_trade_s or 0, st.book.ts_ms // 1000)
                frm = max(st.tape_start_s, last_seen - overlap)
                st.needs_from_s = frm if st.needs_from_s is None else min(st.needs_from_s, frm)
            st.receiving = False
            st.book.invalidate()
        return []

    def _due_books(self, *, force: bool = False) -> list[Record]:
        out: list[Record] = []
        now = trio.current_time()
        interval = self.cfg.book_interval_ms / 1000
        levels = self.cfg.book_levels
        for asset, st in self._assets.items():
            if not st.dirty or not st.book.live or (not force and now - st.last_emit < interval):
                continue
            book = st.book
            st.dirty = False
            key = (book.ts_ms, book.hash)
            if key == st.emitted:
                continue
            bids, asks = book.top(levels)
            out.append(PredictionBook(VENUE, book.market or self._condition_of.get(asset, ""), asset,
                                      book.ts_ms * 1000, now_us(), book.hash, bids[0][0] if bids else None,
                                      asks[0][0] if asks else None, bids, asks))
            st.emitted = key
            st.last_emit = now
        return out

    def _on_tick(self) -> list[Record]:
        out = self._due_books()
        now = trio.current_time()
        if now - self._last_slow_tick >= SLOW_TICK_S:
            self._last_slow_tick = now
            self._forget_old_trades()
            out.extend(self._tape_checkpoints())
            self.stats.set_gauge(f"{VENUE}.books_live", sum(1 for st in self._assets.values() if st.book.live))
        return out

    def _unexpected(self, asset: str) -> None:
        if asset in self._retired:
            return
        self.stats.incr(f"{VENUE}.unexpected_symbol")
        self._rl.log(log, logging.WARNING, "unexpected_asset", "event for a token not subscribed", asset=asset[:24])

    # --- the tape: backfill and resume points --------------------------------------------------

    def _remember(self, st: _Asset, tx_hash: str, ts_s: int) -> None:
        st.seen[tx_hash] = ts_s
        if st.last_trade_s is None or ts_s > st.last_trade_s:
            st.last_trade_s = ts_s

    def _schedule_backfill(self, asset: str, start_s: int) -> None:
        condition = self._condition_of.get(asset)
        if not condition or not self.cfg.backfill:
            return
        current = self._backfill_pending.get(condition)
        self._backfill_pending[condition] = start_s if current is None else min(current, start_s)
        # The Data API lists a trade a little after it happened: give the newest trades of a hole
        # time to show before asking (the WebSocket has everything from the reconnect on).
        self._backfill_due[condition] = trio.current_time() + self.cfg.backfill_delay_s
        self._backfill_wakeup.unpark()

    def _on_backfilled(self, msg: _Backfilled) -> list[Record]:
        self._backfill_inflight.pop(msg.condition_id, None)
        out: list[Record] = []
        recv = now_us()
        for t in sorted(msg.trades, key=lambda t: t.timestamp_s):
            st = self._assets.get(t.asset)
            if st is None or st.tape_start_s is None or t.timestamp_s < st.tape_start_s or t.tx_hash in st.seen:
                continue
            out.append(PredictionTrade(VENUE, t.condition_id or msg.condition_id, t.asset, t.timestamp_s * 1_000_000,
                                       recv, t.price, t.size, t.side.lower(), t.tx_hash, None))
            self._remember(st, t.tx_hash, t.timestamp_s)
        if out:
            self.stats.incr(f"{VENUE}.trades_backfilled", len(out))
        return out

    def _tape_checkpoints(self) -> list[Record]:
        """Checkpoint(token, S): every trade of the token before second S has been emitted. S is a
        second before the newest venue time its live connection delivered (the channel is in time
        order), held back by any hole still to fill."""
        holes = dict(self._backfill_pending)
        for cond, start in self._backfill_inflight.items():
            holes[cond] = min(start, holes.get(cond, start))
        out: list[Record] = []
        for asset, st in self._assets.items():
            if st.tape_start_s is None or not st.receiving or not st.group.venue_ms:
                continue
            s = st.group.venue_ms // 1000 - 1
            if st.needs_from_s is not None:
                s = min(s, st.needs_from_s)
            hole = holes.get(self._condition_of.get(asset, ""))
            if hole is not None:
                s = min(s, hole)
            if s >= st.tape_start_s and (st.checkpointed is None or s > st.checkpointed):
                out.append(Checkpoint(VENUE, asset, s))
                st.checkpointed = s
        return out

    def _forget_old_trades(self) -> None:
        horizon = int(time.time()) - SEEN_RETENTION_S
        for st in self._assets.values():
            if st.seen and min(st.seen.values()) < horizon:
                st.seen = {tx: ts for tx, ts in st.seen.items() if ts >= horizon}

    async def _backfill_worker(self, inbox: trio.MemorySendChannel) -> None:
        async with inbox:
            while True:
                await self._running.wait()
                if not self._backfill_pending:
                    await self._backfill_wakeup.park()
                    continue
                condition = min(self._backfill_pending, key=lambda c: self._backfill_due[c])
                due = self._backfill_due[condition]
                if due > trio.current_time():
                    with trio.move_on_at(due):
                        await self._backfill_wakeup.park()  # or something else got scheduled
                    continue
                start = self._backfill_pending.pop(condition)
                del self._backfill_due[condition]
                self._backfill_inflight[condition] = start
                got = await self._client.fetch_trades(data_api.market_trades, condition, start)
                if got is None:
                    # Put it back (merged with anything scheduled meanwhile) and try again shortly.
                    self._backfill_inflight.pop(condition, None)
                    current = self._backfill_pending.get(condition)
                    self._backfill_pending[condition] = start if current is None else min(current, start)
                    self._backfill_due[condition] = trio.current_time() + BACKFILL_RETRY_S
                    continue
                msg = _Backfilled(condition, got[0])
                await inbox.send(msg)
                await msg.applied.wait()

    # --- whales --------------------------------------------------------------------------------

    async def _load_whales(self) -> dict[str, Whale | None] | None:
        """Enabled whales from the table plus `whale_addresses`; None if the table cannot be read."""
        found: dict[str, Whale | None] = {normalize_address(a): None for a in self.cfg.whale_addresses}
        if self.store is None:
            return found
        try:
            rows = await trio.to_thread.run_sync(lambda: self.store.load(enabled_only=True))
        except Exception as exc:  # a database that is down or not migrated yet: keep what we have
            self.stats.incr(f"{VENUE}.whales_load_errors")
            self._rl.log(log, logging.WARNING, "whales_load", "cannot read the whales table",
                         store=self.store.description, error=repr(exc)[:300])
            return None
        for row in rows:
            found[row.address] = row
        return found

    async def _whales_loader(self, inbox: trio.MemorySendChannel) -> None:
        async with inbox:
            while True:
                await trio.sleep(self.cfg.whales_reload_s)
                whales = await self._load_whales()
                if whales is not None:
                    await inbox.send(_Whales(whales))

    def _apply_whales(self, whales: dict[str, Whale | None]) -> list[Record]:
        out: list[Record] = []
        gone = [a for a in self._whales if a not in whales]
        if gone:
            out.extend(self._tape_checkpoints())  # the last resume points of tokens that may go
        for address in gone:
            st = self._whales.pop(address)
            if st.watermark_s is not None and st.watermark_s != st.checkpointed:
                out.append(Checkpoint(VENUE, address, st.watermark_s))
            for asset, ast in list(self._assets.items()):
                if address in ast.whales:
                    ast.whales.discard(address)
                    if not ast.whales and not ast.configured:
                        self._unfollow(asset)
            log.info("whale no longer watched", extra={"address": address})
        added = False
        for address, row in whales.items():
            st = self._whales.get(address)
            if st is not None:
                st.row = row
                continue
            resumed = self._resume_points.get(address)
            self._whales[address] = _WhaleState(row, resumed, resumed is not None, checkpointed=resumed)
            added = True
            log.info("whale watched", extra={"address": address, "pseudonym": (row.pseudonym if row else None) or "-"})
        self.stats.set_gauge(f"{VENUE}.active_whale_subscriptions", len(self._whales))
        if added:
            self._poll_wakeup.set()  # poll the new ones soon rather than next round
        return out

    async def _poller(self, inbox: trio.MemorySendChannel) -> None:
        """Poll each whale once per `poll_interval_s`, spread evenly over the interval; `trigger`
        starts a round at once, without the spreading."""
        async with inbox:
            while True:
                await self._running.wait()
                started = trio.current_time()
                self._rounds_started += 1
                urgent, self._poll_now = self._poll_now, False
                addresses = list(self._whales)
                period = self.cfg.poll_interval_s
                for i, address in enumerate(addresses):
                    if not (urgent or self._poll_now):
                        await self._sleep_until(started + i * period / len(addresses))
                    await self._running.wait()
                    await self._poll_whale(address, inbox)
                self.stats.incr(f"{VENUE}.whale_poll_rounds")
                self._rounds_done = self._rounds_started
                self._rounds_changed.set()
                self._rounds_changed = trio.Event()
                if not self._poll_now:
                    await self._sleep_until(started + period)

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until `deadline`, or until a trigger (or new whales) asks for a round now."""
        with trio.move_on_at(deadline):
            await self._poll_wakeup.wait()
        if self._poll_wakeup.is_set():
            self._poll_wakeup = trio.Event()

    async def _poll_whale(self, address: str, inbox: trio.MemorySendChannel) -> None:
        ws = self._whales.get(address)
        if ws is None:
            return
        cfg = self.cfg
        now_s = int(time.time())
        emit_from = None
        if ws.watermark_s is None:
            if ws.since_s is None:
                ws.since_s = now_s - cfg.whale_history_s
            start = ws.since_s
        else:
            start = ws.watermark_s - cfg.whale_lookback_s
            if not ws.polled and ws.resumed:
                # After a restart: what is older than the resume point was stored before, but still
                # tells which markets this whale trades.
                emit_from = start
                start = min(start, now_s - cfg.whale_history_s)
        got = await self._client.fetch_trades(data_api.user_trades, address, start)
        if got is None:
            return
        msg = _WhalePolled(address, got[0], emit_from, got[1])
        await inbox.send(msg)
        await msg.applied.wait()
        if ws.watermark_s is None:
            # Nothing yet: everything up to this poll has been seen, bar what the API shows late.
            ws.since_s = max(ws.since_s, now_s - cfg.whale_lookback_s)

    def _on_whale_polled(self, msg: _WhalePolled) -> list[Record]:
        ws = self._whales.get(msg.address)
        if ws is None:
            return []  # disabled while the poll was in flight
        ws.polled = True
        out: list[Record] = []
        pseudonym = ws.row.pseudonym if ws.row is not None else None
        newest = ws.watermark_s
        for t in sorted(msg.trades, key=lambda t: t.timestamp_s):
            newest = t.timestamp_s if newest is None else max(newest, t.timestamp_s)
            if t.key in ws.seen:
                continue
            ws.seen[t.key] = t.timestamp_s
            self._whale_market(msg.address, t)
            if msg.emit_from_s is not None and t.timestamp_s < msg.emit_from_s:
                continue
            out.append(WhaleTrade(
                t.tx_hash, msg.address, t.condition_id, t.asset, t.side, t.size, t.price, t.size * t.price,
                t.timestamp_s * 1_000_000, msg.detected_us, pseudonym=pseudonym or t.pseudonym, title=t.title,
                outcome=t.outcome,
            ))
            self.stats.incr(f"{VENUE}.whale_trades_detected.{msg.address}.{t.side}")
        self._whale_records += len(out)
        ws.watermark_s = newest
        if newest is not None:
            floor = newest - self.cfg.whale_lookback_s - 1  # polls never ask for anything older again
            if any(ts < floor for ts in ws.seen.values()):
                ws.seen = {k: ts for k, ts in ws.seen.items() if ts >= floor}
            if newest != ws.checkpointed:
                out.append(Checkpoint(VENUE, msg.address, newest))
                ws.checkpointed = newest
        return out

    def _whale_checkpoints(self) -> list[Record]:
        out: list[Record] = []
        for address, ws in self._whales.items():
            if ws.watermark_s is not None and ws.watermark_s != ws.checkpointed:
                out.append(Checkpoint(VENUE, address, ws.watermark_s))
                ws.checkpointed = ws.watermark_s
        return out

    def _on_assets_changed(self, msg: _AssetsChanged) -> list[Record]:
        out = self._tape_checkpoints()  # the last resume points of tokens about to go
        for asset in msg.removed:
            st = self._assets.get(asset)
            if st is not None:
                st.configured = False
                if not st.whales:
                    self._unfollow(asset)
        for asset in msg.added:
            self._follow(asset, configured=True)
        log.info("token list changed", extra={"added": len(msg.added), "removed": len(msg.removed)})
        return out

    async def _ticker(self, inbox: trio.MemorySendChannel) -> None:
        async with inbox:
            while True:
                await trio.sleep(TICK_S)
                await inbox.send(_TICK)


def _channel_depth(recv: trio.MemoryReceiveChannel) -> tuple[int, int]:
    s = recv.statistics()
    cap = s.max_buffer_size
    return s.current_buffer_used, (cap if not math.isinf(cap) else -1)
