"""Alerts: rules over successive stats snapshots, raised and resolved once each, sent to a webhook.

    engine = AlertEngine("binance", AlertConfig(lag_p99_ms=500))
    transitions = engine.evaluate(stats.snapshot(), now=time.time())   # pure: no I/O, no clock
    engine.active(), engine.history()

    run_alerts(stats, engine, interval_s=5, webhook_url=..., min_severity="warning")   # the Trio task

The rules are the seeds' alerts (stream-ingest, ingestion-service, market-data runbooks), over what
the stats registry knows:

    name              severity  fires when                                           labels
    ----------------  --------  ---------------------------------------------------  ------
    WebSocketDown     critical  no WebSocket connection up, for ws_down_for_s (60)
    NoDataReceived    critical  no message for no_data_s (300) (since start, if none)
    NoDataWritten     critical  data arrived, but the sink committed nothing for      sink
                                no_data_written_s (300)
    SinkWriteErrors   error     write errors increased in the last                   sink
                                write_errors_window_s (60)
    HighErrorRate     warning   malformed frames > error_rate (1 %) of messages over
                                error_rate_window_s (300), at least
                                error_rate_min_messages of them, for error_rate_for_s
    MemoryHigh        warning   cgroup working set > memory_ratio (80 %) of the
                                limit (memory.max / MemoryMax=), for memory_for_s;
                                skipped when there is no limit
    HighLag           warning   receive lag p99 > lag_p99_ms (1000), for lag_for_s
    SpoolFilling      warning   spool.<sink>.fill_ratio > spool_fill_ratio (80 %)     sink
    CpuHigh           warning   process CPU > cpu_ratio (90 %) of one core over
                                cpu_window_s (60), for cpu_for_s (300)

A feed paused by the operator (the stats socket's `pause` verb; snapshot "state": "paused") has no
connection up and receives nothing on purpose: WebSocketDown and NoDataReceived do not fire while it
is paused (one already firing resolves, with "paused by operator" as the reason), and both clocks
start over at `resume`, so the venue gets the full ws_down_for_s / no_data_s to come back. That a
feed is paused is shown elsewhere, not as an alert: STATUS=, the console's STATE column, the
connections' state "paused", the <family>.paused gauge (ingestd_gauge in /metrics) and the log.

Each (rule, labels) pair is a small state machine: inactive -> pending (the condition holds) ->
firing (it held `for` seconds: one "firing" transition) -> resolved (the clearing condition held
`clear_for_s` seconds: one "resolved" transition) -> inactive. Threshold rules clear only below
threshold * clear_ratio, and a pending alert whose condition lapses starts over; so a value
hovering around a threshold produces no flood of transitions.

Severity order: info < warning < error < critical. The engine tracks every rule; `min_severity`
only filters what is POSTed to the webhook (the seed's ALERT_MIN_SEVERITY), every transition is logged.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import trio

from ingestd.backoff import Backoff
from ingestd.metrics import process_cpu_seconds, read_memory, split_key
from ingestd.stats import StatsRegistry

log = logging.getLogger("ingestd.alerts")

SEVERITIES = ("info", "warning", "error", "critical")
FIRING, RESOLVED = "firing", "resolved"

RULE_NAMES = (
    "WebSocketDown",
    "NoDataReceived",
    "NoDataWritten",
    "SinkWriteErrors",
    "HighErrorRate",
    "MemoryHigh",
    "HighLag",
    "SpoolFilling",
    "CpuHigh",
)


def severity_rank(severity: str) -> int:
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(f"unknown severity {severity!r}; expected one of {', '.join(SEVERITIES)}") from None


def at_least(severity: str, minimum: str) -> bool:
    return severity_rank(severity) >= severity_rank(minimum)


@dataclass(frozen=True)
class AlertConfig:
    """Thresholds and durations (seconds). Proposed config: the [alerts] table, same key names."""

    ws_down_for_s: float = 60.0
    no_data_s: float = 300.0
    no_data_written_s: float = 300.0
    write_errors_window_s: float = 60.0
    error_rate: float = 0.01
    error_rate_window_s: float = 300.0
    error_rate_min_messages: int = 100
    error_rate_for_s: float = 60.0
    memory_ratio: float = 0.80
    memory_for_s: float = 60.0
    memory_limit_bytes: int | None = None  # None: the cgroup's limit, if any
    lag_p99_ms: float = 1000.0
    lag_for_s: float = 300.0
    spool_fill_ratio: float = 0.80
    cpu_ratio: float = 0.90
    cpu_window_s: float = 60.0
    cpu_for_s: float = 300.0
    clear_for_s: float = 30.0  # a firing alert resolves once its condition stayed clear this long
    clear_ratio: float = 0.9  # threshold rules clear below threshold * clear_ratio
    disabled: frozenset[str] = frozenset()  # rule names to skip

    def __post_init__(self) -> None:
        unknown = set(self.disabled) - set(RULE_NAMES)
        if unknown:
            raise ValueError(f"unknown alert rules {sorted(unknown)}; known: {', '.join(RULE_NAMES)}")
        if not 0 < self.clear_ratio <= 1:
            raise ValueError("clear_ratio must be in (0, 1]")


@dataclass(frozen=True)
class Transition:
    instance: str
    name: str
    severity: str
    state: str  # "firing" | "resolved"
    labels: dict[str, str]
    message: str
    since: float  # Unix time the condition began
    at: float  # Unix time of this transition

    def as_dict(self) -> dict[str, Any]:
        """The registry/console form, like Alert.as_dict()."""
        return {
            "name": self.name,
            "severity": self.severity,
            "state": self.state,
            "labels": dict(self.labels),
            "message": self.message,
            "since_us": int(self.since * 1e6),
            "at_us": int(self.at * 1e6),
            "since": iso_time(self.since),
            "at": iso_time(self.at),
        }

    def as_payload(self) -> dict[str, Any]:
        """The webhook body. `text` makes it readable as-is by Slack/Mattermost-style webhooks."""
        subject = "".join(f" {k}={v}" for k, v in sorted(self.labels.items()))
        return {
            "instance": self.instance,
            "name": self.name,
            "severity": self.severity,
            "state": self.state,
            "labels": dict(self.labels),
            "message": self.message,
            "since": iso_time(self.since),
            "at": iso_time(self.at),
            "text": f"[{self.state.upper()}] {self.severity} {self.instance} {self.name}{subject}: {self.message}",
        }


@dataclass
class Alert:
    """An alert that is firing now."""

    name: str
    severity: str
    labels: dict[str, str]
    message: str
    since: float
    fired_at: float

    def as_dict(self) -> dict[str, Any]:
        """The registry/console form (`stats.alerts` entries, /alerts, /stats)."""
        return {
            "name": self.name,
            "severity": self.severity,
            "state": FIRING,
            "labels": dict(self.labels),
            "message": self.message,
            "since_us": int(self.since * 1e6),
            "at_us": int(self.fired_at * 1e6),
            "since": iso_time(self.since),
            "at": iso_time(self.fired_at),
        }


def iso_time(t: float) -> str:
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- rule findings -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """What a rule sees for one subject now. `active`: the raising condition holds; `clear`: the
    clearing condition holds (for threshold rules, below the lower threshold; else `not active`)."""

    labels: dict[str, str]
    active: bool
    message: str
    clear: bool | None = None
    since: float | None = None  # when the condition really began, if the rule knows better than "now"

    @property
    def clears(self) -> bool:
        return (not self.active) if self.clear is None else self.clear


@dataclass(frozen=True)
class Rule:
    name: str
    severity: str
    for_s: float
    check: Callable[["_Context"], Iterable[Finding]]


@dataclass
class _Sample:
    t: float
    counters: dict[str, int]
    cpu_s: float | None


class _Context:
    """One evaluation: the snapshot, the time, and windowed deltas against earlier samples."""

    def __init__(self, engine: "AlertEngine", snapshot: dict, now: float) -> None:
        self.engine = engine
        self.cfg = engine.config
        self.snap = snapshot
        self.now = now
        self.started = snapshot.get("started_us", 0) / 1e6
        self.counters: dict[str, int] = snapshot.get("counters", {})
        self.gauges: dict[str, float] = snapshot.get("gauges", {})
        self.process: dict = snapshot.get("process") or {}
        self.paused = snapshot.get("state") == "paused"  # by the operator: see the module docstring

    def baseline(self, window_s: float) -> _Sample | None:
        """The sample to diff against for "in the last window_s": the oldest one inside the window;
        all-zero counters when the daemon started inside the window (counters start at 0)."""
        start = self.now - window_s
        if self.started >= start:
            return _Sample(self.started, {}, 0.0 if self.process.get("cpu_seconds") is not None else None)
        for s in self.engine._samples:
            if s.t >= start:
                return s
        return None

    def delta(self, window_s: float, keys: Callable[[str], bool]) -> int | None:
        base = self.baseline(window_s)
        if base is None:
            return None
        return sum(v - base.counters.get(k, 0) for k, v in self.counters.items() if keys(k))

    def last_data_at(self) -> float | None:
        newest = 0
        for t in self.snap.get("symbols", {}).values():
            newest = max(newest, t)
        for c in self.snap.get("connections", []):
            newest = max(newest, c.get("last_message_us") or 0)
        return newest / 1e6 if newest else None

    def sinks(self) -> list[str]:
        names = set()
        for key in self.counters:
            parts = split_key(key)
            if parts and parts[0] == "sink":
                names.add(parts[1])
        for q in self.snap.get("queues", {}):
            if q.startswith("sink."):
                names.add(q[5:])
        return sorted(names)


# --- the rules ---------------------------------------------------------------------------------


def _fmt_s(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


PAUSED = "paused by operator: connections closed on purpose until `resume`"


def _ws_down(ctx: _Context) -> Iterable[Finding]:
    if ctx.paused:
        return [Finding({}, False, PAUSED)]
    conns = ctx.snap.get("connections", [])
    planned = int(sum(v for k, v in ctx.gauges.items() if k.endswith(".connections_planned")))
    if not conns and planned == 0:
        return []  # this feed has no WebSocket connections (or none yet)
    up = sum(1 for c in conns if c.get("state") == "up")
    total = max(planned, len(conns))
    if up:
        return [Finding({}, False, f"{up}/{total} WebSocket connections up")]
    errors = sorted({c.get("last_error") for c in conns if c.get("last_error")})
    detail = f"; last error: {errors[-1]}" if errors else ""
    return [Finding({}, True, f"no WebSocket connection up (0/{total}){detail}")]


def _no_data(ctx: _Context) -> Iterable[Finding]:
    if ctx.paused:
        return [Finding({}, False, PAUSED)]
    last = ctx.last_data_at()
    ref = last if last is not None else ctx.started
    resumed = ctx.engine._resumed_at
    since_resume = resumed is not None and resumed > ref
    if since_resume:
        ref = resumed  # the silence before a resume was the operator's
    age = ctx.now - ref
    if age >= ctx.cfg.no_data_s:
        if since_resume:
            msg = f"no data received in the {_fmt_s(age)} since the operator resumed the feed"
        elif last is None:
            msg = f"no data received in the {_fmt_s(age)} since start"
        else:
            msg = f"no data received for {_fmt_s(age)}"
        return [Finding({}, True, msg, since=ref)]
    return [Finding({}, False, f"last data {_fmt_s(age)} ago")]


def _no_data_written(ctx: _Context) -> Iterable[Finding]:
    last_data = ctx.last_data_at()
    out = []
    for sink in ctx.sinks():
        progress = ctx.engine._sink_progress.get(sink)
        if progress is None:
            continue
        _, last_write = progress
        stalled = ctx.now - last_write
        active = last_data is not None and last_data > last_write and stalled >= ctx.cfg.no_data_written_s
        msg = (f"sink {sink} committed nothing for {_fmt_s(stalled)} while data kept arriving" if active
               else f"sink {sink} last committed {_fmt_s(stalled)} ago")
        out.append(Finding({"sink": sink}, active, msg, since=last_write if active else None))
    return out


def _write_errors(ctx: _Context) -> Iterable[Finding]:
    window = ctx.cfg.write_errors_window_s
    out = []
    for sink in ctx.sinks():
        key = f"sink.{sink}.write_errors"
        n = ctx.delta(window, lambda k, key=key: k == key)
        if n is None:
            continue
        total = ctx.counters.get(key, 0)
        if n > 0:
            out.append(Finding({"sink": sink}, True,
                               f"{n} failed writes to sink {sink} in the last {_fmt_s(window)} ({total} in all)"))
        else:
            out.append(Finding({"sink": sink}, False, f"no failed write to sink {sink} in the last {_fmt_s(window)}"))
    return out


def _is_message_key(k: str) -> bool:
    parts = split_key(k)
    return bool(parts) and parts[0] == "feed" and (
        parts[2] in ("trades", "depth_updates", "duplicates_dropped") or parts[2].startswith("decode_errors.")
    )


def _is_decode_error_key(k: str) -> bool:
    parts = split_key(k)
    return bool(parts) and parts[0] == "feed" and parts[2].startswith("decode_errors.")


def _error_rate(ctx: _Context) -> Iterable[Finding]:
    cfg = ctx.cfg
    messages = ctx.delta(cfg.error_rate_window_s, _is_message_key)
    errors = ctx.delta(cfg.error_rate_window_s, _is_decode_error_key)
    if messages is None or errors is None:
        return []
    if messages < max(1, cfg.error_rate_min_messages):
        window = _fmt_s(cfg.error_rate_window_s)
        return [Finding({}, False, f"{messages} messages in the last {window}: too few to judge")]
    rate = errors / messages
    msg = f"{rate:.2%} of messages malformed in the last {_fmt_s(cfg.error_rate_window_s)} ({errors}/{messages})"
    return [Finding({}, rate > cfg.error_rate, msg, clear=rate <= cfg.error_rate * cfg.clear_ratio)]


def _memory(ctx: _Context) -> Iterable[Finding]:
    used = ctx.process.get("memory_working_set_bytes")
    if used is None:
        used = ctx.process.get("rss_bytes")
    limit = ctx.cfg.memory_limit_bytes or ctx.process.get("memory_limit_bytes")
    if not limit or used is None:
        return []
    ratio = used / limit
    msg = f"memory at {ratio:.0%} of the limit ({used / 2**20:.0f} of {limit / 2**20:.0f} MiB)"
    thr = ctx.cfg.memory_ratio
    return [Finding({}, ratio > thr, msg, clear=ratio <= thr * ctx.cfg.clear_ratio)]


def _lag(ctx: _Context) -> Iterable[Finding]:
    p99 = (ctx.snap.get("lag") or {}).get("p99_us")
    if p99 is None:
        return []
    thr_us = ctx.cfg.lag_p99_ms * 1000
    msg = f"receive lag p99 {p99 / 1000:.0f} ms (threshold {ctx.cfg.lag_p99_ms:g} ms)"
    return [Finding({}, p99 > thr_us, msg, clear=p99 <= thr_us * ctx.cfg.clear_ratio)]


def _spool(ctx: _Context) -> Iterable[Finding]:
    thr = ctx.cfg.spool_fill_ratio
    out = []
    for key, value in sorted(ctx.gauges.items()):
        parts = split_key(key)
        if not parts or parts[0] != "spool" or parts[2] != "fill_ratio":
            continue
        sink = parts[1]
        used = ctx.gauges.get(f"spool.{sink}.bytes")
        size = f" ({used / 2**20:.0f} MiB)" if used is not None else ""
        out.append(Finding({"sink": sink}, value > thr, f"spool of sink {sink} at {value:.0%}{size}",
                           clear=value <= thr * ctx.cfg.clear_ratio))
    return out


def _cpu(ctx: _Context) -> Iterable[Finding]:
    cpu = ctx.process.get("cpu_seconds")
    if cpu is None:
        return []
    base = ctx.baseline(ctx.cfg.cpu_window_s)
    if base is None or base.cpu_s is None or ctx.now - base.t < min(10.0, ctx.cfg.cpu_window_s / 2):
        return []
    ratio = (cpu - base.cpu_s) / (ctx.now - base.t)
    thr = ctx.cfg.cpu_ratio
    msg = f"CPU at {ratio:.0%} of one core over the last {_fmt_s(ctx.now - base.t)}"
    return [Finding({}, ratio > thr, msg, clear=ratio <= thr * ctx.cfg.clear_ratio)]


def default_rules(cfg: AlertConfig) -> list[Rule]:
    rules = [
        Rule("WebSocketDown", "critical", cfg.ws_down_for_s, _ws_down),
        Rule("NoDataReceived", "critical", 0.0, _no_data),
        Rule("NoDataWritten", "critical", 0.0, _no_data_written),
        Rule("SinkWriteErrors", "error", 0.0, _write_errors),
        Rule("HighErrorRate", "warning", cfg.error_rate_for_s, _error_rate),
        Rule("MemoryHigh", "warning", cfg.memory_for_s, _memory),
        Rule("HighLag", "warning", cfg.lag_for_s, _lag),
        Rule("SpoolFilling", "warning", 0.0, _spool),
        Rule("CpuHigh", "warning", cfg.cpu_for_s, _cpu),
    ]
    return [r for r in rules if r.name not in cfg.disabled]


# --- the engine --------------------------------------------------------------------------------


@dataclass
class _State:
    pending_since: float | None = None
    firing: Alert | None = None
    clear_since: float | None = None


class AlertEngine:
    """Pure alert logic: feed it snapshots and times, get transitions back. Not thread-safe; one
    task evaluates."""

    def __init__(self, instance: str, config: AlertConfig | None = None, *, rules: Sequence[Rule] | None = None,
                 history_size: int = 200) -> None:
        self.instance = instance
        self.config = config or AlertConfig()
        self.rules = list(rules) if rules is not None else default_rules(self.config)
        self._states: dict[tuple[str, tuple[tuple[str, str], ...]], _State] = {}
        self._history: deque[Transition] = deque(maxlen=history_size)
        self._samples: deque[_Sample] = deque()
        self._sink_progress: dict[str, tuple[int, float]] = {}  # sink -> (batches, when it last grew)
        self._paused = False  # the feed was paused by the operator at the last evaluation
        self._resumed_at: float | None = None  # when an evaluation first saw it running again
        windows = [self.config.write_errors_window_s, self.config.error_rate_window_s, self.config.cpu_window_s]
        self._keep_s = max(windows) + 1.0
        self._sample_every_s = max(0.0, min(1.0, min(windows) / 10))

    # --- reading ---

    def active(self) -> list[Alert]:
        """Firing alerts, most severe first."""
        alerts = [s.firing for s in self._states.values() if s.firing is not None]
        return sorted(alerts, key=lambda a: (-severity_rank(a.severity), a.since, a.name))

    def history(self) -> list[Transition]:
        """Recent transitions, oldest first."""
        return list(self._history)

    # --- evaluating ---

    def evaluate(self, snapshot: dict, now: float) -> list[Transition]:
        """Run every rule over `snapshot` at Unix time `now`; return the transitions (fired or resolved)
        that happened at this step. Each alert fires once and resolves once."""
        ctx = _Context(self, snapshot, now)
        self._track_sinks(ctx)
        if self._paused and not ctx.paused:
            self._resumed_at = now
        self._paused = ctx.paused
        transitions: list[Transition] = []
        for rule in self.rules:
            seen: set = set()
            for finding in rule.check(ctx):
                key = (rule.name, tuple(sorted(finding.labels.items())))
                seen.add(key)
                t = self._step(rule, key, finding, now)
                if t is not None:
                    transitions.append(t)
            # Subjects the rule no longer reports (a sink gone, a limit no longer known) count as clear.
            for key, state in list(self._states.items()):
                if key[0] == rule.name and key not in seen:
                    t = self._step(rule, key, Finding(dict(key[1]), False, "no longer reported"), now)
                    if t is not None:
                        transitions.append(t)
        self._remember(ctx)
        self._history.extend(transitions)
        return transitions

    def _step(self, rule: Rule, key, finding: Finding, now: float) -> Transition | None:
        state = self._states.get(key)
        if state is None:
            if not finding.active:
                return None
            state = self._states[key] = _State()
        if state.firing is None:
            if not finding.active:
                del self._states[key]  # a pending alert whose condition lapsed starts over
                return None
            if state.pending_since is None:
                state.pending_since = now
            if now - state.pending_since < rule.for_s:
                return None
            since = finding.since if finding.since is not None else state.pending_since
            state.firing = Alert(rule.name, rule.severity, dict(finding.labels), finding.message, since, now)
            return Transition(self.instance, rule.name, rule.severity, FIRING, dict(finding.labels),
                              finding.message, since, now)
        alert = state.firing
        if not finding.clears:
            state.clear_since = None
            if finding.active:
                alert.message = finding.message  # keep the current figures visible
            return None
        if state.clear_since is None:
            state.clear_since = now
        if now - state.clear_since < self.config.clear_for_s:
            return None
        del self._states[key]
        return Transition(self.instance, rule.name, rule.severity, RESOLVED, dict(alert.labels),
                          finding.message, alert.since, now)

    def _track_sinks(self, ctx: _Context) -> None:
        for sink in ctx.sinks():
            batches = ctx.counters.get(f"sink.{sink}.batches", 0)
            prev = self._sink_progress.get(sink)
            if prev is None:
                # Never written since start: count from the start. Otherwise we cannot know when it last
                # wrote, so assume now (no false alarm).
                self._sink_progress[sink] = (batches, ctx.started if batches == 0 else ctx.now)
            elif batches != prev[0]:
                self._sink_progress[sink] = (batches, ctx.now)

    def _remember(self, ctx: _Context) -> None:
        samples = self._samples
        if not samples or ctx.now - samples[-1].t >= self._sample_every_s:
            samples.append(_Sample(ctx.now, dict(ctx.counters), ctx.process.get("cpu_seconds")))
        # Keep one sample older than the longest window, so a full window always has a baseline.
        while len(samples) >= 2 and samples[1].t <= ctx.now - self._keep_s:
            samples.popleft()


# --- the Trio task -----------------------------------------------------------------------------


def process_sample(memory_limit_bytes: int | None = None) -> dict[str, Any]:
    """What the rules need beyond the stats registry: memory against the cgroup limit, CPU time."""
    mem = read_memory()
    return {
        "memory_working_set_bytes": mem.working_set_bytes,
        "memory_limit_bytes": memory_limit_bytes or mem.limit_bytes,
        "rss_bytes": mem.rss_bytes,
        "cpu_seconds": process_cpu_seconds(),
    }


def deliverable(transitions: Iterable[Transition], min_severity: str) -> list[Transition]:
    """The transitions at or above min_severity (what goes to the webhook)."""
    severity_rank(min_severity)
    return [t for t in transitions if at_least(t.severity, min_severity)]


_LOG_LEVEL = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR, "critical": logging.CRITICAL}


def log_transition(t: Transition) -> None:
    level = _LOG_LEVEL[t.severity] if t.state == FIRING else logging.INFO
    extra = {"alert": t.name, "severity": t.severity, "state": t.state, "since": iso_time(t.since), **t.labels}
    log.log(level, "alert %s %s: %s", t.name, t.state, t.message, extra=extra)


def alert_records(engine: AlertEngine, resolved: int = 20) -> list[dict[str, Any]]:
    """Firing alerts (state "firing"), then the last `resolved` resolutions (state "resolved"), newest
    first: the list for `stats.alerts`, /stats and /alerts. Each has name, severity, state, labels,
    message, since_us, at_us (and ISO-8601 since/at)."""
    firing = [a.as_dict() for a in engine.active()]
    done = [t.as_dict() for t in reversed(engine.history()) if t.state == RESOLVED][:resolved]
    return firing + done


def publish(stats: StatsRegistry, engine: AlertEngine) -> None:
    """Expose alerts on the registry as `stats.alerts` (for the stats socket and the console)."""
    stats.alerts = alert_records(engine)


async def run_alerts(
    stats: StatsRegistry,
    engine: AlertEngine,
    *,
    interval_s: float = 5.0,
    webhook_url: str | None = None,
    min_severity: str = "warning",
    webhook_timeout_s: float = 5.0,
    webhook_attempts: int = 4,
    webhook_retry_base_s: float = 1.0,
    queue_size: int = 100,
    sample: Callable[[], dict[str, Any]] | None = None,
    describe: Callable[[], dict[str, Any]] = dict,
    clock: Callable[[], float] = time.time,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Evaluate every interval_s until cancelled: log each transition once, keep `stats.alerts`
    current, and POST each deliverable transition once to webhook_url from a separate task (a slow or
    dead webhook never delays evaluation, let alone ingestion; when its queue is full, new
    transitions are logged and not sent)."""
    severity_rank(min_severity)
    if sample is None:
        limit = engine.config.memory_limit_bytes

        def sample() -> dict[str, Any]:
            return process_sample(limit)

    send, receive = trio.open_memory_channel[Transition](queue_size)
    async with trio.open_nursery() as nursery:
        if webhook_url:
            nursery.start_soon(_deliver_all, receive, webhook_url, webhook_timeout_s, webhook_attempts,
                               webhook_retry_base_s)
        task_status.started()
        failing = False
        while True:
            try:
                snapshot = stats.snapshot()
                snapshot.update(describe())  # the supervisor's run state: "paused" quiets two rules
                snapshot["process"] = sample()
                transitions = engine.evaluate(snapshot, clock())
            except Exception:  # a bug here must not take ingestion down with it
                if not failing:
                    log.exception("alert evaluation failed; retrying every interval (logged once)")
                failing = True
                await trio.sleep(interval_s)
                continue
            failing = False
            for t in transitions:
                log_transition(t)
            if webhook_url:
                for t in deliverable(transitions, min_severity):
                    try:
                        send.send_nowait(t)
                    except trio.WouldBlock:
                        log.error("alert webhook queue full; not sending", extra={"alert": t.name, "state": t.state})
            publish(stats, engine)
            await trio.sleep(interval_s)


