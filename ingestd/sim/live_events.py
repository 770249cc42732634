"""Time-driven event generation: `rate` market events per second, fanned out to subscribers.

The loop wakes every few milliseconds and generates however many events are due since it started, so
high rates cost one wake-up per batch rather than one per event. Trades go out immediately on
`@trade` and `@aggTrade`; depth steps are merged per symbol and flushed every 100 ms (`@depth@100ms`)
and every 1000 ms (`@depth`), as Binance does. In blast mode trades come from the pre-generated tape,
so this loop only makes depth steps (at rate * depth_ratio).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ingestd.sim.depth_coalescer import DepthCoalescer
from ingestd.sim.market import MarketEvent, agg_trade_from_trade
from ingestd.sim.stream_names import AGG_TRADE, DEPTH_100MS, DEPTH_1000MS, DEPTH_INTERVAL_MS, TRADE, stream_name
from ingestd.sim.wall_clock import wall_ms

if TYPE_CHECKING:
    from ingestd.sim.server import Simulator

TICK_S = 0.005
# If the loop falls further behind than this (a stalled event loop), skip the backlog instead of bursting.
MAX_BACKLOG_S = 0.25


class LiveEvents:
    def __init__(self, sim: Simulator) -> None:
        self._sim = sim
        self._market = sim.market
        self._fanout = sim.fanout
        self._trades_from_tape = sim.config.blast_trades > 0
        self._streams = {
            symbol: {kind: stream_name(symbol, kind) for kind in (TRADE, AGG_TRADE, DEPTH_100MS, DEPTH_1000MS)}
            for symbol in self._market.symbols
        }
        self._coalescers = {
            kind: {symbol: DepthCoalescer(symbol) for symbol in self._market.symbols}
            for kind in (DEPTH_100MS, DEPTH_1000MS)
        }

    async def run(self) -> None:
        config = self._sim.config
        rate = config.rate * (config.depth_ratio if self._trades_from_tape else 1.0)
        started, emitted = trio.current_time(), 0
        next_flush = {kind: started + interval / 1000 for kind, interval in DEPTH_INTERVAL_MS.items()}
        while True:
            await trio.sleep(TICK_S)
            now = trio.current_time()
            if self._sim.paused:
                started, emitted = now, 0  # resume at the configured rate, without a catch-up burst
                continue
            due = int((now - started) * rate) - emitted
            if due > rate * MAX_BACKLOG_S:
                started, emitted, due = now, 0, 0
            now_ms = wall_ms()
            for _ in range(due):
                self._emit_one(now_ms)
            emitted += due
            for kind, flush_at in next_flush.items():
                if now >= flush_at:
                    self.flush_depth(kind, now_ms)
                    next_flush[kind] = max(flush_at + DEPTH_INTERVAL_MS[kind] / 1000, now)

    def _emit_one(self, now_ms: int) -> None:
        if self._trades_from_tape:
            symbol = self._market.pick_symbol()
            if symbol is not None:
                self._on_depth(symbol, self._market.step_depth(symbol, now_ms))
            return
        event = self._market.step(now_ms)
        if event is not None:
            self.publish(event)

    def publish(self, event: MarketEvent) -> None:
        if event.kind == "trade":
            streams = self._streams[event.symbol]
            self._fanout.publish(streams[TRADE], event.payload)
            if self._fanout.has_subscribers(streams[AGG_TRADE]):
                self._fanout.publish(streams[AGG_TRADE], agg_trade_from_trade(event.payload))
        else:
            self._on_depth(event.symbol, event.payload)

    def _on_depth(self, symbol: str, update: dict) -> None:
        for kind, coalescers in self._coalescers.items():
            # Merge only for streams someone listens to; a new subscriber's first diff then starts at
            # the next update, which the documented snapshot-and-buffer procedure handles.
            if self._fanout.has_subscribers(self._streams[symbol][kind]):
                coalescers[symbol].add(update)
            else:
                coalescers[symbol].reset()

    def flush_depth(self, kind: str, now_ms: int) -> None:
        for symbol, coalescer in self._coalescers[kind].items():
            merged = coalescer.flush(now_ms)
            if merged is not None:
                self._fanout.publish(self._streams[symbol][kind], merged)

    def flush_all_depth(self) -> None:
        """Send every pending depth diff now (on pause, so streams are complete at the quiescent point)."""
        now_ms = wall_ms()
        for kind in self._coalescers:
            self.flush_depth(kind, now_ms)
