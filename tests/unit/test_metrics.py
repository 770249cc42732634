"""The Prometheus exposition of a stats registry: it parses, carries the seeds' names, and adds up."""

from __future__ import annotations

from pathlib import Path

from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from ingestd.alerts import AlertConfig, AlertEngine
from ingestd.metrics import (
    INSTANCE_LABEL,
    LATENCY_BOUNDS_US,
    MemoryUsage,
    build_registry,
    histogram_buckets,
    read_memory,
    render,
)
from ingestd.stats import Histogram, StatsRegistry

SEED_NAMES = {
    # polymarket whale ingestion
    "websocket_messages_received",
    "websocket_reconnections",
    "trade_processing_latency_seconds",
    # market-data ingestion runbook
    "ingestion_success",
    "ingestion_failure",
    "ingestion_duration_ms",
}


def busy_registry() -> StatsRegistry:
    s = StatsRegistry("binance-2")
    s.incr("binance.trades", 1000)
    s.incr("binance.duplicates_dropped", 7)
    s.incr("binance.depth_updates", 500)
    s.incr("binance.decode_errors.bad_json", 2)
    s.incr("binance.decode_errors.unknown_stream", 1)
    s.incr("binance.disconnects", 3)
    s.incr("binance.connect_errors", 4)
    s.incr("binance.gaps", 5)
    s.incr("binance.trades_backfilled", 40)
    s.incr("binance.rest.requests", 9)
    s.incr("binance.rest.http_429", 1)
    s.incr("sink.local.rows_written", 990)
    s.incr("sink.local.write_errors", 2)
    s.incr("sink.local.batches", 12)
    s.incr("sink.pg.rows_written", 900)
    s.incr("something.new", 1)
    s.incr("binance.rest.novelty", 6)
    s.incr("sink.pg.dedup_window_overflows", 2)
    s.incr("spool.pg.replayed_batches", 8)
    s.incr("stray", 1)
    s.set_gauge("binance.symbols", 20)
    s.set_gauge("binance.books_live", 19)
    s.set_gauge("binance.connections_planned", 2)
    s.set_gauge("spool.pg.bytes", 4096)
    s.set_gauge("spool.pg.fill_ratio", 0.25)
    s.set_gauge("odd_gauge", 3)
    s.set_gauge("sink.pg.state", 1)
    up = s.connection("binance/0#1")
    up.state, up.streams, up.last_message_us = "up", 40, 1_800_000_000_000_000
    s.connection("binance/1#2").state = "backoff"
    s.last_event_us[("binance", "BTCUSDT")] = 1_800_000_000_000_000
    s.last_event_us[("binance", "ETHUSDT")] = 1_799_999_999_000_000
    s.lag.record_many([800, 3_000, 40_000, 2_000_000])
    s.stored_latency.record_many([5_000, 20_000])
    s.watch_queue("sink.local", lambda: (3, 256))
    s.heartbeat("feed.binance")
    return s


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fam, **labels):
    return [s for s in fam.samples if all(s.labels.get(k) == v for k, v in labels.items())]


def value(fam, suffix="", **labels):
    [s] = [s for s in samples(fam, **labels) if s.name == fam.name + suffix]
    return s.value


def test_exposition_parses_and_has_the_seed_names():
    body, ctype = render(build_registry(busy_registry(), memory=lambda: MemoryUsage(100, 1000, 90)))
    assert ctype.startswith("text/plain; version=0.0.4")
    fams = families(body.decode())
    assert SEED_NAMES <= set(fams)
    for name, fam in fams.items():
        if not name.startswith("process_"):
            assert all(s.labels[INSTANCE_LABEL] == "binance-2" for s in fam.samples), name


