"""What the console knows about each instance, derived from its stats snapshots. No UI, no I/O.

Everything shown is computed from `StatsRegistry.snapshot()` as the daemon sent it; ages are
relative to the snapshot's own `now_us`, so a console on another clock (or a recorded snapshot)
shows the same thing the daemon would.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

RATE_HISTORY = 120  # samples kept per instance for the sparklines
ALERT_HISTORY = 200

UP, CONNECTING, GONE = "up", "connecting", "gone"
# What a daemon says of itself (snapshot "state", from ingestd.controls) when it is not simply running.
STARTING, PAUSED, DRAINING = "starting", "paused", "draining"
DAEMON_STATES = (STARTING, PAUSED, DRAINING)

SPARK_BARS = "▁▂▃▄▅▆▇█"


def instance_name_from_path(path: Path) -> str:
    """/run/ingestd/binance/stats.sock -> binance; /tmp/x/okx.sock -> okx."""
    return path.parent.name if path.stem == "stats" and path.parent.name else path.stem


@dataclass
class Sink:
    name: str
    rows_written: int = 0
    write_errors: int = 0
    queue_used: int | None = None
    queue_capacity: int | None = None
    spool_bytes: float | None = None


@dataclass
class Instance:
    path: Path
    name: str = ""
    state: str = CONNECTING
    reason: str = ""  # why it is gone (or the last protocol error)
    snapshot: dict[str, Any] | None = None
    rate: float | None = None  # messages received per second over the last interval
    rates: deque = field(default_factory=lambda: deque(maxlen=RATE_HISTORY))
    alert_history: dict[tuple[str, int, str], dict[str, Any]] = field(default_factory=dict)
    ever_up: bool = False

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not self.name:
            self.name = instance_name_from_path(self.path)

    @property
    def key(self) -> str:
        return str(self.path)

    # --- state changes ---

    def apply(self, snap: dict[str, Any]) -> None:
        """A new snapshot arrived."""
        prev = self.snapshot
        self.snapshot = snap
        self.state = UP
        self.ever_up = True
        self.reason = ""
        if isinstance(snap.get("instance"), str) and snap["instance"]:
            self.name = snap["instance"]
        if prev is not None and prev.get("started_us") != snap.get("started_us"):
            prev = None  # the daemon restarted: its counters started again
        if prev is not None:
            self.rate = message_rate(prev, snap)
            if self.rate is not None:
                self.rates.append(self.rate)
        for alert in alerts(snap):
            key = (alert_title(alert), _int(alert.get("since_us")), str(alert.get("state", "?")))
            self.alert_history[key] = alert
        while len(self.alert_history) > ALERT_HISTORY:
            self.alert_history.pop(next(iter(self.alert_history)))

    def lost(self, reason: str) -> None:
        """The connection failed or closed; the last snapshot is kept for the detail screen."""
        self.state = GONE
        self.reason = reason
        self.rate = None

    # --- derived views ---

    @property
    def shown_state(self) -> str:
        """The STATE column: the connection's (up, connecting, gone), or while up, what the daemon
        says when it is not simply running (starting, paused by the operator, draining at a stop)."""
        if self.state == UP:
            daemon = (self.snapshot or {}).get("state")
            if daemon in DAEMON_STATES:
                return daemon
        return self.state

    @property
    def connections(self) -> list[dict[str, Any]]:
        return list((self.snapshot or {}).get("connections") or [])

    def conns_up_total(self) -> tuple[int, int] | None:
        if self.snapshot is None:
            return None
        conns = self.connections
        up = sum(1 for c in conns if c.get("state") == "up")
        planned = sum(int(v) for k, v in gauges(self.snapshot).items()
                      if k.endswith(".connections_planned") and isinstance(v, (int, float)))
        return up, max(planned, len(conns))

    def lag_us(self) -> tuple[int | None, int | None]:
        lag = (self.snapshot or {}).get("lag") or {}
        return lag.get("p50_us"), lag.get("p99_us")

    def sinks(self) -> list[Sink]:
        return sinks(self.snapshot) if self.snapshot else []

    def spool_bytes(self) -> float | None:
        values = [s.spool_bytes for s in self.sinks() if s.spool_bytes is not None]
        return sum(values) if values else None

    def firing(self) -> list[dict[str, Any]]:
        return [a for a in alerts(self.snapshot) if a.get("state") == "firing"] if self.snapshot else []

    def symbols(self) -> list[tuple[str, float | None]]:
        """(symbol, seconds since its last event), stalest first."""
        snap = self.snapshot or {}
        now = snap.get("now_us") or 0
        out = []
        for name, t in (snap.get("symbols") or {}).items():
            out.append((name, (now - t) / 1e6 if t else None))
        out.sort(key=lambda x: (-(x[1] if x[1] is not None else float("inf")), x[0]))
        return out

    def uptime_s(self) -> float | None:
        snap = self.snapshot or {}
        if snap.get("now_us") and snap.get("started_us"):
            return (snap["now_us"] - snap["started_us"]) / 1e6
        return None


def _int(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def alert_title(alert: dict[str, Any]) -> str:
    """The rule name and its labels: `SinkWriteErrors sink=pg` (one rule fires once per label set)."""
    labels = alert.get("labels")
    text = str(alert.get("name", "?"))
    if isinstance(labels, dict) and labels:
        text += " " + " ".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return text


def alert_when(alert: dict[str, Any], now_us: int) -> str:
    """Firing: for how long; resolved: how long ago (at_us, else since_us)."""
    if not now_us:
        return "-"
    if alert.get("state") == "firing":
        since = _int(alert.get("since_us"))
        return f"for {fmt_age((now_us - since) / 1e6)}" if since else "-"
    at = _int(alert.get("at_us")) or _int(alert.get("since_us"))
    return f"{fmt_age((now_us - at) / 1e6)} ago" if at else "-"


def counters(snap: dict[str, Any]) -> dict[str, Any]:
    c = snap.get("counters")
    return c if isinstance(c, dict) else {}


def gauges(snap: dict[str, Any]) -> dict[str, Any]:
    g = snap.get("gauges")
    return g if isinstance(g, dict) else {}


def alerts(snap: dict[str, Any] | None) -> list[dict[str, Any]]:
    a = (snap or {}).get("alerts")
    return [x for x in a if isinstance(x, dict)] if isinstance(a, list) else []


def message_rate(prev: dict[str, Any], snap: dict[str, Any]) -> float | None:
    """Messages per second received over the venue connections between two snapshots.

    Per connection id, so a connection that was replaced (and forgotten by the registry) does not
    make the total go backwards; a new id counts all its messages (it connected in between)."""
    dt = ((snap.get("now_us") or 0) - (prev.get("now_us") or 0)) / 1e6
    if dt <= 0:
        return None
    before = {c.get("id"): c.get("messages") or 0 for c in prev.get("connections") or []}
    delta = 0
    for c in snap.get("connections") or []:
        m = c.get("messages") or 0
        delta += max(0, m - before.get(c.get("id"), 0))
    return delta / dt


def _sink_key(key: str, head: str) -> tuple[str, str] | None:
    """"sink.<name>.<field>" -> (name, field); a sink name may itself contain dots (as in
    ingestd.metrics.split_key)."""
    first, _, rest = key.partition(".")
    if first != head:
        return None
    name, _, fld = rest.rpartition(".")
    return (name, fld) if name else None


def sinks(snap: dict[str, Any]) -> list[Sink]:
    """sink.<name>.rows_written / .write_errors counters, queues["sink.<name>"], gauge spool.<name>.bytes."""
    found: dict[str, Sink] = {}

    def sink(name: str) -> Sink:
        return found.setdefault(name, Sink(name))

    for key, value in counters(snap).items():
        parts = _sink_key(key, "sink")
        if parts is None:
            continue
        name, fld = parts
        if fld == "rows_written":
            sink(name).rows_written = int(value)
        elif fld == "write_errors":
            sink(name).write_errors = int(value)
        else:
            sink(name)
    for key, q in (snap.get("queues") or {}).items():
        if key.startswith("sink.") and len(key) > 5 and isinstance(q, dict):
            s = sink(key[5:])
            s.queue_used, s.queue_capacity = q.get("used"), q.get("capacity")
    for key, value in gauges(snap).items():
        parts = _sink_key(key, "spool")
        if parts is not None and parts[1] == "bytes":
            sink(parts[0]).spool_bytes = value
    return sorted(found.values(), key=lambda s: s.name)


# --- formatting ------------------------------------------------------------------------------------


def fmt_count(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div * 10 or (suffix != "k" and abs(n) >= div):
            v = n / div
            return f"{v:.1f}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{n:.0f}"


def fmt_rate(r: float | None) -> str:
    if r is None:
        return "-"
    if r < 10:
        return f"{r:.1f}"
    return fmt_count(r)


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    for div, suffix in ((1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")):
        if n >= div:
            v = n / div
            return f"{v:.1f}{suffix}" if v < 100 else f"{v:.0f}{suffix}"
    return f"{n:.0f}B"


def fmt_ms(us: float | None) -> str:
    if us is None:
        return "-"
    ms = us / 1000
    return f"{ms:.1f}" if ms < 10 else f"{ms:.0f}"


def fmt_lag(p50: float | None, p99: float | None) -> str:
    if p50 is None and p99 is None:
        return "-"
    return f"{fmt_ms(p50)}/{fmt_ms(p99)}"


def fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    s = int(s)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def sparkline_data(values: Iterable[float], width: int) -> list[float]:
    """Data for a Textual Sparkline `width` cells wide: one cell per sample, filling in from the
    right (the last `width` values, left-padded with zeros), on a scale that starts at zero.

    Sparkline scales from the data's minimum, which turns 100 +/- 5 msg/s into full-height swings;
    the extra trailing 0.0 pins the minimum at zero and stays invisible, because with width + 1
    values the last cell summarises (max) the last two."""
    if width <= 0:
        return list(values)
    vals = list(values)[-width:]
    return [0.0] * (width - len(vals)) + vals + [0.0]


def spark_text(values: Iterable[float], width: int = 8) -> str:
    """The last `width` values as block characters, scaled to their own maximum."""
    vals = list(values)[-width:]
    if not vals:
        return ""
    top = max(vals)
    if top <= 0:
        return SPARK_BARS[0] * len(vals)
    return "".join(SPARK_BARS[min(len(SPARK_BARS) - 1, int(v / top * (len(SPARK_BARS) - 1) + 0.5))] for v in vals)


# --- the instances table, shared by the TUI and --once ---------------------------------------------

COLUMNS = (  # key, label, width (content), right-aligned
    ("instance", "INSTANCE", 11, False),
    ("state", "STATE", 10, False),
    ("conns", "CONNS", 5, True),
    ("rate", "MSG/S", 6, True),
    ("trend", "TREND", 8, True),  # right-aligned: the newest sample is always in the same place
    ("lag", "LAG ms", 9, True),
    ("rows", "ROWS", 6, True),
    ("werr", "WERR", 4, True),
    ("spool", "SPOOL", 5, True),
    ("alerts", "ALRT", 4, True),
)


def row_values(inst: Instance) -> dict[str, str]:
    cu = inst.conns_up_total()
    sink_list = inst.sinks()
    firing = inst.firing()
    return {
        "instance": inst.name,
        "state": inst.shown_state,
        "conns": f"{cu[0]}/{cu[1]}" if cu else "-",
        "rate": fmt_rate(inst.rate) if inst.state == UP else "-",
        "trend": spark_text(inst.rates),
        "lag": fmt_lag(*inst.lag_us()) if inst.snapshot else "-",
        "rows": fmt_count(sum(s.rows_written for s in sink_list)) if sink_list else "-",
        "werr": fmt_count(sum(s.write_errors for s in sink_list)) if sink_list else "-",
        "spool": fmt_bytes(inst.spool_bytes()),
        "alerts": str(len(firing)) if firing else "-",
    }


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def plain_table(instances: Iterable[Instance]) -> str:
    """The instances table as plain text (for --once and scripts): fixed columns, one line each."""
    cols = [c for c in COLUMNS if c[0] != "trend"]

    def line(values: dict[str, str]) -> str:
        cells = []
        for key, _, width, right in cols:
            text = clip(values[key], width)
            cells.append(text.rjust(width) if right else text.ljust(width))
        return "  ".join(cells).rstrip()

    out = [line({key: label for key, label, _, _ in cols})]
    out += [line(row_values(inst)) for inst in instances]
    return "\n".join(out)
