"""What the sink benchmarks share: a producer that works like a feed, and a GIL-contending thread.

The producer decodes real Binance combined-stream frames with the daemon's own decoder
(`ingestd.venues.binance.protocol.decode`), so a "whole runner" figure includes the decoding a
feed does in the same process, and nothing a bench-only decoder would make cheaper or dearer.
"""

from __future__ import annotations

import threading
import time

import msgspec

from ingestd.model import Record, Trade
from ingestd.venues.binance.protocol import TradeEvent, decode

CHUNK = 100  # trades per Router.send, about what one feed receive yields at high rates


def wire_frames(trades: list[Trade]) -> list[list[bytes]]:
    """The trades as combined-stream frames, in chunks of CHUNK."""
    encode = msgspec.json.Encoder().encode
    frames = [
        encode({"stream": f"{t.symbol.lower()}@trade", "data": {
            "e": "trade", "E": t.ts_us // 1000, "s": t.symbol, "t": t.trade_id, "p": str(t.price),
            "q": str(t.qty), "T": t.ts_us // 1000, "m": t.side == "sell", "M": True}})
        for t in trades
    ]
    return [frames[k : k + CHUNK] for k in range(0, len(frames), CHUNK)]


def decode_frames(frames: list[bytes], *, stamp_now: bool = False) -> list[Record]:
    """Decode a chunk as the feed does. stamp_now: exchange time = now (for latency from send)."""
    now = time.time_ns() // 1000
    out: list[Record] = []
    for frame in frames:
        ev = decode(frame)
        if type(ev) is TradeEvent:
            ts = now if stamp_now else ev.T * 1000
            out.append(Trade("binance", ev.s, ev.t, ev.p, ev.q, "sell" if ev.m else "buy", ts, now))
    return out


class GilHog:
    """A thread running pure Python, so another thread must win the GIL back after every release."""

    def __enter__(self) -> None:
        self._stop = False
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join()

    def _spin(self) -> None:
        n = 0
        while not self._stop:
            n += 1
