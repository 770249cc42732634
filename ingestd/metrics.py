"""Prometheus metrics: a custom collector over `StatsRegistry`, in a registry of its own.

Nothing here counts anything: every scrape reads `stats.snapshot()` (plus the registry's two latency
histograms, for their buckets) and translates it. So the hot path pays nothing for metrics, and
/metrics, /stats, the stats socket and the alert engine always agree.

Every series carries `ingestd_instance` (the systemd instance: "binance", "binance-2"). It is not
called `instance` because Prometheus attaches its own `instance` label (host:port) to every scraped
series and would rename ours to `exported_instance`.

Metric names (the seeds' names first, where their meaning carries over)

    registry key                          metric                                               labels
    ------------------------------------  ---------------------------------------------------  ----------------
    <venue>.trades                        websocket_messages_received_total  type="trade"      venue, type
    <venue>.duplicates_dropped            websocket_messages_received_total  type="duplicate"  venue, type
    <venue>.depth_updates                 websocket_messages_received_total  type="depth"      venue, type
    sum of <venue>.decode_errors.*        websocket_messages_received_total  type="malformed"  venue, type
    <venue>.messages.<type>               websocket_messages_received_total  type=<type>       venue, type
    <venue>.whale_trades_detected.<a>.<s> whale_trades_detected_total                          venue, address, side
    <venue>.active_whale_subscriptions    active_whale_subscriptions                           venue
    <venue>.disconnects                   websocket_reconnections_total (a live connection      venue
                                          was lost and reconnecting began)
    sink.<s>.rows_written                 ingestion_success_total (rows stored)                 sink
    sink.<s>.write_errors                 ingestion_failure_total (failed write attempts)      sink
    stats.stored_latency (all time)       ingestion_duration_ms histogram (exchange trade
                                          time -> committed by a sink)
    stats.lag (all time)                  trade_processing_latency_seconds histogram
                                          (exchange trade time -> received and decoded)
    <venue>.connect_errors                ingestd_websocket_connect_errors_total               venue
    <venue>.server_shutdowns              ingestd_websocket_server_shutdowns_total             venue
    <venue>.decode_errors.<kind>          ingestd_decode_errors_total                          venue, kind
    <venue>.gaps                          ingestd_trade_gaps_total                             venue
    <venue>.trades_backfilled             ingestd_trades_backfilled_total                      venue
    <venue>.trades_unrecoverable          ingestd_trades_unrecoverable_total                   venue
    <venue>.snapshots / .snapshots_stale  ingestd_book_snapshots_total / _stale_total          venue
    <venue>.unexpected_symbol             ingestd_unexpected_symbol_events_total               venue
    <venue>.rest.requests                 ingestd_rest_requests_total                          venue
    <venue>.rest.http_<code>              ingestd_rest_responses_total                         venue, status
    <venue>.rest.transport_errors         ingestd_rest_transport_errors_total                  venue
    <venue>.rest.throttled_waits          ingestd_rest_throttled_waits_total                   venue
    <venue>.rest.backfill_pages           ingestd_rest_backfill_pages_total                    venue
    sink.<s>.batches                      ingestd_sink_batches_total                           sink
    sink.<s>.duplicates_skipped           ingestd_sink_duplicates_skipped_total                sink
    sink.<s>.records_refused              ingestd_sink_records_refused_total                   sink
    any other <venue>.<event> counter     ingestd_feed_events_total                            venue, event
    any other sink.<s>.<event> counter    ingestd_sink_events_total                            sink, event
    spool.<s>.<event> counters            ingestd_spool_events_total                           sink, event
    any other counter                     ingestd_counter_total  (name = the registry key)     name
    <venue>.symbols                       ingestd_symbols                                      venue
    <venue>.books_live                    ingestd_books_live                                   venue
    <venue>.connections_planned           ingestd_websocket_connections_planned                venue
    <venue>.trades_missing                ingestd_trades_missing                               venue
    <venue>.rest.used_weight_1m           ingestd_rest_used_weight                             venue
    spool.<s>.bytes                       ingestd_spool_bytes                                  sink
    spool.<s>.fill_ratio                  ingestd_spool_fill_ratio (0..1)                      sink
    sink.<s>.state                        ingestd_sink_state (0 live, 1 spooling, 2 replaying) sink
    any other gauge                       ingestd_gauge  (name = the registry key)             name
    connections[].state                   ingestd_websocket_connections (count per state;      venue, state
                                          every state is always present, 0 included)
    connections[] in state "up"           ingestd_websocket_streams (streams subscribed)       venue
    max connections[].last_message_us     ingestd_websocket_last_message_timestamp_seconds     venue
    symbols {"venue:SYM": last_event_us}  ingestd_last_event_timestamp_seconds                 venue, symbol
    lag summary (recent window)           ingestd_lag_seconds  quantile="0.5"|"0.99"|"1"       quantile
    stored_latency summary (recent)       ingestd_stored_latency_seconds  (same quantiles)     quantile
    queues {name: {used, capacity}}       ingestd_queue_depth / ingestd_queue_capacity         queue
    heartbeat_age_s                       ingestd_heartbeat_age_seconds                        component
    started_us                            ingestd_start_time_seconds
    (constant)                            ingestd_info (value 1)                               version
    cgroup memory (see read_memory)       ingestd_memory_working_set_bytes,
                                          ingestd_memory_limit_bytes (only when limited)
    alert engine, when given              ingestd_alert_firing (1 per firing alert)            alertname,
                                                                                               severity, sink
    prometheus_client ProcessCollector    process_cpu_seconds_total, process_resident_memory_bytes, ...

"<venue>" is the first dotted part of a key other than sink/spool; a connection's venue is the part
of its id before "/" ("binance/0#3"). The latency histograms are exported from the registry's
log-linear buckets (each within ~6 % of its value) into the fixed `le` bounds below.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

import ingestd
from ingestd.stats import _NBUCKETS, Histogram, StatsRegistry, _bucket_value

log = logging.getLogger("ingestd.metrics")

INSTANCE_LABEL = "ingestd_instance"
CONNECTION_STATES = ("new", "connecting", "up", "backoff", "closed")
NON_VENUE_PREFIXES = frozenset({"sink", "spool", "process", "alerts", "http"})

# `le` bounds of the exported histograms, in microseconds (the registry's unit).
LATENCY_BOUNDS_US: tuple[int, ...] = (
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000, 60_000_000,
)


def _bound_index_table(bounds_us: Sequence[int]) -> list[int]:
    """For each registry bucket, the index of the first `le` bound holding its (representative) value;
    len(bounds_us) means +Inf."""
    table = []
    for i in range(_NBUCKETS):
        v = _bucket_value(i)
        j = 0
        while j < len(bounds_us) and v > bounds_us[j]:
            j += 1
        table.append(j)
    return table


_BOUND_INDEX = _bound_index_table(LATENCY_BOUNDS_US)


def histogram_buckets(hist: Histogram, bounds_us: Sequence[int] = LATENCY_BOUNDS_US) -> list[int]:
    """Cumulative counts at each bound, then +Inf (== hist.n)."""
    table = _BOUND_INDEX if bounds_us is LATENCY_BOUNDS_US else _bound_index_table(bounds_us)
    per = [0] * (len(bounds_us) + 1)
    for i, c in enumerate(list(hist.counts)):
        if c:
            per[table[i]] += c
    out, running = [], 0
    for c in per:
        running += c
        out.append(running)
    return out


# --- memory (cgroup) ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryUsage:
    working_set_bytes: int | None  # cgroup usage minus inactive file cache (kubelet/cAdvisor's figure)
    limit_bytes: int | None  # None: no limit found (then the memory alert is skipped)
    rss_bytes: int | None  # this process's resident set

    @property
    def ratio(self) -> float | None:
        used = self.working_set_bytes if self.working_set_bytes is not None else self.rss_bytes
        if not self.limit_bytes or used is None:
            return None
        return used / self.limit_bytes


_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded 2**63-1


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return None if value >= _UNLIMITED else value


def _stat_value(path: Path, keys: Iterable[str]) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    wanted = set(keys)
    for line in lines:
        key, _, value = line.partition(" ")
        if key in wanted:
            try:
                return int(value)
            except ValueError:
                return 0
    return 0


def _rss_bytes(proc_self: Path) -> int | None:
    try:
        pages = int((proc_self / "statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def read_memory(cgroup_root: Path = Path("/sys/fs/cgroup"), proc_self: Path = Path("/proc/self")) -> MemoryUsage:
    """Memory use against the effective limit: the smallest `memory.max` (cgroup v2, what systemd's
    MemoryMax= sets) or `memory.limit_in_bytes` (v1) of this process's cgroup and its ancestors.
    Never raises: what cannot be read is None."""
    rss = _rss_bytes(proc_self)
    try:
        lines = (proc_self / "cgroup").read_text().splitlines()
    except OSError:
        return MemoryUsage(None, None, rss)
    v2_path = v1_path = None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2_path = parts[2]
        elif "memory" in parts[1].split(","):
            v1_path = parts[2]
    candidates = []
    if v2_path is not None:
        candidates.append((cgroup_root, v2_path, "memory.max", "memory.current", "memory.stat", ("inactive_file",)))
    if v1_path is not None:
        candidates.append((cgroup_root / "memory", v1_path, "memory.limit_in_bytes", "memory.usage_in_bytes",
                           "memory.stat", ("total_inactive_file", "inactive_file")))
    for base, rel, limit_file, usage_file, stat_file, inactive_keys in candidates:
        own = base / rel.lstrip("/")
        usage = _read_int(own / usage_file)
        if usage is None and not (own / limit_file).exists():
            continue  # not this hierarchy
        limit = None
        d = own
        while True:
            value = _read_int(d / limit_file)
            if value is not None and (limit is None or value < limit):
                limit = value
            if d == base or base not in d.parents:
                break
            d = d.parent
        working = None
        if usage is not None:
            working = max(0, usage - _stat_value(own / stat_file, inactive_keys))
        return MemoryUsage(working, limit, rss)
    return MemoryUsage(None, None, rss)


# --- the collector -----------------------------------------------------------------------------

_WS_DOC = "WebSocket data messages received, by type (trade, duplicate, depth, malformed)"
_FEED_COUNTERS: dict[str, tuple[str, str, dict[str, str]]] = {
    "trades": ("websocket_messages_received", _WS_DOC, {"type": "trade"}),
    "duplicates_dropped": ("websocket_messages_received", _WS_DOC, {"type": "duplicate"}),
    "depth_updates": ("websocket_messages_received", _WS_DOC, {"type": "depth"}),
    "disconnects": ("websocket_reconnections", "Live WebSocket connections lost (each starts a reconnection)", {}),
    "connect_errors": ("ingestd_websocket_connect_errors", "WebSocket connection attempts that failed", {}),
    "server_shutdowns": ("ingestd_websocket_server_shutdowns", "serverShutdown notices from the venue", {}),
    "gaps": ("ingestd_trade_gaps", "Gaps detected in trade ids", {}),
    "trades_backfilled": ("ingestd_trades_backfilled", "Trades recovered over REST after a gap", {}),
    "trades_unrecoverable": ("ingestd_trades_unrecoverable", "Trades the venue could no longer provide", {}),
    "snapshots": ("ingestd_book_snapshots", "Order book REST snapshots applied", {}),
    "snapshots_stale": ("ingestd_book_snapshots_stale", "Order book snapshots older than the stream, refetched", {}),
    "unexpected_symbol": ("ingestd_unexpected_symbol_events", "Events for symbols not followed", {}),
    "rest.requests": ("ingestd_rest_requests", "REST requests sent", {}),
    "rest.transport_errors": ("ingestd_rest_transport_errors", "REST requests that failed below HTTP", {}),
    "rest.throttled_waits": ("ingestd_rest_throttled_waits", "Waits for request weight before a REST call", {}),
    "rest.backfill_pages": ("ingestd_rest_backfill_pages", "REST pages fetched to backfill trades", {}),
}
_SINK_COUNTERS: dict[str, tuple[str, str]] = {
    "rows_written": ("ingestion_success", "Rows stored by the sink"),
    "write_errors": ("ingestion_failure", "Sink write attempts that failed (each is retried)"),
    "batches": ("ingestd_sink_batches", "Batches committed by the sink"),
    "duplicates_skipped": ("ingestd_sink_duplicates_skipped", "Rows skipped as already stored"),
    "records_refused": ("ingestd_sink_records_refused", "Records the store refused (logged, not retried)"),
}
_FEED_GAUGES: dict[str, tuple[str, str]] = {
    "symbols": ("ingestd_symbols", "Symbols followed"),
    "books_live": ("ingestd_books_live", "Order books in sync with the venue"),
    "connections_planned": ("ingestd_websocket_connections_planned", "WebSocket connections the feed runs"),
    "trades_missing": ("ingestd_trades_missing", "Trade ids missing and not yet backfilled"),
    "rest.used_weight_1m": ("ingestd_rest_used_weight", "REST request weight used in the venue's window"),
    "active_whale_subscriptions": ("active_whale_subscriptions", "Whale wallets being watched"),
}
_SPOOL_GAUGES: dict[str, tuple[str, str]] = {
    "bytes": ("ingestd_spool_bytes", "Bytes held in the sink's disk spool"),
    "fill_ratio": ("ingestd_spool_fill_ratio", "Spool use as a share of spool_max_bytes (0..1)"),
}


def split_key(key: str) -> tuple[str, str, str] | None:
    """("feed", venue, rest) | ("sink", name, field) | ("spool", name, field), or None."""
    head, _, rest = key.partition(".")
    if not rest:
        return None
    if head in ("sink", "spool"):
        name, _, fld = rest.rpartition(".")
        return (head, name, fld) if name else None
    if head in NON_VENUE_PREFIXES:
        return None
    return ("feed", head, rest)


def venues_of(snapshot: dict) -> list[str]:
    """Venues present in a snapshot: key prefixes, connection ids and symbol keys."""
    found: set[str] = set()
    for key in list(snapshot.get("counters", {})) + list(snapshot.get("gauges", {})):
        parts = split_key(key)
        if parts and parts[0] == "feed":
            found.add(parts[1])
    for c in snapshot.get("connections", []):
        found.add(c["id"].split("/", 1)[0])
    return sorted(found)


class _Families:
    def __init__(self, base: dict[str, str]) -> None:
        self.base = base
        self.families: dict[str, Metric] = {}

    def _family(self, cls, name: str, doc: str, label_names: Sequence[str]) -> Metric:
        fam = self.families.get(name)
        if fam is None:
            fam = self.families[name] = cls(name, doc or name, labels=[*self.base, *label_names])
        return fam

    def counter(self, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        self._family(CounterMetricFamily, name, doc, list(labels)).add_metric(
            [*self.base.values(), *labels.values()], value
        )

    def gauge(self, name: str, doc: str, labels: dict[str, str], value: float) -> None:
        self._family(GaugeMetricFamily, name, doc, list(labels)).add_metric(
            [*self.base.values(), *labels.values()], value
        )

    def histogram(self, name: str, doc: str, hist: Histogram, scale: float) -> None:
        """scale: from microseconds to the metric's unit."""
        fam = HistogramMetricFamily(name, doc, labels=list(self.base))
        cumulative = histogram_buckets(hist)
        buckets = [(_le(b * scale), float(n)) for b, n in zip(LATENCY_BOUNDS_US, cumulative)]
        buckets.append(("+Inf", float(cumulative[-1])))
        fam.add_metric(list(self.base.values()), buckets, sum_value=hist.total * scale)
        self.families[name] = fam