def test_counter_mapping():
    fams = families(render(build_registry(busy_registry(), process=False, memory=None))[0].decode())
    ws = fams["websocket_messages_received"]
    assert ws.type == "counter"
    assert value(ws, "_total", venue="binance", type="trade") == 1000
    assert value(ws, "_total", type="duplicate") == 7
    assert value(ws, "_total", type="depth") == 500
    assert value(ws, "_total", type="malformed") == 3
    assert value(fams["websocket_reconnections"], "_total", venue="binance") == 3
    assert value(fams["ingestd_websocket_connect_errors"], "_total") == 4
    assert value(fams["ingestion_success"], "_total", sink="local") == 990
    assert value(fams["ingestion_success"], "_total", sink="pg") == 900
    assert value(fams["ingestion_failure"], "_total", sink="local") == 2
    assert value(fams["ingestd_sink_batches"], "_total", sink="local") == 12
    assert value(fams["ingestd_decode_errors"], "_total", kind="bad_json") == 2
    assert value(fams["ingestd_trade_gaps"], "_total") == 5
    assert value(fams["ingestd_trades_backfilled"], "_total") == 40
    assert value(fams["ingestd_rest_responses"], "_total", status="429") == 1
    # nothing is dropped: counters without a name of their own keep their registry key in a label
    assert value(fams["ingestd_feed_events"], "_total", venue="something", event="new") == 1
    assert value(fams["ingestd_feed_events"], "_total", venue="binance", event="rest.novelty") == 6
    assert value(fams["ingestd_sink_events"], "_total", sink="pg", event="dedup_window_overflows") == 2
    assert value(fams["ingestd_spool_events"], "_total", sink="pg", event="replayed_batches") == 8
    assert value(fams["ingestd_counter"], "_total", name="stray") == 1


def test_gauges_connections_queues():
    fams = families(render(build_registry(busy_registry(), process=False, memory=None))[0].decode())
    assert value(fams["ingestd_symbols"], venue="binance") == 20
    assert value(fams["ingestd_books_live"]) == 19
    assert value(fams["ingestd_spool_bytes"], sink="pg") == 4096
    assert value(fams["ingestd_spool_fill_ratio"], sink="pg") == 0.25
    assert value(fams["ingestd_gauge"], name="odd_gauge") == 3
    assert value(fams["ingestd_sink_state"], sink="pg") == 1
    conns = fams["ingestd_websocket_connections"]
    assert {s.labels["state"]: s.value for s in conns.samples} == {
        "new": 0, "connecting": 0, "up": 1, "backoff": 1, "closed": 0}
    assert value(fams["ingestd_websocket_connections_planned"]) == 2
    assert value(fams["ingestd_websocket_streams"]) == 40
    assert value(fams["ingestd_websocket_last_message_timestamp_seconds"]) == 1_800_000_000.0
    assert value(fams["ingestd_last_event_timestamp_seconds"], symbol="ETHUSDT") == 1_799_999_999.0
    assert value(fams["ingestd_queue_depth"], queue="sink.local") == 3
    assert value(fams["ingestd_queue_capacity"], queue="sink.local") == 256
    assert value(fams["ingestd_heartbeat_age_seconds"], component="feed.binance") < 5
    assert value(fams["ingestd_info"], version=__import__("ingestd").__version__) == 1


def test_latency_histograms_add_up():
    fams = families(render(build_registry(busy_registry(), process=False, memory=None))[0].decode())
    lag = fams["trade_processing_latency_seconds"]
    assert lag.type == "histogram"
    buckets = {s.labels["le"]: s.value for s in lag.samples if s.name.endswith("_bucket")}
    assert buckets["0.001"] == 1 and buckets["0.005"] == 2 and buckets["0.05"] == 3 and buckets["2.5"] == 4
    assert buckets["+Inf"] == value(lag, "_count") == 4
    assert abs(value(lag, "_sum") - 2.0438) < 1e-9  # seconds
    stored = fams["ingestion_duration_ms"]
    assert value(stored, "_count") == 2 and abs(value(stored, "_sum") - 25.0) < 1e-9  # milliseconds
    sb = {s.labels["le"]: s.value for s in stored.samples if s.name.endswith("_bucket")}
    assert sb["5.0"] == 1 and sb["10.0"] == 1 and sb["25.0"] == 2
    q = fams["ingestd_lag_seconds"]
    assert {s.labels["quantile"] for s in q.samples} == {"0.5", "0.99", "1"}


def test_histogram_buckets_are_cumulative_and_within_the_registry_resolution():
    h = Histogram()
    values = [0, 5, 999, 1_000, 1_100, 2_400, 2_600, 99_000, 101_000, 59_000_000, 70_000_000]
    h.record_many(values)
    cum = histogram_buckets(h)
    assert cum == sorted(cum) and cum[-1] == len(values)
    for bound, n in zip(LATENCY_BOUNDS_US, cum):
        # exact up to the ~6 % width of a registry bucket
        low = sum(v <= bound * 0.94 for v in values)
        high = sum(v <= bound * 1.06 for v in values)
        assert low <= n <= high, bound


