"""The simulator: one Market, its fan-out and connections, and the two servers bound on loopback.

    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, SimConfig(symbols=3, rate=500))
        ...connect to sim.ws_url / sim.rest_url...
        nursery.cancel_scope.cancel()
"""

from __future__ import annotations

from typing import Any

import trio

from ingestd.sim.blast import BlastTape
from ingestd.sim.config import SimConfig
from ingestd.sim.counters import SimCounters
from ingestd.sim.fanout import FanOut
from ingestd.sim.live_events import LiveEvents
from ingestd.sim.market import Market
from ingestd.sim.rest_api import RestApi
from ingestd.sim.rest_server import serve_rest
from ingestd.sim.ws_server import serve_websocket
from ingestd.sim.ws_session import WsSession


class Simulator:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.market = Market(
            list(config.symbols),
            config.seed,
            depth_ratio=config.depth_ratio,
            min_levels=config.min_book_levels,
            max_levels=config.max_book_levels,
            halted=config.halted,
        )
        self.counters = SimCounters()
        self.fanout = FanOut(
            self.counters, drop_rate=config.drop_rate, malformed_rate=config.malformed_rate, seed=config.seed
        )
        self.sessions: set[WsSession] = set()
        self.blast_tape: BlastTape | None = None
        self.live = LiveEvents(self)
        self.rest_api = RestApi(self)
        self.paused = False
        self.faults_on = True  # calm() turns off every fault knob for the rest of the run
        self.ws_url = ""
        self.rest_url = ""

    @property
    def symbols(self) -> tuple[str, ...]:
        return self.market.symbols

    def pause(self) -> dict[str, Any]:
        """Stop generating events. Pending depth diffs are sent first, and each stream's last frame if
        drop_rate dropped it (or the gap would stay invisible), so once subscribers have read what is
        queued, every loss is detectable and their books can be compared with the reference book."""
        if not self.paused:
            self.live.flush_all_depth()
            self.fanout.release_dropped_tails()
            self.paused = True
        return {"paused": True, "lastUpdateIds": {s: self.market.last_update_id(s) for s in self.market.symbols}}

    def resume(self) -> dict[str, Any]:
        self.paused = False
        for session in self.sessions:
            session.wake_writer()  # blast writers wait while paused
        return {"paused": False}

    def calm(self) -> dict[str, Any]:
        """Stop injecting faults (dropped frames, malformed frames, periodic connection drops) while the
        market keeps moving: the next events reveal every earlier loss, as on a live venue, so a
        consumer can be seen to converge."""
        self.faults_on = False
        self.fanout.stop_faults()
        return {"calm": True}

    def drop_connections(self) -> int:
        """Cut every WebSocket connection's TCP stream now, without a close frame."""
        sessions = list(self.sessions)
        for session in sessions:
            session.abort("dropped on purpose (drop_every_s or /_sim/drop)")
        self.counters.drops += len(sessions)
        return len(sessions)

    def announce_shutdown(self) -> int:
        """Send serverShutdown on every connection; each closes shutdown_grace_s later."""
        sessions = list(self.sessions)
        for session in sessions:
            session.announce_shutdown()
        return len(sessions)

    def truth(self, symbol: str | None = None) -> dict[str, range]:
        """Every trade id ever made, per symbol (ids are contiguous, so ranges)."""
        symbols = self.market.symbols if symbol is None else (symbol,)
        return {s: self.market.trade_ids(s) for s in symbols}

    def stats(self) -> dict[str, Any]:
        return {
            **self.counters.as_dict(),
            "trades_made": self.market.trade_count(),
            "depth_updates_made": self.market.depth_update_count(),
            "connections_open": len(self.sessions),
            "paused": self.paused,
        }


async def serve(config: SimConfig, *, task_status: trio.TaskStatus[Simulator] = trio.TASK_STATUS_IGNORED) -> None:
    """Bind the WebSocket and REST servers, report the Simulator via task_status, run until cancelled."""
    sim = Simulator(config)
    if config.blast_trades:
        sim.blast_tape = await trio.to_thread.run_sync(BlastTape, sim.market, config.blast_trades)
    async with trio.open_nursery() as nursery:
        scheme = "ws://" if config.tls_cert is None else "wss://"
        sim.ws_url = scheme + _address(await nursery.start(serve_websocket, sim))
        sim.rest_url = "http://" + _address(await nursery.start(serve_rest, sim))
        nursery.start_soon(sim.live.run)
        if config.drop_every_s is not None:
            nursery.start_soon(_drop_periodically, sim, config.drop_every_s)
        task_status.started(sim)


async def _drop_periodically(sim: Simulator, every_s: float) -> None:
    while sim.faults_on:
        await trio.sleep(every_s)
        if sim.faults_on:
            sim.drop_connections()


def _address(listeners: list[trio.SocketListener]) -> str:
    host, port = listeners[0].socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
