"""The Binance Spot feed: WebSocket connections, feed state, REST backfill and book sync.

Task tree (one nursery per level, nothing outlives its parent):

    BinanceFeed.run
    ├── state task           the only owner of per-symbol state and the only sender to the router
    └── producers            everything that feeds the state task through one bounded inbox
        ├── group supervisor × N   one logical connection per `pairs_per_connection` symbols;
        │   └── connection × 1–2     two only while a replacement is made before the old one breaks
        ├── backfill workers       REST trade pages for gaps and post-reconnect catch-up
        ├── snapshot workers       REST depth snapshots for books that are (re)syncing
        └── ticker                 periodic book snapshots and resume checkpoints

A single owner for state means no locks and a strict order: a Checkpoint record always follows the
trades it covers in the sink channels, which is what makes kill -9 followed by a restart exact.
Workers never mutate state; they post results to the inbox and wait until the state task has
applied them before looking at state again.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import trio

from ingestd.backoff import Backoff
from ingestd.logs import RateLimitedLog
from ingestd.model import BookTop, Checkpoint, Record, Trade, spread_bps
from ingestd.pipeline import Router
from ingestd.secrets import reveal
from ingestd.stats import StatsRegistry, now_us
from ingestd.transport.ws import ConnectionClosed, connect_ws
from ingestd.venues.binance import rest
from ingestd.venues.binance.book import LIVE, DepthSnapshot, LocalBook
from ingestd.venues.binance.protocol import (
    AggTradeEvent,
    ControlReply,
    DepthEvent,
    Problem,
    ServerShutdown,
    TradeEvent,
    combined_stream_url,
    decode,
    stream_names,
)
from ingestd.venues.pairs_file import PairsFileFollower
from ingestd.venues.symbols import SymbolSource, StaticSymbols, merge_with_fallback, select_shard, split_groups
from ingestd.venues.trade_ids import ACCEPTED_NEW_GAP, TradeIdTracker

VENUE = "binance"
log = logging.getLogger("ingestd.binance")

TICK_S = 0.25  # checkpoint cadence; also how often due catch-ups are looked at
CATCHUP_GRACE_S = 1.0  # after a reconnect, wait this long for a live trade to reveal the gap itself
BACKFILL_WORKERS = 2
SNAPSHOT_WORKERS = 4
INBOX_CAPACITY = 64  # chunks; each chunk is everything decoded from one socket read
TRADES_PAGE = 1000
FIRST_DATA_TIMEOUT_S = 5.0  # a quiet stream counts as up after this long without data


# --- inbox messages ------------------------------------------------------------------------------

@dataclass(slots=True)
class _Chunk:
    recv_us: int
    events: list


@dataclass(slots=True)
class _ConnectionUp:
    symbols: list[str]


@dataclass(slots=True)
class _Backfilled:
    symbol: str
    trades: list[Trade]
    abandon: tuple[int, int] | None = None  # ids the venue no longer has
    caught_up: bool = False  # the page reached the present (a catch-up is complete)
    applied: trio.Event = field(default_factory=trio.Event)


@dataclass(slots=True)
class _Snapshot:
    symbol: str
    snapshot: DepthSnapshot
    applied: trio.Event = field(default_factory=trio.Event)


class _Tick:
    __slots__ = ()


_TICK = _Tick()


# --- per-symbol state ----------------------------------------------------------------------------

@dataclass(slots=True)
class _SymbolState:
    trades: TradeIdTracker
    book: LocalBook | None
    checkpointed: int | None = None  # watermark last sent as a Checkpoint
    book_emitted: int = -1  # update id of the last BookTop sent
    catchup_due: float | None = None  # monotonic time a post-reconnect catch-up becomes due
    catchup_wanted: bool = False  # a REST catch-up from next_id to the present is needed
    live_since_up: bool = False  # a live trade arrived since the last reconnect


@dataclass
class _ConnectionHandle:
    conn_id: str
    cancel_scope: trio.CancelScope
    replace_wanted: trio.Event = field(default_factory=trio.Event)
    connected_at: float = 0.0  # trio.current_time() of the current TCP connection
    conn: Any = None  # the live WsConnection, for SUBSCRIBE/UNSUBSCRIBE; None between connects
    session: trio.CancelScope | None = None  # one connect-read-backoff cycle; `pause` cancels it
    started: bool = False  # reported started to the group supervisor (once streaming)
    streams: set[str] = field(default_factory=set)  # what `conn` is subscribed to


@dataclass
class _Group:
    """The symbols one logical connection carries. The list may change at runtime (live
    SUBSCRIBE/UNSUBSCRIBE); every (re)connect builds its URL from the list as it is then."""

    index: int
    symbols: list[str]
    current: _ConnectionHandle | None = None
    handles: list[_ConnectionHandle] = field(default_factory=list)  # every live connection (1, or 2 in a handover)


@dataclass(slots=True)
class _SymbolsChanged:
    added: list[str]
    removed: list[str]
    applied: trio.Event = field(default_factory=trio.Event)


class _WorkQueue:
    """Symbols awaiting a worker, in arrival order, each at most once: so it is bounded by the number
    of symbols followed, however often they are put."""

    def __init__(self) -> None:
        self._queued: dict[str, None] = {}  # an insertion-ordered set
        self._lot = trio.lowlevel.ParkingLot()

    def put(self, symbol: str) -> None:
        if symbol not in self._queued:
            self._queued[symbol] = None
            self._lot.unpark()

    async def get(self) -> str:
        while not self._queued:
            await self._lot.park()
        symbol = next(iter(self._queued))
        del self._queued[symbol]
        return symbol


class BinanceFeed:
    def __init__(
        self,
        cfg: Any,
        router: Router,
        stats: StatsRegistry,
        *,
        resume: dict[str, int] | None = None,
        source: SymbolSource | None = None,
    ) -> None:
        self.cfg = cfg
        self.router = router
        self.stats = stats
        self._resume_from = resume or {}  # not `resume`: that is the operator verb
        self.source = source or StaticSymbols(cfg.symbols)
        self._pairs_file = PairsFileFollower(cfg.pairs_file) if getattr(cfg, "pairs_file", "") else None
        self.symbols: list[str] = []
        self._state: dict[str, _SymbolState] = {}
        self._budget = rest.WeightBudget(cfg.rest_weight_limit, cfg.rest_weight_headroom)
        self._backfills = _WorkQueue()
        self._snapshots = _WorkQueue()
        self._http: httpx.AsyncClient | None = None  # set by run(), which owns its lifetime
        self._groups: list[_Group] = []
        self._symbols_lock = trio.Lock()  # a reload and the pairs file may both change the list at once
        self._wedged = False
        self._retired: set[str] = set()  # symbols removed at runtime
        self._request_id = 0
        self._nursery: trio.Nursery | None = None
        self._control_inbox: trio.MemorySendChannel | None = None
        self._producers: trio.CancelScope | None = None
        self._last_book_emit = 0.0
        self._conn_serial = 0
        self._paused: trio.Event | None = None  # set by resume(); None while not paused
        self._rl = RateLimitedLog(interval_s=10.0)

    # --- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Resolve symbols, start everything, report started, run until `stop()` or cancellation,
        then drain what was already received into the router before returning."""
        async with httpx.AsyncClient(base_url=reveal(self.cfg.rest_url), timeout=10.0) as http:
            self._http = http
            self.symbols = await self._resolve_symbols()
            self._init_state()
            inbox_send, inbox_recv = trio.open_memory_channel[object](INBOX_CAPACITY)
            self.stats.watch_queue("binance.inbox", lambda: _channel_depth(inbox_recv))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._state_task, inbox_recv)
                async with inbox_send:
                    try:
                        async with trio.open_nursery() as producers:
                            self._producers = producers.cancel_scope
                            self._start_producers(producers, inbox_send)
                            task_status.started()
                    finally:
                        # The last sender: once closed, the state task drains the inbox and ends.
                        if self._control_inbox is not None:
                            self._control_inbox.close()

    def _start_group(self, symbols: list[str]) -> _Group:
        group = _Group(len(self._groups), symbols)
        self._groups.append(group)
        self._nursery.start_soon(self._supervise_group, group, self._control_inbox.clone())
        self.stats.set_gauge("binance.connections_planned", len(self._groups))
        return group

    async def update_symbols(self, wanted: list[str]) -> tuple[list[str], list[str]]:
        """Follow a new symbol list (a config reload) without dropping unaffected connections.

        Removed symbols are unsubscribed on their connection and added ones subscribed on a
        connection with room (or a new one), with Binance's live SUBSCRIBE/UNSUBSCRIBE, under the
        same outgoing-message rate limit. Returns (added, removed). Changes apply one at a time, in
        the order they were asked for, so two of them never interleave their group edits."""
        async with self._symbols_lock:
            return await self._apply_symbols(wanted)

    async def _apply_symbols(self, wanted: list[str]) -> tuple[list[str], list[str]]:
        new = await self._filter_symbols(wanted)
        keep = set(new)
        removed = [s for s in self.symbols if s not in keep]
        added = [s for s in new if s not in self._state]
        if not added and not removed:
            return [], []
        change = _SymbolsChanged(added, removed)
        await self._control_inbox.send(change)  # state first: events for new symbols must find it
        await change.applied.wait()
        changed: list[_Group] = []
        for group in self._groups:
            if any(s not in keep for s in group.symbols):
                group.symbols[:] = [s for s in group.symbols if s in keep]
                changed.append(group)
        for symbol in added:
            group = next((g for g in self._groups if len(g.symbols) < self.cfg.pairs_per_connection), None)
            if group is None:
                self._start_group([symbol])  # its first connect subscribes through the URL
            else:
                group.symbols.append(symbol)
                if group not in changed:
                    changed.append(group)
        for group in changed:
            for handle in list(group.handles):
                await self._reconcile(group, handle)
        self.symbols = new
        self.stats.set_gauge("binance.symbols", len(new))
        log.info("symbol list changed", extra={"added": ",".join(added) or "-", "removed": ",".join(removed) or "-"})
        return added, removed

    async def _follow_pairs_file(self) -> None:
        """Apply each change of the pairs file (a new discovery) like a reload: live SUBSCRIBE/UNSUBSCRIBE."""
        while True:
            await self._pairs_file.wait_for_change(self.cfg.pairs_file_check_s)
            await self.update_symbols(list(self.cfg.symbols))

    async def _reconcile(self, group: _Group, handle: _ConnectionHandle) -> None:
        """Bring one live connection's subscriptions in line with its group's symbols.

        Called after every connect (the URL was built before the connect's await, and the list may
        have changed meanwhile) and after every change, so no interleaving can leave a stream
        subscribed on the wrong connection or not at all."""
        wanted = set(self._streams(group.symbols))
        for method, delta in (("UNSUBSCRIBE", handle.streams - wanted), ("SUBSCRIBE", wanted - handle.streams)):
            conn = handle.conn
            if not delta or conn is None:
                continue  # not connected: the next connect's URL is built from group.symbols
            # Book-keep before the await, so a concurrent reconcile does not send the same request.
            handle.streams = handle.streams - delta if method == "UNSUBSCRIBE" else handle.streams | delta
            self._request_id += 1
            request = {"method": method, "params": sorted(delta), "id": self._request_id}
            try:
                await conn.send_text(msgspec.json.encode(request).decode())
            except ConnectionClosed:
                return  # reconnecting anyway, with a URL built from group.symbols

    def _streams(self, symbols: list[str]) -> list[str]:
        cfg = self.cfg
        return [
            name
            for s in symbols
            for name in stream_names(s, trade_stream=cfg.trade_stream, depth=cfg.depth, depth_speed_ms=cfg.depth_speed_ms)
        ]

    def reconnect(self) -> int:
        """Replace every connection, make-before-break (no gap). Returns how many are being replaced."""
        replacing = 0
        for group in self._groups:
            if group.current is not None:
                group.current.replace_wanted.set()
                replacing += 1
        return replacing

    def pause(self) -> None:
        """Operator `pause`: close every connection and stay disconnected until resume(). State is
        kept and REST work already under way finishes; the ticker keeps beating the heartbeat (a
        pause is healthy). resume() reconnects, and the catch-up is that of any reconnect: REST
        backfill of the trades made meanwhile, and books resync from fresh snapshots."""
        if self._paused is not None:
            return
        self._paused = trio.Event()
        for group in self._groups:
            for handle in group.handles:
                if handle.session is not None:
                    handle.session.cancel()
        log.info("pausing: closing every connection", extra={"connections": sum(len(g.handles) for g in self._groups)})

    def resume(self) -> None:
        """Undo pause(): every connection reconnects."""
        paused, self._paused = self._paused, None
        if paused is not None:
            paused.set()

    def wedge(self) -> None:
        """Fault drill: the state task stops making progress (the event loop itself stays alive), so
        the feed's heartbeat goes stale and the systemd watchdog pings stop."""
        self._wedged = True

    def stop(self) -> None:
        """Stop taking in data; `run` returns once what was received has reached the router."""
        if self._producers is not None:
            self._producers.cancel()

    def _start_producers(self, nursery: trio.Nursery, inbox: trio.MemorySendChannel) -> None:
        groups = split_groups(self.symbols, self.cfg.pairs_per_connection)
        if not groups:
            log.warning("no symbols to follow: check symbols, fallback_pairs, shard and exchangeInfo lines above")
        self._nursery, self._control_inbox = nursery, inbox.clone()
        for index, symbols in enumerate(groups):
            self._start_group(symbols)
        if self.cfg.backfill:
            for _ in range(BACKFILL_WORKERS):
                nursery.start_soon(self._backfill_worker, inbox.clone())
        if self.cfg.depth:
            for _ in range(SNAPSHOT_WORKERS):
                nursery.start_soon(self._snapshot_worker, inbox.clone())
        nursery.start_soon(self._ticker, inbox.clone())
        if self._pairs_file is not None:
            nursery.start_soon(self._follow_pairs_file)
        log.info(
            "binance feed starting",
            extra={"symbols": len(self.symbols), "connections": len(groups), "ws_url": self.cfg.ws_url},
        )

    async def _resolve_symbols(self) -> list[str]:
        try:
            wanted = await self.source.fetch()
        except Exception as exc:  # a dynamic source failing must not stop the feed
            log.warning("symbol source failed, using fallback pairs", extra={"error": repr(exc)})
            wanted = []
        symbols = await self._filter_symbols(wanted)
        self.stats.set_gauge("binance.symbols", len(symbols))
        return symbols

    async def _filter_symbols(self, wanted: list[str]) -> list[str]:
        """Add the pairs file's and the fallback pairs, keep this shard's share, drop what the venue
        does not trade."""
        if self._pairs_file is not None:
            wanted = list(wanted) + await self._pairs_file.pairs()
        symbols = select_shard(merge_with_fallback(wanted, self.cfg.fallback_pairs), _shard(self.cfg))
        if self.cfg.exchange_info_check and symbols:
            symbols = await self._drop_untradable(symbols)
        return symbols

    async def _drop_untradable(self, symbols: list[str]) -> list[str]:
        try:
            body = await self._rest(rest.EXCHANGE_INFO, attempts=3)
            status = rest.parse_exchange_info(body)
        except (rest.ResponseError, _GiveUp) as exc:
            log.warning("exchangeInfo unavailable, keeping the configured symbols", extra={"error": str(exc)})
            return symbols
        dropped = [s for s in symbols if status.get(s) != "TRADING"]
        if dropped:
            log.warning(
                "dropping symbols that are not TRADING",
                extra={"symbols": ",".join(f"{s}:{status.get(s, 'UNKNOWN')}" for s in dropped)},
            )
        return [s for s in symbols if status.get(s) == "TRADING"]

    def _init_state(self) -> None:
        for s in self.symbols:
            self._add_symbol_state(s)

    def _add_symbol_state(self, s: str) -> None:
        last = self._resume_from.get(s)
        tracker = TradeIdTracker() if last is None else TradeIdTracker.resuming_after(last)
        st = _SymbolState(tracker, LocalBook(s) if self.cfg.depth else None)
        if last is not None and self.cfg.backfill:
            # Trades made while we were down: fetch them even if the symbol is quiet now.
            st.catchup_wanted = True
            self._backfills.put(s)
        self._state[s] = st
        self._retired.discard(s)

    # --- the state task ------------------------------------------------------------------------

    async def _state_task(self, inbox: trio.MemoryReceiveChannel) -> None:
        router = self.router
        async with inbox:
            async for msg in inbox:
                if self._wedged:
                    log.critical("feed wedged on purpose (SIGUSR2): no progress until restarted")
                    await trio.sleep_forever()
                kind = type(msg)
                if kind is _Chunk:
                    records = self._on_chunk(msg)
                elif kind is _Tick:
                    records = self._on_tick()
                elif kind is _Backfilled:
                    records = self._on_backfilled(msg)
                    msg.applied.set()
                elif kind is _Snapshot:
                    records = []
                    self._on_snapshot(msg)
                    msg.applied.set()
                elif kind is _SymbolsChanged:
                    records = self._on_symbols_changed(msg)
                    msg.applied.set()
                else:
                    records = []
                    self._on_connection_up(msg)
                if records:
                    await router.send(records)
                self.stats.heartbeat("feed.binance")
            # Stopping: every producer is gone. Record exact resume points, so a clean restart
            # refetches nothing.
            final = self._checkpoints()
            if final:
                await router.send(final)

    def _on_chunk(self, chunk: _Chunk) -> list[Record]:
        out: list[Record] = []
        lags: list[int] = []
        state = self._state
        recv_us = chunk.recv_us
        trades = dups = depth = 0
        for ev in chunk.events:
            kind = type(ev)
            if kind is TradeEvent or kind is AggTradeEvent:
                st = state.get(ev.s)
                if st is None:
                    self._unexpected_symbol(ev.s)
                    continue
                trade_id = ev.t if kind is TradeEvent else ev.a
                verdict = st.trades.accept(trade_id)
                if not verdict:
                    dups += 1
                    continue
                ts_us = ev.T * 1000
                out.append(Trade(VENUE, ev.s, trade_id, ev.p, ev.q, "sell" if ev.m else "buy", ts_us, recv_us))
                lags.append(recv_us - ts_us)
                st.live_since_up = True
                trades += 1
                if verdict == ACCEPTED_NEW_GAP:
                    self.stats.incr("binance.gaps")
                    if self.cfg.backfill:
                        self._backfills.put(ev.s)
            elif kind is DepthEvent:
                st = state.get(ev.s)
                if st is None or st.book is None:
                    self._unexpected_symbol(ev.s)
                    continue
                depth += 1
                book = st.book
                book.on_diff(ev)
                if book.needs_snapshot:
                    self._snapshots.put(ev.s)
        stats = self.stats
        if trades:
            stats.incr("binance.trades", trades)
            stats.lag.record_many(lags)
            last = stats.last_event_us
            for r in out:
                last[(VENUE, r.symbol)] = recv_us
        if dups:
            stats.incr("binance.duplicates_dropped", dups)
        if depth:
            stats.incr("binance.depth_updates", depth)
        return out

    def _on_tick(self) -> list[Record]:
        out: list[Record] = []
        now = trio.current_time()
        emit_books = self.cfg.depth and now - self._last_book_emit >= self.cfg.book_interval_ms / 1000
        if emit_books:
            self._last_book_emit = now
        live = missing = 0
        for symbol, st in self._state.items():
            if st.catchup_due is not None and now >= st.catchup_due:
                st.catchup_due = None
                if not st.live_since_up and self.cfg.backfill:
                    st.catchup_wanted = True
                    self._backfills.put(symbol)
            missing += st.trades.missing_count()
            book = st.book
            if book is not None and book.state == LIVE:
                live += 1
                if emit_books and book.last_update_id != st.book_emitted and book.bids and book.asks:
                    out.append(self._book_top(symbol, book))
                    st.book_emitted = book.last_update_id
        self.stats.set_gauge("binance.books_live", live)
        self.stats.set_gauge("binance.trades_missing", missing)
        out.extend(self._checkpoints())
        return out

    def _checkpoints(self) -> list[Record]:
        """A Checkpoint for every symbol whose watermark moved since the last one sent."""
        out: list[Record] = []
        for symbol, st in self._state.items():
            wm = st.trades.watermark
            if wm is not None and wm != st.checkpointed:
                out.append(Checkpoint(VENUE, symbol, wm))
                st.checkpointed = wm
        return out

    def _book_top(self, symbol: str, book: LocalBook) -> BookTop:
        bids, asks = book.top(self.cfg.book_levels)
        (bp, bs), (ap, az) = bids[0], asks[0]
        received = now_us()
        # A book fresh from a REST snapshot has applied no diff yet, so no exchange time: use ours.
        ts_us = book.last_event_ms * 1000 or received
        return BookTop(
            VENUE, symbol, book.last_update_id, ts_us, received,
            bp, bs, ap, az, spread_bps(bp, ap), bids, asks,
        )

    def _on_backfilled(self, msg: _Backfilled) -> list[Record]:
        st = self._state.get(msg.symbol)
        if st is None:  # removed by a reload while the page was in flight
            return []
        kept = [t for t in msg.trades if st.trades.accept(t.trade_id)]
        if msg.abandon is not None:
            lost = st.trades.abandon(*msg.abandon)
            if lost:
                self.stats.incr("binance.trades_unrecoverable", lost)
                log.error(
                    "trades missing and no longer available over REST",
                    extra={"symbol": msg.symbol, "from_id": msg.abandon[0], "to_id": msg.abandon[1], "count": lost},
                )
        if msg.caught_up:
            st.catchup_wanted = False
        if kept:
            self.stats.incr("binance.trades_backfilled", len(kept))
        return kept

    def _on_snapshot(self, msg: _Snapshot) -> None:
        st = self._state.get(msg.symbol)  # None: removed by a reload while the request was in flight
        book = st.book if st is not None else None
        if book is None:
            return
        if not book.apply_snapshot(msg.snapshot):
            self.stats.incr("binance.snapshots_stale")
        if book.needs_snapshot:  # stale, or a gap inside the buffered diffs
            self._snapshots.put(msg.symbol)

    def _on_symbols_changed(self, msg: _SymbolsChanged) -> list[Record]:
        out = self._checkpoints()  # the last resume points of symbols about to go
        for s in msg.removed:
            if self._state.pop(s, None) is not None:
                self._retired.add(s)  # events still in flight before the UNSUBSCRIBE: not an error
        for s in msg.added:
            self._add_symbol_state(s)
        return out

    def _on_connection_up(self, msg: _ConnectionUp) -> None:
        due = trio.current_time() + CATCHUP_GRACE_S
        for s in msg.symbols:
            st = self._state.get(s)
            if st is not None and st.trades.next_id is not None:
                st.live_since_up = False
                st.catchup_due = due

    def _unexpected_symbol(self, symbol: str) -> None:
        if symbol in self._retired:
            return
        self.stats.incr("binance.unexpected_symbol")
        self._rl.log(log, logging.WARNING, "unexpected_symbol", "event for a symbol not subscribed", symbol=symbol)

    # --- connections -----------------------------------------------------------------------------

    async def _supervise_group(self, group: _Group, inbox: trio.MemorySendChannel) -> None:
        """Keep one connection for the group alive; replace it make-before-break when the venue
        announces a shutdown or the connection nears Binance's 24 h limit."""
        max_age = self.cfg.max_connection_age_s
        async with inbox, trio.open_nursery() as nursery:
            group.current = current = await nursery.start(self._connection, group, inbox)
            while True:
                with trio.move_on_at(current.connected_at + max_age):
                    await current.replace_wanted.wait()
                if not current.replace_wanted.is_set() and trio.current_time() < current.connected_at + max_age:
                    continue  # it reconnected meanwhile, so its age restarted
                successor = await nursery.start(self._connection, group, inbox)
                log.info("replaced connection", extra={"old": current.conn_id, "new": successor.conn_id})
                group.current = successor
                current.cancel_scope.cancel()
                current = successor

    async def _connection(
        self, group: _Group, inbox: trio.MemorySendChannel, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        self._conn_serial += 1
        conn_id = f"binance/{group.index}#{self._conn_serial}"
        cstats = self.stats.connection(conn_id)
        cstats.url = str(self.cfg.ws_url)  # a Secret renders as ***
        backoff = Backoff(self.cfg.reconnect_base_s, self.cfg.reconnect_cap_s)
        with trio.CancelScope() as scope:
            handle = _ConnectionHandle(conn_id, scope)
            group.handles.append(handle)
            try:
                while True:
                    while self._paused is not None:
                        cstats.state = "paused"
                        await self._paused.wait()
                    with trio.CancelScope() as handle.session:  # pause() cancels it
                        await self._session(group, handle, inbox, cstats, backoff, task_status)
                    handle.session = None
            finally:
                group.handles.remove(handle)
                cstats.state = "closed"
                self.stats.forget_connection(conn_id)

    async def _session(self, group: _Group, handle: _ConnectionHandle, inbox: trio.MemorySendChannel, cstats,
                       backoff: Backoff, task_status) -> None:
        """One connect, read until the connection ends, and the backoff after it; pause() may cancel
        it anywhere."""
        conn_id = handle.conn_id
        streams = self._streams(group.symbols)
        cstats.streams = len(streams)
        url = combined_stream_url(reveal(self.cfg.ws_url), streams)
        try:
            conn = await connect_ws(url, stats=cstats, max_outgoing_per_s=self.cfg.max_outgoing_per_s)
        except ConnectionClosed as exc:  # DNS, TCP, TLS, timeout or a non-101 answer
            await self._connect_failed(cstats, backoff, exc)
            return
        handle.connected_at = trio.current_time()
        handle.conn, handle.streams = conn, set(streams)
        log.info("connected", extra={"conn": conn_id, "streams": len(streams)})
        try:
            if handle.started:
                # A reconnect (a pause's resume too): trades may have been missed. (A first connect
                # is either the start, where resume handles the past, or a make-before-break
                # successor.) Sent once connected, so the catch-up's grace runs from here.
                await inbox.send(_ConnectionUp(list(group.symbols)))
            await self._reconcile(group, handle)  # the symbols may have changed during connect
            first: list = []
            if not handle.started:
                # Report "up" (which lets a predecessor close) only once the venue is
                # demonstrably streaming here: right after the handshake the
                # subscription may not be live yet, and closing the old connection
                # then could lose what is published in between.
                with trio.move_on_after(FIRST_DATA_TIMEOUT_S):
                    first = await conn.receive_batch()
                handle.started = True
                task_status.started(handle)
            await self._read(conn, handle, inbox, backoff, first)
        except ConnectionClosed as exc:
            self.stats.incr("binance.disconnects")
            cstats.last_error = str(exc)
            log.warning("connection lost, reconnecting", extra={"conn": conn_id, "reason": str(exc)})
        finally:
            handle.conn = None
            with trio.CancelScope(shield=True):
                await conn.aclose()
        cstats.state = "backoff"
        await trio.sleep(backoff.next_delay())

    async def _connect_failed(self, cstats, backoff: Backoff, exc: BaseException) -> None:
        self.stats.incr("binance.connect_errors")
        cstats.state = "backoff"
        cstats.last_error = repr(exc)
        delay = backoff.next_delay()
        self._rl.log(log, logging.WARNING, f"connect:{cstats.conn_id}", "connect failed", conn=cstats.conn_id,
                     error=repr(exc), retry_in_s=round(delay, 2))
        await trio.sleep(delay)

    async def _read(self, conn, handle: _ConnectionHandle, inbox: trio.MemorySendChannel, backoff: Backoff,
                    frames: list) -> None:
        """Decode and forward until the connection closes; `frames` were already received."""
        stats = self.stats
        first = True
        while True:
            if not frames:
                frames = await conn.receive_batch()
            recv_us = now_us()
            if first:
                backoff.reset()  # only a connection that delivered data counts as a success
                first = False
            events = []
            for frame in frames:
                ev = decode(frame)
                kind = type(ev)
                if kind is Problem:
                    stats.incr(f"binance.decode_errors.{ev.kind}")
                    self._rl.log(log, logging.WARNING, ev.kind, "bad frame skipped", problem=ev.kind, detail=ev.detail[:200])
                elif kind is ServerShutdown:
                    stats.incr("binance.server_shutdowns")
                    log.info("venue announced shutdown; replacing connection", extra={"conn": handle.conn_id})
                    handle.replace_wanted.set()
                elif kind is ControlReply:
                    if ev.code is not None:
                        log.warning("venue rejected a request", extra={"code": ev.code, "reason": ev.msg})
                else:
                    events.append(ev)
            frames = []
            if events:
                await inbox.send(_Chunk(recv_us, events))

    # --- REST workers ------------------------------------------------------------------------------

    async def _backfill_worker(self, inbox: trio.MemorySendChannel) -> None:
        async with inbox:
            while True:
                symbol = await self._backfills.get()
                await self._backfill_symbol(symbol, inbox)

    async def _backfill_symbol(self, symbol: str, inbox: trio.MemorySendChannel) -> None:
        """Fetch pages until the symbol has no gap and no catch-up pending (or it is removed)."""
        st = self._state.get(symbol)
        while st is not None and self._state.get(symbol) is st:
            await trio.sleep(0)
            gap = st.trades.first_gap()
            if gap is not None:
                lo, hi = gap
            elif st.catchup_wanted and st.trades.next_id is not None:
                lo, hi = st.trades.next_id, None
            else:
                return
            msg = await self._fetch_trades(symbol, lo, hi)
            await inbox.send(msg)
            await msg.applied.wait()

    async def _fetch_trades(self, symbol: str, lo: int, hi: int | None) -> _Backfilled:
        """One REST page from `lo`; says which ids the venue could not supply."""
        req = rest.trades_request(self.cfg.trade_stream, symbol, lo, TRADES_PAGE)
        try:
            body = await self._rest(req)
            trades = rest.parse_trades(self.cfg.trade_stream, body, venue=VENUE, symbol=symbol, recv_us=now_us())
        except rest.ResponseError as exc:
            self._rl.log(log, logging.WARNING, "bad_rest_body", "unusable backfill page", symbol=symbol, error=str(exc))
            await trio.sleep(1.0)
            return _Backfilled(symbol, [])
        self.stats.incr("binance.rest.backfill_pages")
        caught_up = len(trades) < TRADES_PAGE
        first_id = trades[0].trade_id if trades else None
        if hi is not None and (first_id is None or first_id > lo):
            # The venue has nothing from `lo` on (empty page) or starts later: those ids are gone.
            end = hi if first_id is None else min(hi, first_id - 1)
            return _Backfilled(symbol, trades, abandon=(lo, end), caught_up=caught_up)
        return _Backfilled(symbol, trades, caught_up=caught_up)

    async def _snapshot_worker(self, inbox: trio.MemorySendChannel) -> None:
        async with inbox:
            while True:
                symbol = await self._snapshots.get()
                req = rest.depth_request(symbol, self.cfg.snapshot_limit)
                try:
                    snap = rest.parse_depth(await self._rest(req))
                except rest.ResponseError as exc:
                    self._rl.log(log, logging.WARNING, "bad_depth", "unusable depth snapshot", symbol=symbol, error=str(exc))
                    self._snapshots.put(symbol)
                    await trio.sleep(1.0)
                    continue
                self.stats.incr("binance.snapshots")
                msg = _Snapshot(symbol, snap)
                await inbox.send(msg)
                await msg.applied.wait()

    async def _rest(self, req: rest.Request, *, attempts: int | None = None) -> bytes:
        """GET with the weight budget, 429/418 + Retry-After, and retries on transport errors."""
        backoff = Backoff(0.5, 30.0)
        tries = 0
        while True:
            delay = self._budget.delay_before(req.weight, time.time())
            if delay > 0:
                self.stats.incr("binance.rest.throttled_waits")
                await trio.sleep(delay)
                continue
            probe = self._budget.spend(req.weight, time.time())
            tries += 1
            try:
                resp = await self._http.get(req.path, params=req.params)
            except httpx.HTTPError as exc:
                self._budget.release(probe)
                self.stats.incr("binance.rest.transport_errors")
                self._rl.log(log, logging.WARNING, "rest_transport", "REST request failed", path=req.path, error=repr(exc))
            except BaseException:
                self._budget.release(probe)
                raise
            else:
                self._budget.on_response(resp.status_code, resp.headers, time.time(), probe=probe)
                self.stats.set_gauge("binance.rest.used_weight_1m", self._budget.used)
                status = resp.status_code
                if status == 200:
                    self.stats.incr("binance.rest.requests")
                    return resp.content
                self.stats.incr(f"binance.rest.http_{status}")
                if status in (429, 418):
                    log.warning(
                        "REST rate limited by the venue, backing off",
                        extra={"status": status, "retry_after": resp.headers.get("retry-after")},
                    )
                    continue  # the budget now blocks until Retry-After has passed
                if status < 500:
                    raise rest.ResponseError(f"{req.path} {status}: {resp.text[:200]}")
                self._rl.log(log, logging.WARNING, "rest_5xx", "REST server error", path=req.path, status=status)
            if attempts is not None and tries >= attempts:
                raise _GiveUp(f"{req.path}: gave up after {tries} attempts")
            await trio.sleep(backoff.next_delay())

    async def _ticker(self, inbox: trio.MemorySendChannel) -> None:
        async with inbox:
            while True:
                await trio.sleep(TICK_S)
                await inbox.send(_TICK)


class _GiveUp(Exception):
    pass


def _shard(cfg: Any) -> tuple[int, int] | None:
    shard = getattr(cfg, "shard", None)
    if shard is None:
        return None
    if isinstance(shard, str):
        i, n = shard.split("/")
        return int(i), int(n)
    return tuple(shard)  # type: ignore[return-value]


def _channel_depth(recv: trio.MemoryReceiveChannel) -> tuple[int, int]:
    s = recv.statistics()
    cap = s.max_buffer_size
    return s.current_buffer_used, (cap if not math.isinf(cap) else -1)
