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