def _le(x: float) -> str:
    return repr(round(x, 9)) if x != int(x) else f"{x:.1f}"


ActiveAlerts = Callable[[], Sequence[Any]]


class IngestdCollector(Collector):
    """Translates one StatsRegistry into metric families at every scrape."""

    def __init__(
        self,
        stats: StatsRegistry,
        *,
        alerts: ActiveAlerts | None = None,
        memory: Callable[[], MemoryUsage] | None = read_memory,
        per_symbol: bool = True,
    ) -> None:
        self.stats = stats
        self.alerts = alerts
        self.memory = memory
        self.per_symbol = per_symbol

    def collect(self) -> Iterator[Metric]:
        snap = self.stats.snapshot()
        out = _Families({INSTANCE_LABEL: snap["instance"]})
        out.gauge("ingestd_info", "ingestd build information", {"version": ingestd.__version__}, 1)
        out.gauge("ingestd_start_time_seconds", "When the daemon started, Unix time", {}, snap["started_us"] / 1e6)
        self._counters(out, snap)
        self._gauges(out, snap)
        self._connections(out, snap)
        if self.per_symbol:
            for key, ts in sorted(snap["symbols"].items()):
                venue, _, symbol = key.partition(":")
                out.gauge("ingestd_last_event_timestamp_seconds", "When the symbol's last trade was received",
                          {"venue": venue, "symbol": symbol}, ts / 1e6)
        self._latency(out, snap)
        for name, q in sorted(snap["queues"].items()):
            out.gauge("ingestd_queue_depth", "Items buffered in a bounded queue", {"queue": name}, q["used"])
            out.gauge("ingestd_queue_capacity", "Capacity of a bounded queue", {"queue": name}, q["capacity"])
        for comp, age in sorted(snap["heartbeat_age_s"].items()):
            out.gauge("ingestd_heartbeat_age_seconds", "Seconds since a component last proved progress",
                      {"component": comp}, age)
        if self.memory is not None:
            mem = self.memory()
            if mem.working_set_bytes is not None:
                out.gauge("ingestd_memory_working_set_bytes", "cgroup memory in use minus inactive file cache", {},
                          mem.working_set_bytes)
            if mem.limit_bytes is not None:
                out.gauge("ingestd_memory_limit_bytes", "Effective cgroup memory limit (MemoryMax=)", {},
                          mem.limit_bytes)
        if self.alerts is not None:
            for a in self.alerts():
                out.gauge("ingestd_alert_firing", "Alerts the daemon's own engine has firing",
                          {"alertname": a.name, "severity": a.severity, "sink": a.labels.get("sink", "")}, 1)
        return iter(out.families.values())

    @staticmethod
    def _counters(out: _Families, snap: dict) -> None:
        malformed: dict[str, int] = {}
        for key, value in sorted(snap["counters"].items()):
            parts = split_key(key)
            if parts is None:
                out.counter("ingestd_counter", "Other registry counters", {"name": key}, value)
                continue
            kind, who, fld = parts
            if kind == "feed":
                if fld.startswith("decode_errors."):
                    malformed[who] = malformed.get(who, 0) + value
                    out.counter("ingestd_decode_errors", "Frames that could not be decoded, by problem",
                                {"venue": who, "kind": fld.removeprefix("decode_errors.")}, value)
                    continue
                if fld.startswith("rest.http_"):
                    out.counter("ingestd_rest_responses", "REST responses by HTTP status",
                                {"venue": who, "status": fld.removeprefix("rest.http_")}, value)
                    continue
                if fld.startswith("messages."):
                    out.counter("websocket_messages_received", _WS_DOC,
                                {"venue": who, "type": fld.removeprefix("messages.")}, value)
                    continue
                if fld.startswith("whale_trades_detected."):
                    address, _, side = fld.removeprefix("whale_trades_detected.").rpartition(".")
                    out.counter("whale_trades_detected", "Trades of watched whale wallets detected",
                                {"venue": who, "address": address, "side": side}, value)
                    continue
                spec = _FEED_COUNTERS.get(fld)
                if spec is not None:
                    name, doc, extra = spec
                    out.counter(name, doc, {"venue": who, **extra}, value)
                else:
                    out.counter("ingestd_feed_events", "Other feed counters", {"venue": who, "event": fld}, value)
            elif kind == "sink":
                spec2 = _SINK_COUNTERS.get(fld)
                if spec2 is not None:
                    out.counter(spec2[0], spec2[1], {"sink": who}, value)
                else:
                    out.counter("ingestd_sink_events", "Other sink counters", {"sink": who, "event": fld}, value)
            else:
                out.counter("ingestd_spool_events", "Spool counters", {"sink": who, "event": fld}, value)
        for venue, n in sorted(malformed.items()):
            out.counter("websocket_messages_received", _WS_DOC,
                        {"venue": venue, "type": "malformed"}, n)

    @staticmethod
    def _gauges(out: _Families, snap: dict) -> None:
        for key, value in sorted(snap["gauges"].items()):
            parts = split_key(key)
            spec = None
            if parts is not None:
                kind, who, fld = parts
                if kind == "feed" and fld in _FEED_GAUGES:
                    spec, labels = _FEED_GAUGES[fld], {"venue": who}
                elif kind == "spool" and fld in _SPOOL_GAUGES:
                    spec, labels = _SPOOL_GAUGES[fld], {"sink": who}
                elif kind == "sink" and fld == "state":
                    spec, labels = ("ingestd_sink_state", "Sink runner state: 0 live, 1 spooling, 2 replaying"), {
                        "sink": who}
            if spec is None:
                out.gauge("ingestd_gauge", "Other registry gauges", {"name": key}, value)
            else:
                out.gauge(spec[0], spec[1], labels, value)

    @staticmethod
    def _connections(out: _Families, snap: dict) -> None:
        by_venue: dict[str, dict[str, int]] = {}
        streams: dict[str, int] = {}
        last: dict[str, int] = {}
        for v in venues_of(snap):
            if f"{v}.connections_planned" in snap["gauges"] or any(
                c["id"].split("/", 1)[0] == v for c in snap["connections"]
            ):
                by_venue[v] = dict.fromkeys(CONNECTION_STATES, 0)
                streams[v] = 0
        for c in snap["connections"]:
            v = c["id"].split("/", 1)[0]
            states = by_venue.setdefault(v, dict.fromkeys(CONNECTION_STATES, 0))
            states[c["state"]] = states.get(c["state"], 0) + 1
            if c["state"] == "up":
                streams[v] = streams.get(v, 0) + c["streams"]
            if c["last_message_us"]:
                last[v] = max(last.get(v, 0), c["last_message_us"])
        for v, states in sorted(by_venue.items()):
            for state, n in states.items():
                out.gauge("ingestd_websocket_connections", "WebSocket connections by state",
                          {"venue": v, "state": state}, n)
        for v, n in sorted(streams.items()):
            out.gauge("ingestd_websocket_streams", "Streams subscribed on connections that are up", {"venue": v}, n)
        for v, us in sorted(last.items()):
            out.gauge("ingestd_websocket_last_message_timestamp_seconds",
                      "When the last WebSocket message was received, Unix time", {"venue": v}, us / 1e6)

    def _latency(self, out: _Families, snap: dict) -> None:
        out.histogram("trade_processing_latency_seconds",
                      "Exchange trade time to received and decoded by ingestd, seconds",
                      self.stats.lag.all_time, 1e-6)
        out.histogram("ingestion_duration_ms", "Exchange trade time to committed by a sink, milliseconds",
                      self.stats.stored_latency.all_time, 1e-3)
        for metric, summary, doc in (
            ("ingestd_lag_seconds", snap["lag"], "Receive lag over the recent window (30-60 s)"),
            ("ingestd_stored_latency_seconds", snap["stored_latency"], "Stored latency over the recent window"),
        ):
            for q, k in (("0.5", "p50_us"), ("0.99", "p99_us"), ("1", "max_us")):
                if summary.get(k) is not None:
                    out.gauge(metric, doc, {"quantile": q}, summary[k] / 1e6)


def build_registry(
    stats: StatsRegistry,
    *,
    alerts: ActiveAlerts | None = None,
    process: bool = True,
    memory: Callable[[], MemoryUsage] | None = read_memory,
    per_symbol: bool = True,
) -> CollectorRegistry:
    """A registry of its own (never the global one): ingestd's collector plus, on Linux, process_*."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(IngestdCollector(stats, alerts=alerts, memory=memory, per_symbol=per_symbol))
    if process:
        ProcessCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition body and its content type; OpenMetrics when the scraper asks for it."""
    encoder, content_type = choose_encoder(accept or "")
    return encoder(registry), content_type


def process_cpu_seconds() -> float:
    """CPU time of this process (all threads), seconds."""
    return time.process_time()
