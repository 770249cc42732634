"""What the supervisor asks of a feed, whatever its family.

A feed class is registered in `ingestd.supervisor.FEED_CLASSES` and built as
`FeedClass(feed_cfg, router, stats, resume=resume)`, where `resume` maps each of its resume keys
(a symbol, a chain, a poll name) to the position stored by `Checkpoint` records under the feed's
venue name. Everything it emits goes through `await router.send(records)`; its stats go to the
`StatsRegistry`, under names that start with the family (`bybit.connections_planned`, ...), and
its state task beats `stats.heartbeat("feed.<family>")`, which gates the systemd watchdog.
"""

from __future__ import annotations

from typing import Protocol

import trio


class Feed(Protocol):
    symbols: list[str]  # what it follows now (symbols, pools, tokens, markets): shown in /pairs

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Start, call task_status.started() once data can flow, return after stop() once what
        was received has been handed to the router (a clean stop loses nothing)."""

    def stop(self) -> None:
        """Stop taking in data; run() then drains and returns."""

    def reconnect(self) -> int:
        """Replace its connections (make-before-break where the venue allows); how many."""

    def wedge(self) -> None:
        """Watchdog drill: stop beating the heartbeat while the event loop stays alive."""

    async def update_symbols(self, wanted: list[str]) -> tuple[list[str], list[str]]:
        """Follow a reloaded list without dropping unaffected connections; (added, removed)."""

    def pause(self) -> None:
        """Operator `pause`: close connections and stop polling, keeping state; stay idle until
        resume(), which reconnects and catches up (backfill, fresh snapshots) as after any gap."""

    def resume(self) -> None:
        """Undo pause()."""


class PollingFeed(Feed, Protocol):
    """Feeds that poll (The Graph, JSON-RPC, the Data API, CoinGecko) also answer `trigger`."""

    async def trigger(self) -> dict:
        """Run one poll now, out of schedule; return a short summary ({"records": n, ...})."""