async def _deliver_all(receive: trio.MemoryReceiveChannel[Transition], url: str, timeout_s: float, attempts: int,
                       retry_base_s: float) -> None:
    import httpx

    async with receive, httpx.AsyncClient(timeout=timeout_s) as client:
        async for t in receive:
            await post_transition(client, url, t, attempts=attempts, retry_base_s=retry_base_s)


async def post_transition(client, url: str, t: Transition, *, attempts: int = 4, retry_base_s: float = 1.0) -> bool:
    """POST one transition, retrying transport errors, 408, 429 and 5xx with capped, jittered backoff.
    Returns whether the webhook took it; failures are logged, never raised."""
    backoff = Backoff(retry_base_s, max(retry_base_s, 30.0))
    problem = ""
    for attempt in range(1, max(1, attempts) + 1):
        try:
            resp = await client.post(url, json=t.as_payload())
        except Exception as exc:  # transport errors, and a malformed URL (httpx.InvalidURL is no HTTPError)
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if 200 <= resp.status_code < 300:
                return True
            problem = f"HTTP {resp.status_code}"
            if resp.status_code < 500 and resp.status_code not in (408, 429):
                break  # the webhook refuses it; sending it again will not help
        if attempt < attempts:
            # Full jitter, but never less than a tenth of the base: a dead endpoint is not hammered.
            await trio.sleep(max(retry_base_s / 10, backoff.next_delay()))
    log.error("alert webhook failed; alert not delivered",
              extra={"alert": t.name, "state": t.state, "error": problem, "attempts": attempt})
    return False


def config_from_mapping(values: dict[str, Any]) -> AlertConfig:
    """An AlertConfig from a mapping of the same key names (e.g. the validated [alerts] table);
    unknown keys raise ValueError."""
    known = {f.name for f in dataclasses.fields(AlertConfig)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown alert settings: {', '.join(sorted(unknown))}")
    values = dict(values)
    if "disabled" in values:
        values["disabled"] = frozenset(values["disabled"])
    return AlertConfig(**values)


__all__ = [
    "AlertConfig", "AlertEngine", "Alert", "Transition", "Finding", "Rule", "RULE_NAMES", "SEVERITIES",
    "default_rules", "deliverable", "alert_records", "publish", "run_alerts", "post_transition",
    "process_sample", "config_from_mapping", "iso_time",
]
