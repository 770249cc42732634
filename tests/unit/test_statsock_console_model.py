"""What ingestd-console derives from stats-socket snapshots: rates, sinks, alerts, formatting."""

from pathlib import Path

from ingestd_console.client import discover
from ingestd_console.model import (
    GONE,
    UP,
    Instance,
    fmt_age,
    fmt_bytes,
    fmt_count,
    fmt_lag,
    instance_name_from_path,
    message_rate,
    plain_table,
    sinks,
    spark_text,
    sparkline_data,
)


def snap(now_s, conns, started_us=1, **extra):
    return {"instance": "binance", "started_us": started_us, "now_us": int(now_s * 1e6),
            "connections": [{"id": i, "messages": m, "state": "up"} for i, m in conns.items()], **extra}


def test_rate_survives_a_replaced_connection():
    a = snap(10, {"c1": 1000})
    b = snap(11, {"c2": 50})  # c1 replaced (forgotten by the registry), c2 new since
    assert message_rate(a, b) == 50.0
    c = snap(13, {"c2": 450})
    assert message_rate(b, c) == 200.0
    assert message_rate(c, c) is None  # no time passed


def test_instance_rates_reset_when_the_daemon_restarts():
    inst = Instance(Path("/run/ingestd/binance/stats.sock"))
    assert inst.name == "binance"
    inst.apply(snap(10, {"c": 100}))
    assert inst.rate is None and inst.state == UP
    inst.apply(snap(11, {"c": 300}))
    assert inst.rate == 200.0
    inst.apply(snap(12, {"c": 10}, started_us=2))  # a new process: no rate from the old counters
    assert inst.rate == 200.0 and list(inst.rates) == [200.0]
    inst.lost("refused")
    assert inst.state == GONE and inst.rate is None and inst.snapshot is not None


def test_sinks_and_spool():
    s = {"counters": {"sink.local.rows_written": 10, "sink.local.write_errors": 2, "sink.pg.rows_written": 5,
                      "binance.trades": 99},
         "gauges": {"spool.pg.bytes": 2048.0, "binance.symbols": 3},
         "queues": {"sink.local": {"used": 1, "capacity": 256}, "binance.inbox": {"used": 0, "capacity": 64}}}
    local, pg = sinks(s)
    assert (local.name, local.rows_written, local.write_errors, local.queue_used, local.spool_bytes) == \
        ("local", 10, 2, 1, None)
    assert (pg.name, pg.rows_written, pg.spool_bytes) == ("pg", 5, 2048.0)


def test_alerts_history_and_firing():
    inst = Instance(Path("/x/stats.sock"))
    firing = {"name": "stale", "severity": "critical", "state": "firing", "since_us": 5, "message": "m"}
    inst.apply(snap(1, {}, alerts=[firing]))
    assert inst.firing() == [firing]
    inst.apply(snap(2, {}, alerts=[{**firing, "state": "resolved", "since_us": 9}]))
    assert inst.firing() == []
    assert [k[2] for k in inst.alert_history] == ["firing", "resolved"]
    inst.apply(snap(3, {}, alerts="not a list"))  # unknown shapes are skipped, not fatal
    assert inst.firing() == []


def test_conns_up_total_uses_the_planned_gauge():
    inst = Instance(Path("/x/stats.sock"))
    inst.apply(snap(1, {"a": 1}, gauges={"binance.connections_planned": 3}))
    assert inst.conns_up_total() == (1, 3)


def test_formatting():
    assert [fmt_count(n) for n in (0, 9999, 12345, 1_500_000, None)] == ["0", "9999", "12.3k", "1.5M", "-"]
    assert fmt_bytes(1536) == "1.5K" and fmt_bytes(None) == "-"
    assert fmt_lag(800, 15300) == "0.8/15" and fmt_lag(None, None) == "-"
    assert [fmt_age(s) for s in (0.25, 42, 125, 7300, None)] == ["0.2s", "42s", "2m05s", "2h01m", "never"]
    assert spark_text([0, 5, 10]) == "▁▅█" and spark_text([]) == ""


def test_sparkline_data_fills_from_the_right_on_a_zero_scale():
    assert sparkline_data([5.0, 7.0], 4) == [0.0, 0.0, 5.0, 7.0, 0.0]
    assert sparkline_data(range(10), 3) == [7, 8, 9, 0.0]


def test_names_and_discovery(tmp_path):
    assert instance_name_from_path(Path("/run/ingestd/okx-2/stats.sock")) == "okx-2"
    assert instance_name_from_path(Path("/tmp/foo.sock")) == "foo"
    for name in ("b", "a"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "stats.sock").touch()
    extra = tmp_path / "elsewhere.sock"
    assert discover(tmp_path, [extra, tmp_path / "a" / "stats.sock"]) == [
        extra, tmp_path / "a" / "stats.sock", tmp_path / "b" / "stats.sock"]
    assert discover(None) == []


def test_plain_table():
    up = Instance(Path("/run/ingestd/binance/stats.sock"))
    up.apply(snap(1, {"c": 0}, counters={"sink.local.rows_written": 1234}, lag={"p50_us": 800, "p99_us": 2000}))
    up.apply(snap(2, {"c": 150}, counters={"sink.local.rows_written": 2234}, lag={"p50_us": 800, "p99_us": 2000}))
    gone = Instance(Path("/run/ingestd/okx/stats.sock"))
    gone.lost("no socket")
    lines = plain_table([up, gone]).splitlines()
    assert lines[0].split() == ["INSTANCE", "STATE", "CONNS", "MSG/S", "LAG", "ms", "ROWS", "WERR", "SPOOL", "ALRT"]
    assert lines[1].split() == ["binance", "up", "1/1", "150", "0.8/2.0", "2234", "0", "-", "-"]
    assert lines[2].split() == ["okx", "gone", "-", "-", "-", "-", "-", "-", "-"]