def test_memory_and_alert_series():
    stats = busy_registry()
    engine = AlertEngine("binance-2", AlertConfig(ws_down_for_s=0))
    stats.connection("binance/0#1").state = "backoff"
    engine.evaluate(stats.snapshot(), 1_800_000_000.0)
    registry = build_registry(stats, alerts=engine.active, process=False,
                              memory=lambda: MemoryUsage(700 * 2**20, 1024 * 2**20, 600 * 2**20))
    fams = families(render(registry)[0].decode())
    assert value(fams["ingestd_memory_limit_bytes"]) == 1024 * 2**20
    assert value(fams["ingestd_memory_working_set_bytes"]) == 700 * 2**20
    firing = fams["ingestd_alert_firing"]
    assert value(firing, alertname="WebSocketDown", severity="critical", sink="") == 1


def test_openmetrics_when_asked():
    body, ctype = render(build_registry(busy_registry(), process=False, memory=None),
                         "application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text")
    names = {f.name for f in parse_openmetrics(body.decode())}
    assert {"websocket_messages_received", "ingestion_success", "trade_processing_latency_seconds"} <= names


def test_an_empty_registry_still_renders():
    fams = families(render(build_registry(StatsRegistry("x"), process=False, memory=None))[0].decode())
    assert "ingestd_info" in fams and value(fams["trade_processing_latency_seconds"], "_count") == 0


# --- cgroup memory ------------------------------------------------------------------------------


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_read_memory_cgroup_v2_takes_the_smallest_limit_up_the_tree(tmp_path):
    proc, root = tmp_path / "proc", tmp_path / "cg"
    _write(proc / "cgroup", "0::/system.slice/ingestd@binance.service\n")
    _write(proc / "statm", "1000 250 0 0 0 0 0\n")
    unit = root / "system.slice" / "ingestd@binance.service"
    _write(unit / "memory.max", "max\n")
    _write(unit / "memory.current", str(600 * 2**20))
    _write(unit / "memory.stat", f"anon 1\ninactive_file {100 * 2**20}\nactive_file 5\n")
    _write(root / "system.slice" / "memory.max", str(1024 * 2**20))
    mem = read_memory(root, proc)
    assert mem.limit_bytes == 1024 * 2**20
    assert mem.working_set_bytes == 500 * 2**20
    assert mem.rss_bytes and mem.rss_bytes > 0
    assert abs(mem.ratio - 500 / 1024) < 1e-9


def test_read_memory_cgroup_v1_and_no_limit(tmp_path):
    proc, root = tmp_path / "proc", tmp_path / "cg"
    _write(proc / "cgroup", "4:memory:/docker/abc\n0::/\n")
    own = root / "memory" / "docker" / "abc"
    _write(own / "memory.limit_in_bytes", "9223372036854771712\n")  # v1's "unlimited"
    _write(own / "memory.usage_in_bytes", "5000")
    _write(own / "memory.stat", "cache 10\ntotal_inactive_file 1000\n")
    mem = read_memory(root, proc)
    assert mem.limit_bytes is None and mem.working_set_bytes == 4000 and mem.ratio is None
    _write(own / "memory.limit_in_bytes", "8000")
    assert read_memory(root, proc).ratio == 0.5


def test_read_memory_without_cgroups_never_raises(tmp_path):
    mem = read_memory(tmp_path / "none", tmp_path / "none")
    assert mem == MemoryUsage(None, None, None)


# --- the shipped Prometheus rules and Grafana dashboard -------------------------------------------

import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "packaging" / "prometheus" / "ingestd-alerts.yml"
DASHBOARD = REPO / "packaging" / "grafana" / "ingestd-dashboard.json"
# On PATH, or unpacked into the venv by `scripts/bootstrap.sh --test`.
PROMTOOL = shutil.which("promtool") or shutil.which("promtool", path=str(Path(sys.executable).parent))

