"""Epoch milliseconds, the unit of every Binance timestamp (E, T, serverTime)."""

from __future__ import annotations

import time


def wall_ms() -> int:
    return time.time_ns() // 1_000_000
