"""The alert engine on hand-made snapshots and a fake clock: fire after `for`, resolve once, no flapping."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from ingestd.alerts import (
    FIRING,
    RESOLVED,
    AlertConfig,
    AlertEngine,
    Transition,
    alert_records,
    at_least,
    config_from_mapping,
    deliverable,
    post_transition,
    run_alerts,
)
from ingestd.stats import StatsRegistry

T0 = 1_800_000_000.0  # the fake clock's start, Unix seconds


def snap(now, *, started=T0, counters=None, gauges=None, conns=None, last_data=None, lag_p99_ms=None,
         process=None, queues=None):
    """A snapshot shaped like StatsRegistry.snapshot(). `conns`: list of states; `last_data`: Unix time."""
    conns = ["up"] if conns is None else conns
    last_us = int(last_data * 1e6) if last_data is not None else 0
    return {
        "instance": "binance",
        "started_us": int(started * 1e6),
        "now_us": int(now * 1e6),
        "counters": dict(counters or {}),
        "gauges": {"binance.connections_planned": len(conns), **(gauges or {})},
        "connections": [
            {"id": f"binance/{i}#1", "state": s, "streams": 2, "messages": 1, "last_message_us": last_us,
             "last_error": "" if s == "up" else "connection refused"}
            for i, s in enumerate(conns)
        ],
        "symbols": {"binance:BTCUSDT": last_us} if last_us else {},
        "lag": {"count": 10, "p50_us": 1000, "p99_us": None if lag_p99_ms is None else int(lag_p99_ms * 1000),
                "max_us": None},
        "stored_latency": {"count": 0, "p50_us": None, "p99_us": None, "max_us": None},
        "queues": queues if queues is not None else {"sink.local": {"used": 0, "capacity": 256}},
        "heartbeat_age_s": {},
        "process": process or {},
    }


def run(engine, steps):
    """steps: iterable of (now, snapshot); returns every transition with its time."""
    out = []
    for now, s in steps:
        out.extend(engine.evaluate(s, now))
    return out


def names(transitions):
    return [(t.name, t.state, round(t.at - T0)) for t in transitions]


def only(rule, **cfg):
    from ingestd.alerts import RULE_NAMES

    return AlertConfig(disabled=frozenset(n for n in RULE_NAMES if n != rule), **cfg)


# --- firing after `for`, resolving once ------------------------------------------------------------


def test_websocket_down_fires_after_for_and_resolves_once():
    engine = AlertEngine("binance", only("WebSocketDown", ws_down_for_s=60, clear_for_s=30))
    steps = []
    for s in range(0, 200):
        now = T0 + s
        state = "backoff" if 10 <= s < 100 else "up"
        steps.append((now, snap(now, conns=[state, state])))
    got = run(engine, steps)
    assert names(got) == [("WebSocketDown", FIRING, 70), ("WebSocketDown", RESOLVED, 130)]
    fired, resolved = got
    assert fired.severity == "critical" and fired.since == T0 + 10
    assert "no WebSocket connection up (0/2)" in fired.message and "connection refused" in fired.message
    assert resolved.since == fired.since  # the receiver can tell how long it lasted
    assert resolved.message == "2/2 WebSocket connections up"
    assert engine.active() == []
    assert [t.state for t in engine.history()] == [FIRING, RESOLVED]


def test_active_lists_a_firing_alert_until_it_resolves():
    engine = AlertEngine("binance", only("WebSocketDown", ws_down_for_s=5, clear_for_s=0))
    engine.evaluate(snap(T0, conns=["backoff"]), T0)
    assert engine.active() == []  # pending is not firing
    engine.evaluate(snap(T0 + 5, conns=["backoff"]), T0 + 5)
    [alert] = engine.active()
    assert alert.name == "WebSocketDown" and alert.as_dict()["since"] == "2027-01-15T08:00:00.000Z"
    assert alert_records(engine) == [{
        "name": "WebSocketDown", "severity": "critical", "state": "firing", "labels": {},
        "message": "no WebSocket connection up (0/1); last error: connection refused",
        "since_us": int(T0 * 1e6), "at_us": int((T0 + 5) * 1e6),
        "since": "2027-01-15T08:00:00.000Z", "at": "2027-01-15T08:00:05.000Z",
    }]
    engine.evaluate(snap(T0 + 6, conns=["up"]), T0 + 6)
    assert engine.active() == []
    [resolved] = alert_records(engine)  # the console's alert history sees the resolution too
    assert resolved["state"] == "resolved"
    assert (resolved["since_us"], resolved["at_us"]) == (int(T0 * 1e6), int((T0 + 6) * 1e6))


def test_a_condition_shorter_than_for_never_fires():
    engine = AlertEngine("binance", only("WebSocketDown", ws_down_for_s=60))
    steps = []
    for s in range(0, 600):  # down 50 s, up 10 s, over and over
        now = T0 + s
        steps.append((now, snap(now, conns=["backoff" if s % 60 < 50 else "up"])))
    assert run(engine, steps) == []


def test_no_websocket_rule_for_a_feed_without_connections():
    engine = AlertEngine("coingecko", only("WebSocketDown", ws_down_for_s=0))
    s = snap(T0, conns=[])
    s["gauges"] = {}
    assert engine.evaluate(s, T0) == [] and engine.evaluate(s, T0 + 100) == []


# --- hysteresis: no flapping --------------------------------------------------------------------


def test_value_oscillating_around_the_threshold_fires_and_resolves_once():
    engine = AlertEngine("binance", only("HighLag", lag_p99_ms=1000, lag_for_s=0, clear_for_s=30, clear_ratio=0.9))
    steps = []
    for s in range(0, 300):
        now = T0 + s
        if s < 200:
            p99 = 1050 if s % 2 else 950  # around the threshold, but never below 900
        else:
            p99 = 800
        steps.append((now, snap(now, lag_p99_ms=p99)))
    got = run(engine, steps)
    assert names(got) == [("HighLag", FIRING, 1), ("HighLag", RESOLVED, 230)]
    assert "receive lag p99 1050 ms" in got[0].message


def test_oscillation_shorter_than_for_never_fires():
    engine = AlertEngine("binance", only("HighLag", lag_p99_ms=1000, lag_for_s=300))
    steps = [(T0 + s, snap(T0 + s, lag_p99_ms=1500 if (s // 100) % 2 == 0 else 500)) for s in range(0, 2000, 5)]
    assert run(engine, steps) == []


def test_clearing_must_last_clear_for_or_the_alert_stays_firing():
    engine = AlertEngine("binance", only("HighLag", lag_p99_ms=1000, lag_for_s=0, clear_for_s=30))
    steps = [(T0, snap(T0, lag_p99_ms=2000))]
    for s in range(1, 600):  # 20 s below the clear threshold, then 1 s above: never 30 s clear
        steps.append((T0 + s, snap(T0 + s, lag_p99_ms=500 if s % 21 else 2000)))
    assert names(run(engine, steps)) == [("HighLag", FIRING, 0)]
    assert [a.name for a in engine.active()] == ["HighLag"]


def test_no_lag_figures_means_no_lag_alert():
    engine = AlertEngine("binance", only("HighLag", lag_for_s=0))
    assert engine.evaluate(snap(T0, lag_p99_ms=None), T0) == []


# --- the other rules ----------------------------------------------------------------------------


def test_no_data_received_since_last_data_and_back():
    engine = AlertEngine("binance", only("NoDataReceived", no_data_s=300, clear_for_s=10))
    last = T0 + 50
    got = run(engine, [(T0 + s, snap(T0 + s, last_data=min(T0 + s, last))) for s in range(0, 400, 5)])
    assert names(got) == [("NoDataReceived", FIRING, 350)]
    assert got[0].since == last and "no data received for 5.0 min" in got[0].message
    got = run(engine, [(T0 + s, snap(T0 + s, last_data=T0 + s)) for s in range(400, 430, 5)])
    assert names(got) == [("NoDataReceived", RESOLVED, 410)]


def test_no_data_at_all_since_start():
    engine = AlertEngine("binance", only("NoDataReceived", no_data_s=60))
    got = run(engine, [(T0 + s, snap(T0 + s, conns=["connecting"])) for s in range(0, 70, 5)])
    assert names(got) == [("NoDataReceived", FIRING, 60)]
    assert "since start" in got[0].message and got[0].since == T0


def test_sink_write_errors_fire_at_once_and_resolve_after_a_quiet_window():
    engine = AlertEngine("binance", only("SinkWriteErrors", write_errors_window_s=60, clear_for_s=30))
    steps = []
    for s in range(0, 300, 5):
        errors = 0 if s < 100 else min(s - 95, 20)  # errors grow from 100 s to 115 s, then stop
        counters = {"sink.pg.write_errors": errors, "sink.pg.batches": s, "sink.local.batches": s}
        steps.append((T0 + s, snap(T0 + s, counters=counters, queues={})))
    got = run(engine, steps)
    assert names(got) == [("SinkWriteErrors", FIRING, 100), ("SinkWriteErrors", RESOLVED, 205)]
    assert got[0].labels == {"sink": "pg"} and got[0].severity == "error"
    assert "failed writes to sink pg" in got[0].message


def test_no_data_written_only_while_data_arrives():
    engine = AlertEngine("binance", only("NoDataWritten", no_data_written_s=120, clear_for_s=0))
    steps = []
    for s in range(0, 400, 5):
        # the sink writes until 100 s; data keeps arriving until 300 s, then stops
        counters = {"sink.local.batches": min(s, 100)}
        steps.append((T0 + s, snap(T0 + s, counters=counters, last_data=T0 + min(s, 300))))
    got = run(engine, steps)
    assert names(got) == [("NoDataWritten", FIRING, 220)]
    assert got[0].labels == {"sink": "local"} and got[0].since == T0 + 100
    # no data at all: nothing to write, so no NoDataWritten (NoDataReceived covers it)
    engine = AlertEngine("binance", only("NoDataWritten", no_data_written_s=120))
    assert run(engine, [(T0 + s, snap(T0 + s)) for s in range(0, 400, 5)]) == []


def test_error_rate_needs_enough_messages():
    engine = AlertEngine("binance", only("HighErrorRate", error_rate=0.01, error_rate_window_s=60,
                                         error_rate_min_messages=100, error_rate_for_s=0, clear_for_s=0))
    few = {"binance.trades": 10, "binance.decode_errors.bad_json": 5}
    assert engine.evaluate(snap(T0 + 10, counters=few), T0 + 10) == []
    many = {"binance.trades": 1000, "binance.depth_updates": 500, "binance.decode_errors.bad_json": 30}
    [t] = engine.evaluate(snap(T0 + 20, counters=many), T0 + 20)
    assert t.name == "HighErrorRate" and t.severity == "warning" and "(30/1530)" in t.message


def test_memory_rule_needs_a_limit():
    engine = AlertEngine("binance", only("MemoryHigh", memory_for_s=0))
    no_limit = {"memory_working_set_bytes": 900, "memory_limit_bytes": None}
    assert engine.evaluate(snap(T0, process=no_limit), T0) == []
    high = {"memory_working_set_bytes": 850 * 2**20, "memory_limit_bytes": 1000 * 2**20}
    [t] = engine.evaluate(snap(T0 + 1, process=high), T0 + 1)
    assert t.name == "MemoryHigh" and "85% of the limit (850 of 1000 MiB)" in t.message
    # a configured limit wins over the cgroup's
    engine = AlertEngine("binance", only("MemoryHigh", memory_for_s=0, memory_limit_bytes=10_000 * 2**20))
    assert engine.evaluate(snap(T0, process=high), T0) == []


def test_spool_filling_per_sink():
    engine = AlertEngine("binance", only("SpoolFilling", clear_for_s=0))
    gauges = {"spool.pg.fill_ratio": 0.85, "spool.pg.bytes": 850 * 2**20, "spool.redis.fill_ratio": 0.1}
    [t] = engine.evaluate(snap(T0, gauges=gauges), T0)
    assert (t.name, t.labels, t.state) == ("SpoolFilling", {"sink": "pg"}, FIRING)
    assert "spool of sink pg at 85% (850 MiB)" in t.message
    gauges["spool.pg.fill_ratio"] = 0.75  # below 80 %, not below 72 %: still firing
    assert engine.evaluate(snap(T0 + 1, gauges=gauges), T0 + 1) == []
    gauges["spool.pg.fill_ratio"] = 0.5
    [t] = engine.evaluate(snap(T0 + 2, gauges=gauges), T0 + 2)
    assert (t.name, t.state) == ("SpoolFilling", RESOLVED)


def test_cpu_over_a_window():
    engine = AlertEngine("binance", only("CpuHigh", cpu_window_s=60, cpu_for_s=120, clear_for_s=0))
    steps = [(T0 + s, snap(T0 + s, started=T0 - 1000, process={"cpu_seconds": 0.95 * s})) for s in range(0, 300, 5)]
    got = run(engine, steps)
    assert names(got) == [("CpuHigh", FIRING, 130)]  # a baseline needs 10 s of samples, then `for` 120 s
    assert "CPU at 95% of one core" in got[0].message


def test_each_sink_is_its_own_alert():
    engine = AlertEngine("binance", only("SinkWriteErrors", clear_for_s=0))
    c = {"sink.a.write_errors": 1, "sink.b.write_errors": 1}
    got = engine.evaluate(snap(T0 + 1, counters=c, started=T0), T0 + 1)
    assert sorted(t.labels["sink"] for t in got) == ["a", "b"]
    assert len(engine.active()) == 2


# --- severity filtering, payloads, configuration --------------------------------------------------


def _t(severity, state=FIRING):
    return Transition("binance", "X", severity, state, {}, "m", T0, T0 + 1)


def test_min_severity_filters_delivery():
    ts = [_t("info"), _t("warning"), _t("error"), _t("critical", RESOLVED)]
    assert [t.severity for t in deliverable(ts, "warning")] == ["warning", "error", "critical"]
    assert [t.severity for t in deliverable(ts, "critical")] == ["critical"]
    assert len(deliverable(ts, "info")) == 4
    assert at_least("error", "warning") and not at_least("warning", "error")
    with pytest.raises(ValueError):
        deliverable(ts, "loud")


def test_payload_shape():
    t = Transition("binance-2", "SinkWriteErrors", "error", FIRING, {"sink": "pg"}, "3 failed writes", T0, T0 + 61.5)
    body = t.as_payload()
    assert body == {
        "instance": "binance-2",
        "name": "SinkWriteErrors",
        "severity": "error",
        "state": "firing",
        "labels": {"sink": "pg"},
        "message": "3 failed writes",
        "since": "2027-01-15T08:00:00.000Z",
        "at": "2027-01-15T08:01:01.500Z",
        "text": "[FIRING] error binance-2 SinkWriteErrors sink=pg: 3 failed writes",
    }
    json.dumps(body)


def test_config_from_mapping():
    cfg = config_from_mapping({"lag_p99_ms": 250, "disabled": ["CpuHigh"]})
    assert cfg.lag_p99_ms == 250 and cfg.disabled == frozenset({"CpuHigh"})
    assert "CpuHigh" not in [r.name for r in AlertEngine("x", cfg).rules]
    with pytest.raises(ValueError):
        config_from_mapping({"lag_p99": 1})
    with pytest.raises(ValueError):
        AlertConfig(disabled=frozenset({"Nope"}))


# --- delivery ---------------------------------------------------------------------------------------


@pytest.mark.trio
async def test_webhook_retries_server_errors_and_gives_up_on_refusals():
    calls = []
    replies = [500, 503, 200]

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        return httpx.Response(replies.pop(0) if replies else 400)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        ok = await post_transition(client, "http://hook/", _t("critical"), attempts=4, retry_base_s=0.01)
        assert ok and len(calls) == 3 and calls[0]["severity"] == "critical"
        calls.clear()
        ok = await post_transition(client, "http://hook/", _t("critical"), attempts=4, retry_base_s=0.01)
        assert not ok and len(calls) == 1  # a 400 is not retried


@pytest.mark.trio
async def test_run_alerts_publishes_on_the_registry_and_survives_a_dead_webhook(caplog):
    stats = StatsRegistry("binance")
    stats.gauges["binance.connections_planned"] = 1
    stats.connection("binance/0#1").state = "backoff"
    engine = AlertEngine("binance", only("WebSocketDown", ws_down_for_s=0))
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_alerts(
            stats, engine, interval_s=0.05, webhook_url="http://127.0.0.1:9/", min_severity="warning",
            webhook_attempts=2, webhook_retry_base_s=0.01, sample=dict, task_status=task_status))
        with trio.fail_after(5):
            while not any("alert webhook failed" in r.getMessage() for r in caplog.records):
                await trio.sleep(0.02)
        assert [a["name"] for a in stats.alerts] == ["WebSocketDown"]
        nursery.cancel_scope.cancel()
    firing_logs = [r for r in caplog.records if r.getMessage().startswith("alert WebSocketDown firing")]
    assert len(firing_logs) == 1  # logged once, not at every evaluation


@pytest.mark.trio
async def test_a_failing_evaluation_is_logged_once_and_does_not_end_the_task(caplog):
    stats = StatsRegistry("binance")
    calls = []

    def broken_sample():
        calls.append(1)
        raise OSError("no /proc here")

    engine = AlertEngine("binance")
    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: run_alerts(stats, engine, interval_s=0.01, sample=broken_sample,
                                                           task_status=task_status))
        with trio.fail_after(5):
            while len(calls) < 5:
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert sum("alert evaluation failed" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.trio
async def test_a_malformed_webhook_url_is_logged_not_raised(caplog):
    async with httpx.AsyncClient() as client:
        assert not await post_transition(client, "http://bad host:99999/", _t("error"), attempts=2, retry_base_s=0.01)
    assert any("alert webhook failed" in r.getMessage() for r in caplog.records)
