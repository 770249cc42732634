"""The Bybit feed: public linear tickers into `derivatives`, optionally publicTrade into `ticks`.

Task tree (one nursery per level, nothing outlives its parent):

    BybitFeed.run
    ├── state task           sole owner of the ticker books and trade tapes; the only sender to the router
    └── producers            everything else, posting into one bounded inbox
        ├── connection × N     one per group of contracts whose topics fit max_args_chars
        │   ├── reader           decodes frames; turns subscribe/unsubscribe answers into acks
        │   ├── subscriber       brings the live subscriptions in line with what is wanted
        │   └── pinger           {"op":"ping"} every ping_interval_s
        ├── catch-up workers   REST recent-trade pages that fill trade gaps
        └── ticker             every 250 ms: samples of quiet contracts, checkpoints, gauges

Gaps. Bybit's tickers carry no sequence that would show a lost delta, so a gap is whatever the
transport tells us: a lost connection (every contract on it), a frame that names its topic but
cannot be decoded (that topic), a frame that cannot even be read (every topic on the connection).
A ticker gap is closed by a fresh snapshot: the topic is unsubscribed and subscribed again (a new
connection subscribes afresh), and deltas in between are ignored. A trade gap is closed by a REST
page of recent trades requested once the live stream is back (the subscribe ack), so the page and
the stream overlap; trade_tape keeps that exact. Reconnects are break-before-make: Bybit sends a
snapshot on every subscribe, so there is nothing a second connection would save.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import trio

from ingestd.backoff import Backoff
from ingestd.logs import RateLimitedLog
from ingestd.model import Checkpoint, Record
from ingestd.pipeline import Router
from ingestd.secrets import reveal
from ingestd.stats import StatsRegistry, now_us
from ingestd.transport.ws import ConnectionClosed, WsConnection, connect_ws
from ingestd.venues.bybit import protocol, rest
from ingestd.venues.bybit.protocol import PUBLIC_TRADE, TICKERS, VENUE, OpReply, Problem, TickerUpdate, TradeBatch
from ingestd.venues.bybit.ticker_state import TickerBook
from ingestd.venues.bybit.trade_tape import TradeTape
from ingestd.venues.symbols import merge_with_fallback, select_shard

log = logging.getLogger("ingestd.bybit")

TICK_S = 0.25
INBOX_CAPACITY = 64
CATCHUP_WORKERS = 2


# --- inbox messages ------------------------------------------------------------------------------


@dataclass(eq=False)
class _Conn:
    """One planned connection: its contracts and, while connected, its live subscriptions."""

    index: int
    symbols: list[str]
    conn_id: str
    ws: WsConnection | None = None
    live: set[str] = field(default_factory=set)  # topics subscribed (or being subscribed) on `ws`
    resync: set[str] = field(default_factory=set)  # topics to unsubscribe and subscribe again
    pending: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # req_id -> (op, topics)
    wake: trio.Event = field(default_factory=trio.Event)
    session: trio.CancelScope | None = None
    venue_ms: int = 0  # the latest venue time this connection carried (state task)
    closed_because: str = ""


@dataclass(slots=True)
class _Acked:
    op: str
    topics: list[str]
    success: bool
    ret_msg: str


@dataclass(slots=True)
class _Frames:
    conn: _Conn
    recv_us: int
    events: list


@dataclass(slots=True)
class _Down:
    conn: _Conn


@dataclass(slots=True)
class _CaughtUp:
    symbol: str
    page: list
    generation: int
    full: bool
    applied: trio.Event = field(default_factory=trio.Event)


@dataclass(slots=True)
class _SymbolsChanged:
    added: list[str]
    removed: list[str]
    applied: trio.Event = field(default_factory=trio.Event)


class _Tick:
    __slots__ = ()


_TICK = _Tick()


class _GiveUp(Exception):
    pass


class _WorkQueue:
    """Symbols awaiting a worker, in arrival order, each at most once (bounded by the symbols followed)."""

    def __init__(self) -> None:
        self._queued: dict[str, None] = {}
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


class BybitFeed:
    def __init__(self, cfg: Any, router: Router, stats: StatsRegistry, *, resume: dict[str, int] | None = None) -> None:
        self.cfg = cfg
        self.router = router
        self.stats = stats
        self._resume_points = resume or {}
        self.symbols: list[str] = []
        self._books: dict[str, TickerBook] = {}
        self._tapes: dict[str, TradeTape] = {}
        self._checkpointed: dict[str, int] = {}
        self._conns: list[_Conn] = []
        self._retired: set[str] = set()
        self._catchups = _WorkQueue()
        self._http: httpx.AsyncClient | None = None
        self._nursery: trio.Nursery | None = None
        self._inbox: trio.MemorySendChannel | None = None
        self._producers: trio.CancelScope | None = None
        self._stopping = False
        self._wedged = False
        self._running = trio.Event()  # cleared while paused
        self._running.set()
        self._serial = 0
        self._rl = RateLimitedLog(interval_s=10.0)

    # --- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Check symbols, connect, report started; after stop() drain what was received, then return."""
        async with httpx.AsyncClient(base_url=reveal(self.cfg.rest_url), timeout=10.0) as http:
            self._http = http
            self.symbols = await self._resolve_symbols(list(self.cfg.symbols))
            for symbol in self.symbols:
                self._add_state(symbol)
            inbox_send, inbox_recv = trio.open_memory_channel[object](INBOX_CAPACITY)
            self.stats.watch_queue("bybit.inbox", lambda: _channel_depth(inbox_recv))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._state_task, inbox_recv)
                async with inbox_send:
                    try:
                        async with trio.open_nursery() as producers:
                            self._producers = producers.cancel_scope
                            if self._stopping:
                                producers.cancel_scope.cancel()
                            self._start_producers(producers, inbox_send)
                            task_status.started()
                    finally:
                        if self._inbox is not None:
                            self._inbox.close()  # the last sender: the state task drains and ends

    def stop(self) -> None:
        self._stopping = True
        if self._producers is not None:
            self._producers.cancel()

    def reconnect(self) -> int:
        """Replace every live connection (break-before-make: each subscribes afresh and resyncs)."""
        replaced = 0
        for conn in self._conns:
            if conn.session is not None:
                conn.closed_because = "reconnect requested"
                conn.session.cancel()
                replaced += 1
        return replaced

    def wedge(self) -> None:
        self._wedged = True

    def pause(self) -> None:
        """Close every connection and stay idle, keeping state, until resume()."""
        if self._running.is_set():
            self._running = trio.Event()
            for conn in self._conns:
                if conn.session is not None:
                    conn.closed_because = "paused"
                    conn.session.cancel()

    def resume(self) -> None:
        self._running.set()

    async def update_symbols(self, wanted: list[str]) -> tuple[list[str], list[str]]:
        """Follow a new list: unsubscribe removed contracts and subscribe added ones on connections
        with room (or new ones); unaffected subscriptions stay as they are."""
        new = await self._resolve_symbols(wanted)
        keep = set(new)
        removed = [s for s in self.symbols if s not in keep]
        added = [s for s in new if s not in self._books]
        if not added and not removed:
            return [], []
        change = _SymbolsChanged(added, removed)
        await self._inbox.send(change)  # state first: frames of new symbols must find it
        await change.applied.wait()
        touched: list[_Conn] = []
        for conn in self._conns:
            if any(s not in keep for s in conn.symbols):
                conn.symbols[:] = [s for s in conn.symbols if s in keep]
                touched.append(conn)
        for symbol in added:
            need = protocol.args_chars(self._topics([symbol]))
            conn = next((c for c in self._conns
                         if protocol.args_chars(self._topics(c.symbols)) + need <= self.cfg.max_args_chars), None)
            if conn is None:
                self._start_connection([symbol])
            else:
                conn.symbols.append(symbol)
                if conn not in touched:
                    touched.append(conn)
        for conn in touched:
            conn.wake.set()
        self.symbols = new
        self.stats.set_gauge("bybit.symbols", len(new))
        log.info("symbol list changed", extra={"added": ",".join(added) or "-", "removed": ",".join(removed) or "-"})
        return added, removed

    def _start_producers(self, nursery: trio.Nursery, inbox: trio.MemorySendChannel) -> None:
        self._nursery, self._inbox = nursery, inbox.clone()
        groups = protocol.plan_connections(self.symbols, trades=self.cfg.trades, max_chars=self.cfg.max_args_chars)
        if not groups:
            log.warning("no symbols to follow: check symbols, fallback_pairs, shard and the lines above")
        for symbols in groups:
            self._start_connection(symbols)
        if self.cfg.trades and self.cfg.trade_catchup:
            for _ in range(CATCHUP_WORKERS):
                nursery.start_soon(self._catchup_worker, inbox.clone())
        nursery.start_soon(self._ticker, inbox.clone())
        log.info("bybit feed starting", extra={"symbols": len(self.symbols), "connections": len(groups),
                                               "trades": self.cfg.trades, "ws_url": self.cfg.ws_url})

    def _start_connection(self, symbols: list[str]) -> None:
        index = len(self._conns)
        conn = _Conn(index, list(symbols), f"bybit/{index}")
        self._conns.append(conn)
        self._nursery.start_soon(self._run_connection, conn, self._inbox.clone())
        self.stats.set_gauge("bybit.connections_planned", len(self._conns))

    async def _resolve_symbols(self, wanted: list[str]) -> list[str]:
        shard = getattr(self.cfg, "shard", None)
        symbols = select_shard(merge_with_fallback(wanted, self.cfg.fallback_pairs), tuple(shard) if shard else None)
        if self.cfg.validate_symbols and symbols:
            try:
                listed = await self._rest(rest.TICKERS, rest.tickers_params(), rest.parse_ticker_symbols, attempts=3)
            except (rest.ResponseError, _GiveUp) as exc:
                log.warning("tickers list unavailable, keeping the configured symbols", extra={"error": str(exc)})
            else:
                dropped = [s for s in symbols if s not in listed]
                if dropped:
                    log.warning("dropping symbols Bybit does not list as linear contracts",
                                extra={"symbols": ",".join(dropped)})
                symbols = [s for s in symbols if s in listed]
        self.stats.set_gauge("bybit.symbols", len(symbols))
        return symbols

    def _add_state(self, symbol: str) -> None:
        cfg = self.cfg
        self._books[symbol] = TickerBook(symbol, interval_ms=cfg.sample_interval_ms, on_change=cfg.on_change)
        if cfg.trades:
            resume = self._resume_points.get(symbol) if cfg.trade_catchup else None
            self._tapes[symbol] = TradeTape(symbol, resume_ms=resume)
        self._retired.discard(symbol)

    def _topics(self, symbols: list[str]) -> list[str]:
        return [t for s in symbols for t in protocol.topics_for(s, trades=self.cfg.trades)]

    # --- the state task ------------------------------------------------------------------------------

    async def _state_task(self, inbox: trio.MemoryReceiveChannel) -> None:
        router = self.router
        async with inbox:
            async for msg in inbox:
                if self._wedged:
                    log.critical("feed wedged on purpose (SIGUSR2): no progress until restarted")
                    await trio.sleep_forever()
                kind = type(msg)
                if kind is _Frames:
                    records = self._on_frames(msg)
                elif kind is _Tick:
                    records = self._on_tick()
                elif kind is _CaughtUp:
                    records = self._on_caught_up(msg)
                    msg.applied.set()
                elif kind is _Down:
                    records = []
                    self._on_down(msg.conn)
                elif kind is _SymbolsChanged:
                    records = self._on_symbols_changed(msg)
                    msg.applied.set()
                else:
                    records = []
                if records:
                    await router.send(records)
                self.stats.heartbeat("feed.bybit")
            final = self._checkpoints()  # exact resume points, so a clean restart refetches nothing
            if final:
                await router.send(final)

    def _on_frames(self, msg: _Frames) -> list[Record]:
        out: list[Record] = []
        conn, recv_us, stats = msg.conn, msg.recv_us, self.stats
        lags: list[int] = []
        for ev in msg.events:
            kind = type(ev)
            if kind is TickerUpdate:
                book = self._books.get(ev.symbol)
                if book is None:
                    self._unexpected(ev.symbol)
                    continue
                conn.venue_ms = max(conn.venue_ms, ev.ts_ms)
                stats.incr("bybit.messages.tickers")
                if ev.snapshot:
                    stats.incr("bybit.snapshots")
                rows = book.apply(ev, recv_us)
                if rows is None:
                    stats.incr("bybit.deltas_unsynced")  # expected between a gap and the fresh snapshot
                    continue
                out.extend(rows)
                lags.append(recv_us - ev.ts_ms * 1000)
                stats.last_event_us[(VENUE, ev.symbol)] = recv_us
            elif kind is TradeBatch:
                tape = self._tapes.get(ev.symbol)
                if tape is None:
                    self._unexpected(ev.symbol)
                    continue
                conn.venue_ms = max(conn.venue_ms, ev.ts_ms)
                stats.incr("bybit.messages.publicTrade")
                trades = tape.accept_live(ev.trades, recv_us)
                out.extend(trades)
                lags.extend(recv_us - t.ts_us for t in trades)
                stats.last_event_us[(VENUE, ev.symbol)] = recv_us
            elif kind is _Acked:
                self._on_acked(ev)
            elif kind is Problem:
                self._on_problem(conn, ev)
        if lags:
            stats.lag.record_many(lags)
        return self._counted(out)

    def _counted(self, out: list[Record]) -> list[Record]:
        trades = sum(1 for r in out if r.KIND == "trade")
        if trades:
            self.stats.incr("bybit.trades", trades)
        if len(out) > trades:
            self.stats.incr("bybit.derivatives", len(out) - trades)
        return out

    def _on_acked(self, ack: _Acked) -> None:
        if not ack.success:
            self.stats.incr("bybit.subscribe_refused" if ack.op == "subscribe" else "bybit.unsubscribe_refused")
            self._rl.log(log, logging.ERROR, f"refused:{ack.op}", "Bybit refused a request",
                         op=ack.op, topics=",".join(ack.topics[:5]), reason=ack.ret_msg)
            return
        if ack.op != "subscribe" or not self.cfg.trade_catchup:
            return
        for topic in ack.topics:
            channel, _, symbol = topic.partition(".")
            tape = self._tapes.get(symbol)
            if channel == PUBLIC_TRADE and tape is not None and tape.gap_from_ms is not None:
                self._catchups.put(symbol)  # the stream is live again: a page now overlaps it

    def _on_problem(self, conn: _Conn, problem: Problem) -> None:
        self.stats.incr(f"bybit.decode_errors.{problem.kind}")
        self._rl.log(log, logging.WARNING, problem.kind, "bad frame skipped", problem=problem.kind,
                     topic=problem.topic or "-", conn=conn.conn_id, detail=problem.detail[:200])
        if problem.topic is not None:
            channel, _, symbol = problem.topic.partition(".")
            if symbol in self._books and channel in (TICKERS, PUBLIC_TRADE):
                self._gap(conn, symbol, tickers=channel == TICKERS, trades=channel == PUBLIC_TRADE)
            return
        for symbol in conn.symbols:  # nothing tells which topic lost a message: all of them may have
            self._gap(conn, symbol, tickers=True, trades=True)

    def _gap(self, conn: _Conn, symbol: str, *, tickers: bool, trades: bool) -> None:
        """A message of `symbol` may be lost while its connection stays up."""
        book, tape = self._books.get(symbol), self._tapes.get(symbol)
        if tickers and book is not None:
            book.desync()
            self.stats.incr("bybit.resyncs")
            conn.resync.add(f"{TICKERS}.{symbol}")
            conn.wake.set()
        if trades and tape is not None:
            self.stats.incr("bybit.gaps")
            if tape.open_gap() and self.cfg.trade_catchup:
                self._catchups.put(symbol)  # the stream is still live: a page now covers the loss

    def _on_down(self, conn: _Conn) -> None:
        for symbol in conn.symbols:
            book, tape = self._books.get(symbol), self._tapes.get(symbol)
            if book is not None:
                book.desync()
            if tape is not None:
                self.stats.incr("bybit.gaps")
                tape.open_gap()  # caught up once the new connection's subscription is acked

    def _on_tick(self) -> list[Record]:
        out: list[Record] = []
        recv_us = now_us()
        grace = self.cfg.sample_grace_ms
        for conn in self._conns:
            if conn.ws is None:
                continue
            horizon = conn.venue_ms - grace
            for symbol in conn.symbols:
                book = self._books.get(symbol)
                if book is not None:
                    out.extend(book.sample_until(horizon, recv_us))
        out = self._counted(out)
        out.extend(self._checkpoints())
        self.stats.set_gauge("bybit.tickers_synced", sum(1 for b in self._books.values() if b.synced))
        if self._tapes:
            self.stats.set_gauge("bybit.trade_gaps_open", sum(1 for t in self._tapes.values() if t.gap_from_ms is not None))
            self.stats.set_gauge("bybit.trade_id_collisions", sum(t.id_collisions for t in self._tapes.values()))
        return out

    def _checkpoints(self) -> list[Record]:
        out: list[Record] = []
        for symbol, tape in self._tapes.items():
            point = tape.resume_point
            if point is not None and point != self._checkpointed.get(symbol):
                out.append(Checkpoint(VENUE, symbol, point))
                self._checkpointed[symbol] = point
        return out

    def _on_caught_up(self, msg: _CaughtUp) -> list[Record]:
        tape = self._tapes.get(msg.symbol)
        if tape is None:
            return []
        collisions = tape.id_collisions
        trades, lost = tape.apply_catchup(msg.page, msg.generation, full=msg.full, recv_us=now_us())
        if lost:
            self.stats.incr("bybit.trades_unrecoverable")
            log.error("trade gap larger than one recent-trade page: some trades may be missing",
                      extra={"symbol": msg.symbol, "page": len(msg.page)})
        if tape.id_collisions > collisions:
            log.error("two trade ids map to one stored trade_id", extra={"symbol": msg.symbol})
        if trades:
            self.stats.incr("bybit.trades_backfilled", len(trades))
        return self._counted(trades)

    def _on_symbols_changed(self, msg: _SymbolsChanged) -> list[Record]:
        out = self._checkpoints()
        for symbol in msg.removed:
            self._books.pop(symbol, None)
            self._tapes.pop(symbol, None)
            self._checkpointed.pop(symbol, None)
            self._retired.add(symbol)
        for symbol in msg.added:
            self._add_state(symbol)
        return out

    def _unexpected(self, symbol: str) -> None:
        if symbol not in self._retired:
            self.stats.incr("bybit.unexpected_symbol")
            self._rl.log(log, logging.WARNING, "unexpected_symbol", "message for a symbol not followed", symbol=symbol)

    # --- connections -----------------------------------------------------------------------------------

    async def _run_connection(self, conn: _Conn, inbox: trio.MemorySendChannel) -> None:
        cfg = self.cfg
        cstats = self.stats.connection(conn.conn_id)
        cstats.url = str(cfg.ws_url)  # a Secret renders as ***
        backoff = Backoff(cfg.reconnect_base_s, cfg.reconnect_cap_s)
        idle_timeout = max(30.0, 2.5 * cfg.ping_interval_s)  # pongs arrive at least every ping interval
        async with inbox:
            try:
                while True:
                    await self._running.wait()
                    cstats.streams = len(self._topics(conn.symbols))
                    try:
                        ws = await connect_ws(reveal(cfg.ws_url), stats=cstats, idle_timeout=idle_timeout,
                                              max_outgoing_per_s=cfg.max_outgoing_per_s)
                    except ConnectionClosed as exc:
                        self.stats.incr("bybit.connect_errors")
                        cstats.state, cstats.last_error = "backoff", str(exc)
                        delay = backoff.next_delay()
                        self._rl.log(log, logging.WARNING, f"connect:{conn.conn_id}", "connect failed",
                                     conn=conn.conn_id, error=str(exc), retry_in_s=round(delay, 2))
                        await trio.sleep(delay)
                        continue
                    if not self._running.is_set():  # paused while connecting
                        with trio.CancelScope(shield=True):
                            await ws.aclose()
                        continue
                    log.info("connected", extra={"conn": conn.conn_id, "topics": cstats.streams})
                    await self._session(conn, ws, inbox, backoff)
                    self.stats.incr("bybit.disconnects")
                    cstats.last_error = conn.closed_because
                    log.warning("connection lost, reconnecting", extra={"conn": conn.conn_id,
                                                                         "reason": conn.closed_because})
                    await inbox.send(_Down(conn))
                    cstats.state = "backoff"
                    await trio.sleep(backoff.next_delay())
            finally:
                cstats.state = "closed"
                self.stats.forget_connection(conn.conn_id)

    async def _session(self, conn: _Conn, ws: WsConnection, inbox: trio.MemorySendChannel, backoff: Backoff) -> None:
        """Subscribe, ping and read until the connection is lost (or cut by reconnect/pause)."""
        conn.ws, conn.live, conn.resync, conn.pending = ws, set(), set(), {}
        conn.closed_because = "cut"
        try:
            with trio.CancelScope() as scope:
                conn.session = scope
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._until_closed, conn, scope, self._subscriber, conn, ws)
                    nursery.start_soon(self._until_closed, conn, scope, self._pinger, ws)
                    await self._until_closed(conn, scope, self._reader, conn, ws, inbox, backoff)
        finally:
            conn.ws = conn.session = None
            with trio.CancelScope(shield=True):
                await ws.aclose()

    @staticmethod
    async def _until_closed(conn: _Conn, scope: trio.CancelScope, task: Callable, *args) -> None:
        try:
            await task(*args)
        except ConnectionClosed as exc:
            conn.closed_because = str(exc)
        finally:
            scope.cancel()

    async def _reader(self, conn: _Conn, ws: WsConnection, inbox: trio.MemorySendChannel, backoff: Backoff) -> None:
        first = True
        while True:
            frames = await ws.receive_batch()
            recv_us = now_us()
            if first:
                backoff.reset()  # only a connection that delivered data counts as a success
                first = False
            events: list = []
            for frame in frames:
                ev = protocol.decode(frame)
                if type(ev) is OpReply:
                    ev = self._on_reply(conn, ev)
                    if ev is None:
                        continue
                events.append(ev)
            if events:
                await inbox.send(_Frames(conn, recv_us, events))

    def _on_reply(self, conn: _Conn, reply: OpReply) -> _Acked | None:
        if reply.op in ("ping", "pong"):
            self.stats.incr("bybit.pongs")
            return None
        request = conn.pending.pop(reply.req_id, None)
        if request is None or request[0] != reply.op:
            return None
        return _Acked(reply.op, request[1], reply.success, reply.ret_msg)

    async def _subscriber(self, conn: _Conn, ws: WsConnection) -> None:
        while True:
            conn.wake = trio.Event()
            await self._reconcile(conn, ws)
            await conn.wake.wait()

    async def _reconcile(self, conn: _Conn, ws: WsConnection) -> None:
        """Unsubscribe what is no longer wanted or must be resynchronised, then subscribe what is
        wanted and not live. Book-keeping happens before each send, so a reconcile woken meanwhile
        never sends the same request twice."""
        wanted = self._topics(conn.symbols)
        drop = (conn.live - set(wanted)) | (conn.live & conn.resync)
        conn.resync.clear()
        per_request = self.cfg.args_per_request
        for chunk in protocol.chunks(sorted(drop), per_request):
            conn.live.difference_update(chunk)
            await self._request(conn, ws, "unsubscribe", chunk)
        add = [t for t in wanted if t not in conn.live]
        for chunk in protocol.chunks(add, per_request):
            conn.live.update(chunk)
            await self._request(conn, ws, "subscribe", chunk)

    async def _request(self, conn: _Conn, ws: WsConnection, op: str, topics: list[str]) -> None:
        self._serial += 1
        req_id = f"{op[:3]}-{self._serial}"
        conn.pending[req_id] = (op, topics)
        encode = protocol.subscribe if op == "subscribe" else protocol.unsubscribe
        await ws.send_text(encode(topics, req_id))

    async def _pinger(self, ws: WsConnection) -> None:
        while True:
            await trio.sleep(self.cfg.ping_interval_s)
            self._serial += 1
            await ws.send_text(protocol.ping(f"ping-{self._serial}"))

    async def _ticker(self, inbox: trio.MemorySendChannel) -> None:
        async with inbox:
            while True:
                await trio.sleep(TICK_S)
                await inbox.send(_TICK)

    # --- REST ---------------------------------------------------------------------------------------

    async def _catchup_worker(self, inbox: trio.MemorySendChannel) -> None:
        limit = self.cfg.catchup_limit
        async with inbox:
            while True:
                symbol = await self._catchups.get()
                tape = self._tapes.get(symbol)
                if tape is None or tape.gap_from_ms is None:
                    continue
                generation = tape.gap_generation  # before the request: a gap opened later is not covered
                params = rest.recent_trade_params(symbol, limit)
                parse = lambda body, headers, now_s, s=symbol: rest.parse_recent_trades(body, s, headers, now_s)
                try:
                    page = await self._rest(rest.RECENT_TRADE, params, parse)
                except rest.ResponseError as exc:
                    self._rl.log(log, logging.ERROR, "catchup_refused", "trade catch-up refused", symbol=symbol,
                                 error=str(exc))
                    await trio.sleep(5.0)
                    self._catchups.put(symbol)
                    continue
                self.stats.incr("bybit.rest.backfill_pages")
                msg = _CaughtUp(symbol, page, generation, full=len(page) >= limit)
                await inbox.send(msg)
                await msg.applied.wait()

    async def _rest(self, path: str, params: dict, parse: Callable, *, attempts: int | None = None):
        """GET and parse, honouring rate limits (429/403/retCode 10006 with Retry-After) and
        retrying transport errors, 5xx and malformed bodies. A refusal (4xx, other retCodes)
        raises rest.Refused; `attempts` bounds the retries (then _GiveUp)."""
        backoff = Backoff(0.5, 30.0)
        tries = 0
        while True:
            tries += 1
            try:
                resp = await self._http.get(path, params=params)
                now_s = time.time()
                rest.check_http(resp.status_code, resp.headers, resp.content, now_s)
                result = parse(resp.content, resp.headers, now_s)
                self.stats.incr("bybit.rest.requests")
                return result
            except rest.RateLimited as exc:
                self.stats.incr(f"bybit.rest.http_{exc.status}")
                wait = exc.retry_after_s if exc.retry_after_s is not None else backoff.next_delay()
                wait = min(wait, self.cfg.max_retry_after_s)
                self._rl.log(log, logging.WARNING, "rate_limited", "REST rate limited by the venue, waiting",
                             path=path, status=exc.status, wait_s=round(wait, 2))
                if attempts is not None and tries >= attempts:  # a venue that keeps refusing must not stall start-up
                    raise _GiveUp(f"{path}: still rate limited after {tries} attempts")
                await trio.sleep(wait)
                continue
            except rest.Refused:
                self.stats.incr("bybit.rest.refused")
                raise
            except httpx.HTTPError as exc:
                self.stats.incr("bybit.rest.transport_errors")
                self._rl.log(log, logging.WARNING, "rest_transport", "REST request failed", path=path, error=repr(exc))
            except rest.ResponseError as exc:
                self.stats.incr("bybit.rest.bad_answers")
                self._rl.log(log, logging.WARNING, "rest_bad_answer", "unusable REST answer", path=path, error=str(exc))
            if attempts is not None and tries >= attempts:
                raise _GiveUp(f"{path}: gave up after {tries} attempts")
            await trio.sleep(backoff.next_delay())


def _channel_depth(recv: trio.MemoryReceiveChannel) -> tuple[int, int]:
    s = recv.statistics()
    cap = s.max_buffer_size
    return s.current_buffer_used, (cap if not math.isinf(cap) else -1)