# Series as Prometheus stores them after a scrape: our labels plus the target's job and instance.
_T = 'job="ingestd",instance="h:8099",ingestd_instance="binance"'

PROMTOOL_TESTS = f"""
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'ingestd_websocket_connections{{{_T},venue="binance",state="up"}}'
        values: '1 1 0 0 0 0 0'
      - series: 'ingestd_websocket_connections{{{_T},venue="binance",state="backoff"}}'
        values: '0 0 1 1 1 1 1'
      - series: 'ingestd_websocket_connections_planned{{{_T},venue="binance"}}'
        values: '1x6'
    alert_rule_test:
      - eval_time: 2m
        alertname: WebSocketDown
        exp_alerts: []
      - eval_time: 4m
        alertname: WebSocketDown
        exp_alerts:
          - exp_labels: {{severity: critical, job: ingestd, instance: "h:8099", ingestd_instance: binance}}

  - interval: 1m
    input_series:
      # messages flow for 5 minutes, then stop; the sink keeps committing until minute 3
      - series: 'websocket_messages_received_total{{{_T},venue="binance",type="trade"}}'
        values: '0+100x5 500x10'
      - series: 'ingestd_sink_batches_total{{{_T},sink="local"}}'
        values: '0+10x3 30x12'
      - series: 'ingestion_failure_total{{{_T},sink="local"}}'
        values: '0 0 0 0 5 10 10 10 10 10 10 10 10 10 10 10'
    alert_rule_test:
      - eval_time: 4m
        alertname: NoDataReceived
        exp_alerts: []
      - eval_time: 11m
        alertname: NoDataReceived
        exp_alerts:
          - exp_labels: {{severity: critical, job: ingestd, instance: "h:8099", ingestd_instance: binance}}
      - eval_time: 5m
        alertname: SinkWriteErrors
        exp_alerts:
          - exp_labels: {{severity: error, job: ingestd, instance: "h:8099", ingestd_instance: binance,
                          sink: local}}
      - eval_time: 8m
        alertname: SinkWriteErrors
        exp_alerts: []
      - eval_time: 8m
        alertname: NoDataWritten
        exp_alerts:
          - exp_labels: {{severity: critical, job: ingestd, instance: "h:8099", ingestd_instance: binance,
                          sink: local}}
      - eval_time: 11m
        alertname: NoDataWritten
        exp_alerts: []

  - interval: 1m
    input_series:
      - series: 'ingestd_start_time_seconds{{{_T}}}'
        values: '0x10'
    alert_rule_test:
      - eval_time: 4m
        alertname: NoDataReceived
        exp_alerts: []
      - eval_time: 6m
        alertname: NoDataReceived
        exp_alerts:
          - exp_labels: {{severity: critical, job: ingestd, instance: "h:8099", ingestd_instance: binance}}

  - interval: 1m
    input_series:
      - series: 'websocket_messages_received_total{{{_T},venue="binance",type="trade"}}'
        values: '0+98x10'
      - series: 'websocket_messages_received_total{{{_T},venue="binance",type="malformed"}}'
        values: '0+2x10'
      - series: 'ingestd_memory_working_set_bytes{{{_T}}}'
        values: '850x10'
      - series: 'ingestd_memory_limit_bytes{{{_T}}}'
        values: '1000x10'
      - series: 'ingestd_spool_fill_ratio{{{_T},sink="pg"}}'
        values: '0.5 0.9x9'
      - series: 'ingestd_lag_seconds{{{_T},quantile="0.99"}}'
        values: '2x10'
    alert_rule_test:
      - eval_time: 7m
        alertname: HighErrorRate
        exp_alerts:
          - exp_labels: {{severity: warning, job: ingestd, instance: "h:8099", ingestd_instance: binance}}
      - eval_time: 3m
        alertname: MemoryHigh
        exp_alerts:
          - exp_labels: {{severity: warning, job: ingestd, instance: "h:8099", ingestd_instance: binance}}
      - eval_time: 0m
        alertname: SpoolFilling
        exp_alerts: []
      - eval_time: 1m
        alertname: SpoolFilling
        exp_alerts:
          - exp_labels: {{severity: warning, job: ingestd, instance: "h:8099", ingestd_instance: binance,
                          sink: pg}}
      - eval_time: 6m
        alertname: HighLag
        exp_alerts:
          - exp_labels: {{severity: warning, job: ingestd, instance: "h:8099", ingestd_instance: binance,
                          quantile: "0.99"}}
"""


