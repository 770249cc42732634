"""The market channel's connections: one WebSocket per group of outcome tokens, kept alive and
subscribed, each feeding decoded events to the feed's state task.

A group's connection runs three tasks: the reader (decode, hand over), the pinger (text `PING`
every `ping_interval_s`; the venue answers `PONG`), and the subscriber, which keeps the
connection's subscription equal to the group's token list with `operation: subscribe /
unsubscribe` messages, and subscribes a token again when the state task wants a fresh book.
The state task only edits `Group.assets` / `Group.resync` and calls `notify()`: it never awaits
the network.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import trio

from ingestd.backoff import Backoff
from ingestd.logs import RateLimitedLog
from ingestd.secrets import reveal
from ingestd.stats import StatsRegistry, now_us
from ingestd.transport.ws import ConnectionClosed, connect_ws
from ingestd.venues.polymarket import protocol

VENUE = "polymarket"
OUTGOING_PER_S = 10.0  # our messages per second per connection (subscription changes, pings)

log = logging.getLogger("ingestd.polymarket")


@dataclass(slots=True)
class Chunk:
    """Everything decoded from one socket read."""

    group: "Group"
    recv_us: int
    events: list


@dataclass(slots=True)
class ConnectionDown:
    group: "Group"
    assets: list[str]


@dataclass(eq=False)
class Group:
    index: int
    assets: list[str] = field(default_factory=list)
    subscribed: set[str] = field(default_factory=set)  # what the live connection is subscribed to
    resync: set[str] = field(default_factory=set)  # subscribe again: the book must be fetched anew
    changed: trio.Event = field(default_factory=trio.Event)
    scope: trio.CancelScope | None = None  # the current connection attempt
    venue_ms: int = 0  # newest venue time seen on the current connection (the state task's)

    def notify(self) -> None:
        self.changed.set()

    async def wait_changed(self) -> None:
        ev = self.changed
        await ev.wait()
        if self.changed is ev:
            self.changed = trio.Event()


class Channel:
    """The connections of one feed. `running` is awaited before every connect (pause/resume)."""

    def __init__(self, cfg: Any, stats: StatsRegistry, running: Callable[[], trio.Event]) -> None:
        self.cfg = cfg
        self.stats = stats
        self.running = running
        self.groups: list[Group] = []
        self.skip_backoff = False
        self._rl = RateLimitedLog(interval_s=10.0)

    def cut_all(self) -> int:
        """Cancel every connection attempt (pause, reconnect); each loop then waits or reconnects."""
        cut = 0
        for group in self.groups:
            if group.scope is not None:
                group.scope.cancel()
                cut += 1
        return cut

    def planned(self) -> int:
        return sum(1 for g in self.groups if g.assets)

    async def run_group(self, group: Group, inbox: trio.MemorySendChannel) -> None:
        cfg = self.cfg
        conn_id = f"{VENUE}/{group.index}"
        cstats = self.stats.connection(conn_id)
        cstats.url = str(cfg.ws_url)
        backoff = Backoff(cfg.reconnect_base_s, cfg.reconnect_cap_s)
        async with inbox:
            try:
                while True:
                    await self.running().wait()
                    if not group.assets:
                        cstats.state = "new"
                        await group.wait_changed()
                        continue
                    with trio.CancelScope() as scope:
                        group.scope = scope
                        await self._connection(group, inbox, cstats, backoff)
                    group.scope = None
                    await inbox.send(ConnectionDown(group, list(group.assets)))
                    cstats.state = "backoff"
                    if self.skip_backoff:
                        self.skip_backoff = False
                    else:
                        await trio.sleep(backoff.next_delay())
            finally:
                self.stats.forget_connection(conn_id)

    async def _connection(self, group: Group, inbox: trio.MemorySendChannel, cstats, backoff: Backoff) -> None:
        cfg = self.cfg
        try:
            conn = await connect_ws(reveal(cfg.ws_url), stats=cstats, max_outgoing_per_s=OUTGOING_PER_S,
                                    idle_timeout=3 * cfg.ping_interval_s + 5)
        except ConnectionClosed as exc:  # DNS, TCP, TLS, timeout or a refused upgrade
            self.stats.incr(f"{VENUE}.connect_errors")
            cstats.last_error = str(exc)
            self._rl.log(log, logging.WARNING, f"connect:{group.index}", "connect failed", conn=cstats.conn_id,
                         error=str(exc))
            return
        try:
            group.resync.clear()
            assets = list(group.assets)
            group.subscribed = set(assets)
            cstats.streams = len(assets)
            await conn.send_text(protocol.subscribe_message(assets))
            log.info("connected", extra={"conn": cstats.conn_id, "assets": len(assets)})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pinger, conn)
                nursery.start_soon(self._subscriber, group, conn, cstats)
                try:
                    await self._read(group, conn, inbox, backoff)
                except ConnectionClosed as exc:
                    self._lost(cstats, exc)
                nursery.cancel_scope.cancel()
        except ConnectionClosed as exc:  # the first subscribe could not be sent
            self._lost(cstats, exc)
        finally:
            group.subscribed = set()
            with trio.CancelScope(shield=True):
                await conn.aclose()

    def _lost(self, cstats, exc: ConnectionClosed) -> None:
        self.stats.incr(f"{VENUE}.disconnects")
        cstats.last_error = str(exc)
        log.warning("connection lost, reconnecting", extra={"conn": cstats.conn_id, "reason": str(exc)})

    async def _pinger(self, conn) -> None:
        try:
            while True:
                await trio.sleep(self.cfg.ping_interval_s)
                await conn.send_text(protocol.PING)
        except ConnectionClosed:
            return  # the reader sees it too

    async def _subscriber(self, group: Group, conn, cstats) -> None:
        try:
            while True:
                wanted = set(group.assets)
                removed = [a for a in group.subscribed if a not in wanted]
                added = [a for a in group.assets if a not in group.subscribed]
                again = [a for a in group.resync if a in wanted and a in group.subscribed]
                group.resync.clear()
                # Book-keep before the await, so the next round never sends the same change twice.
                if removed:
                    group.subscribed.difference_update(removed)
                    await conn.send_text(protocol.change_message(removed, "unsubscribe"))
                if again:
                    # Whether the venue answers a repeated subscribe with a new book is not documented;
                    # after an unsubscribe it must, as for any new token.
                    await conn.send_text(protocol.change_message(again, "unsubscribe"))
                if added or again:
                    group.subscribed.update(added)
                    await conn.send_text(protocol.change_message(added + again, "subscribe"))
                cstats.streams = len(group.subscribed)
                if not (removed or added or again):
                    await group.wait_changed()
        except ConnectionClosed:
            return

    async def _read(self, group: Group, conn, inbox: trio.MemorySendChannel, backoff: Backoff) -> None:
        stats = self.stats
        first = True
        while True:
            frames = await conn.receive_batch()
            recv_us = now_us()
            if first:
                backoff.reset()  # only a connection that delivered data counts as a success
                first = False
            events = []
            for frame in frames:
                for ev in protocol.decode(frame):
                    kind = type(ev)
                    if kind is protocol.Problem:
                        stats.incr(f"{VENUE}.decode_errors.{ev.kind}")
                        self._rl.log(log, logging.WARNING, ev.kind, "bad frame skipped", problem=ev.kind,
                                     detail=ev.detail[:200])
                    elif kind is not protocol.Pong:
                        events.append(ev)
            if events:
                await inbox.send(Chunk(group, recv_us, events))
