"""In-process stats registry: counters, gauges, connection states, per-symbol freshness, latency.

One registry per daemon instance. Everything else (stats socket, HTTP /metrics, sd_notify STATUS,
alerts, the demo's summary line) reads `snapshot()`; nothing reads private fields.

The hot path updates it per received chunk or per batch, never per message where avoidable,
so the cost stays in the noise next to decoding.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable, Iterable


def now_us() -> int:
    return time.time_ns() // 1000


# --- latency histogram -------------------------------------------------------------------------
# Log-linear buckets (16 per power of two, so any reported value is within ~6 % of the truth),
# the HdrHistogram idea in a few lines. Values are microseconds; negatives clamp to 0.

_SUB = 16
_NBUCKETS = 64 * _SUB


def _bucket(v: int) -> int:
    if v < 2 * _SUB:
        return v if v > 0 else 0
    b = v.bit_length()
    return (b - 4) * _SUB + ((v >> (b - 5)) - _SUB)


def _bucket_value(i: int) -> int:
    if i < 2 * _SUB:
        return i
    b = i // _SUB + 4
    m = i % _SUB + _SUB
    low = m << (b - 5)
    return low + (1 << (b - 5)) // 2


class Histogram:
    __slots__ = ("counts", "n", "total")

    def __init__(self) -> None:
        self.counts = [0] * _NBUCKETS
        self.n = 0
        self.total = 0

    def record(self, v: int) -> None:
        self.counts[_bucket(v)] += 1
        self.n += 1
        self.total += v if v > 0 else 0

    def record_many(self, values: Iterable[int]) -> None:
        counts = self.counts
        n = 0
        total = 0
        for v in values:
            counts[_bucket(v)] += 1
            n += 1
            total += v if v > 0 else 0
        self.n += n
        self.total += total

    def merge(self, other: "Histogram") -> None:
        for i, c in enumerate(other.counts):
            if c:
                self.counts[i] += c
        self.n += other.n
        self.total += other.total

    def percentile(self, q: float) -> int | None:
        """Value at quantile q in [0, 1], or None when empty."""
        if self.n == 0:
            return None
        rank = max(1, int(q * self.n + 0.5))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return _bucket_value(i)
        return _bucket_value(_NBUCKETS - 1)


class WindowedHistogram:
    """Recent-window percentiles (the last one to two windows) plus an all-time histogram."""

    def __init__(self, window_s: float = 30.0) -> None:
        self.window_s = window_s
        self.current = Histogram()
        self.previous = Histogram()
        self.all_time = Histogram()
        self._rotated_at = time.monotonic()

    def _maybe_rotate(self) -> None:
        now = time.monotonic()
        if now - self._rotated_at >= self.window_s:
            self.previous = self.current
            self.current = Histogram()
            self._rotated_at = now

    def record_many(self, values: list[int]) -> None:
        self._maybe_rotate()
        self.current.record_many(values)
        self.all_time.record_many(values)

    def recent(self) -> Histogram:
        self._maybe_rotate()
        h = Histogram()
        h.merge(self.previous)
        h.merge(self.current)
        return h

    def summary(self) -> dict:
        r = self.recent()
        return {
            "count": self.all_time.n,
            "p50_us": r.percentile(0.50),
            "p99_us": r.percentile(0.99),
            "max_us": r.percentile(1.0),
        }


# --- connections -------------------------------------------------------------------------------


@dataclass
class ConnectionStats:
    conn_id: str
    url: str = ""
    streams: int = 0
    state: str = "new"  # new | connecting | up | backoff | closed
    messages: int = 0
    bytes: int = 0
    last_message_us: int = 0
    connected_since_us: int = 0
    connects: int = 0
    last_error: str = ""

    def as_dict(self) -> dict:
        return {
            "id": self.conn_id,
            "url": self.url,
            "streams": self.streams,
            "state": self.state,
            "messages": self.messages,
            "bytes": self.bytes,
            "last_message_us": self.last_message_us,
            "connected_since_us": self.connected_since_us,
            "connects": self.connects,
            "reconnects": max(0, self.connects - 1),
            "last_error": self.last_error,
        }


# --- the registry ------------------------------------------------------------------------------


@dataclass
class StatsRegistry:
    instance: str
    started_us: int = field(default_factory=now_us)
    counters: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    gauges: dict[str, float] = field(default_factory=dict)
    connections: dict[str, ConnectionStats] = field(default_factory=dict)
    # (venue, symbol) -> receive time of the last event, microseconds
    last_event_us: dict[tuple[str, str], int] = field(default_factory=dict)
    lag: WindowedHistogram = field(default_factory=WindowedHistogram)  # receive - exchange
    stored_latency: WindowedHistogram = field(default_factory=WindowedHistogram)  # stored - exchange
    # Current and recently resolved alerts, in the shape the stats socket and console show; written
    # by the alert engine's task (ingestd.alerts.run_alerts).
    alerts: list[dict] = field(default_factory=list)
    _queues: dict[str, Callable[[], tuple[int, int]]] = field(default_factory=dict)
    _heartbeats: dict[str, float] = field(default_factory=dict)

    def incr(self, name: str, n: int = 1) -> None:
        self.counters[name] += n

    def set_gauge(self, name: str, value: float) -> None:
        self.gauges[name] = value

    def connection(self, conn_id: str) -> ConnectionStats:
        c = self.connections.get(conn_id)
        if c is None:
            c = self.connections[conn_id] = ConnectionStats(conn_id)
        return c

    def forget_connection(self, conn_id: str) -> None:
        self.connections.pop(conn_id, None)

    def watch_queue(self, name: str, probe: Callable[[], tuple[int, int]]) -> None:
        """Register a probe returning (items buffered, capacity) for a bounded queue."""
        self._queues[name] = probe

    def heartbeat(self, component: str) -> None:
        """A supervised component proves it is making progress (read by the systemd watchdog)."""
        self._heartbeats[component] = time.monotonic()

    def heartbeat_ages(self) -> dict[str, float]:
        now = time.monotonic()
        return {k: now - v for k, v in self._heartbeats.items()}

    def queue_depths(self) -> dict[str, dict[str, int]]:
        out = {}
        for name, probe in self._queues.items():
            used, cap = probe()
            out[name] = {"used": used, "capacity": cap}
        return out

    def snapshot(self) -> dict:
        """A JSON-able picture of everything; the one read API for every consumer."""
        return {
            "instance": self.instance,
            "started_us": self.started_us,
            "now_us": now_us(),
            "counters": dict(self.counters),
            "gauges": dict(self.gauges),
            "connections": [c.as_dict() for c in self.connections.values()],
            "symbols": {f"{v}:{s}": t for (v, s), t in self.last_event_us.items()},
            "lag": self.lag.summary(),
            "stored_latency": self.stored_latency.summary(),
            "queues": self.queue_depths(),
            "heartbeat_age_s": self.heartbeat_ages(),
            "alerts": list(self.alerts),
        }