def _without_annotations(rules_text: str) -> str:
    """promtool compares annotations too; the behaviour under test is expressions, `for` and labels."""
    out, skipping = [], None
    for line in rules_text.splitlines():
        indent = len(line) - len(line.lstrip())
        if skipping is not None and (not line.strip() or indent > skipping):
            continue
        skipping = None
        if line.strip() == "annotations:":
            skipping = indent
            continue
        out.append(line)
    return "\n".join(out) + "\n"


@pytest.mark.skipif(PROMTOOL is None, reason="promtool not found (scripts/bootstrap.sh --test unpacks it into .venv/bin)")
def test_prometheus_rules_are_valid_and_fire_as_the_engine_does(tmp_path):
    check = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    rules = tmp_path / "rules.yml"
    rules.write_text(_without_annotations(RULES.read_text()))
    tests = tmp_path / "tests.yml"
    tests.write_text(f"rule_files:\n  - {rules}\n" + PROMTOOL_TESTS)
    result = subprocess.run([PROMTOOL, "test", "rules", str(tests)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


_OUR_METRIC = re.compile(
    r"\b((?:ingestd|ingestion|websocket|trade_processing)_[a-z0-9_]+|process_[a-z_]+)\b"
)
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _exposed_names() -> set[str]:
    stats = busy_registry()
    engine = AlertEngine("binance-2", AlertConfig(ws_down_for_s=0))
    stats.connection("binance/0#1").state = "backoff"
    from ingestd.metrics import _FEED_COUNTERS, _FEED_GAUGES, _SINK_COUNTERS, _SPOOL_GAUGES

    for key in _FEED_COUNTERS:  # every name the collector can produce
        stats.incr(f"binance.{key}")
    for key in _SINK_COUNTERS:
        stats.incr(f"sink.pg.{key}")
    for key in _FEED_GAUGES:
        stats.set_gauge(f"binance.{key}", 1)
    for key in _SPOOL_GAUGES:
        stats.set_gauge(f"spool.pg.{key}", 1)
    engine.evaluate(stats.snapshot(), 1_800_000_000.0)
    registry = build_registry(stats, alerts=engine.active, memory=lambda: MemoryUsage(1, 2, 1))
    names = set()
    for fam in text_string_to_metric_families(render(registry)[0].decode()):
        names.add(fam.name)
        names.update(s.name for s in fam.samples)
    return names


def _unknown(referenced: set[str]) -> set[str]:
    exposed = _exposed_names() | {INSTANCE_LABEL}  # a label name, not a metric
    return {n for n in referenced
            if n not in exposed and not (n.endswith(_SUFFIXES) and n.rsplit("_", 1)[0] in exposed)}


def test_rules_use_only_metrics_we_expose():
    rules_text = RULES.read_text()
    exprs = "\n".join(re.findall(r"expr: (\|\n(?:\s{10,}.*\n)+|.*)", rules_text))
    referenced = set(_OUR_METRIC.findall(exprs))
    assert {"websocket_messages_received_total", "ingestion_failure_total"} <= referenced
    assert _unknown(referenced) == set()
    alert_names = set(re.findall(r"- alert: (\w+)", rules_text))
    from ingestd.alerts import RULE_NAMES

    assert set(RULE_NAMES) <= alert_names  # every engine rule has its Prometheus twin


def test_dashboard_is_importable_json_over_our_metrics():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and dash["schemaVersion"] >= 30
    panels = [p for p in dash["panels"] if p["type"] != "row"]
    assert len(panels) >= 8
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    assert exprs and all(t.get("datasource") for p in panels for t in p.get("targets", []))
    referenced = set(_OUR_METRIC.findall("\n".join(exprs)))
    assert {"websocket_messages_received_total", "ingestion_success_total", "ingestion_failure_total",
            "trade_processing_latency_seconds_bucket", "ingestd_websocket_connections",
            "ingestd_spool_fill_ratio"} <= referenced
    assert _unknown(referenced) == set()
    templating = {v["name"] for v in dash["templating"]["list"]}
    assert {"datasource", "ingestd_instance"} <= templating
