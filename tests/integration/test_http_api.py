"""The HTTP endpoints and the alert engine on a real daemon (run_daemon in-process) fed by the loopback
simulator, over real sockets: /health turns 503 when the venue goes away, alerts reach a webhook once
each way."""

from __future__ import annotations

import json
from contextlib import asynccontextmanager
from functools import partial

import httpx
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from ingestd.alerts import RULE_NAMES, AlertConfig, AlertEngine, run_alerts
from ingestd.config import parse_config
from ingestd.http_api import HealthCheck, serve_http, stats_body
from ingestd.sim import SimConfig, serve
from ingestd.stats import StatsRegistry
from ingestd.supervisor import run_daemon

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def config_text(sim, tmp_path) -> str:
    quoted = ", ".join(f'"{s}"' for s in SYMBOLS)
    return f"""
[daemon]
state_dir = "{tmp_path / 'state'}"
runtime_dir = "{tmp_path / 'run'}"
linger_ms = 20
shutdown_timeout_s = 2.0
http_port = 0

[sinks.local]
type = "sqlite"
path = "ingestd.sqlite"

[feeds.binance]
sinks = ["local"]
ws_url = "{sim.ws_url}"
rest_url = "{sim.rest_url}"
symbols = [{quoted}]
fallback_pairs = []
book_interval_ms = 200
reconnect_base_s = 0.05
reconnect_cap_s = 0.2
"""


async def run_sim(config: SimConfig, scope: trio.CancelScope, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """The simulator under its own cancel scope, so a test can take the venue away."""
    with scope:
        async with trio.open_nursery() as nursery:
            sim = await nursery.start(serve, config)
            task_status.started(sim)


@asynccontextmanager
async def daemon(tmp_path, sim, *, engine: AlertEngine | None = None, webhook_url: str | None = None):
    """A real daemon with serve_http (port 0) and run_alerts started from on_started, as the supervisor
    will; yields an HTTP client on its endpoints."""
    config = parse_config(config_text(sim, tmp_path), environ={})
    stats = StatsRegistry("binance")
    stop = trio.Event()
    ready = trio.Event()
    bound = {}

    async def on_started(stats: StatsRegistry) -> None:
        async with trio.open_nursery() as nursery:
            bound["port"] = await nursery.start(partial(serve_http, stats, host="127.0.0.1", port=0, alerts=engine))
            if engine is not None:
                await nursery.start(partial(run_alerts, stats, engine, interval_s=0.05, webhook_url=webhook_url,
                                            min_severity="warning", webhook_retry_base_s=0.05))
            ready.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(run_daemon, config, "binance", tmp_path / "state", stats=stats,
                                   on_started=on_started, stop=stop))
        with trio.fail_after(15):
            await ready.wait()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{bound['port']}", timeout=5) as client:
            yield client, stats
        stop.set()


async def wait_for(predicate, timeout=10.0, interval=0.05):
    with trio.fail_after(timeout):
        while True:
            value = await predicate()
            if value:
                return value
            await trio.sleep(interval)


async def get_json(client, path):
    r = await client.get(path)
    return r.status_code, r.json()


# --- endpoints ---------------------------------------------------------------------------------


@pytest.mark.trio
async def test_endpoints_on_a_live_daemon_and_503_when_the_venue_goes_away(tmp_path):
    sim_scope = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(run_sim, SimConfig(symbols=SYMBOLS, rate=600, seed=3), sim_scope)
        async with daemon(tmp_path, sim) as (client, stats):

            async def healthy_and_storing():
                status, body = await get_json(client, "/health")
                _, s = await get_json(client, "/stats")
                return (status == 200 and s["publisher"]["publish_count"] > 0 and s["pairs_count"] == 3
                        and s["ingest"]["depth_updates"] > 0 and body)

            health = await wait_for(healthy_and_storing)
            assert health == {"status": "healthy", "sinks": {"local": "connected"}, "websocket_connections": 1}

            status, s = await get_json(client, "/stats")
            assert status == 200
            assert set(s["publisher"]) >= {"publish_count", "error_count", "error_rate"}
            assert s["publisher"]["error_count"] == 0 and s["publisher"]["error_rate"] == 0.0
            ingest = s["ingest"]
            assert set(ingest) >= {"active_connections", "total_messages", "error_messages", "connection_errors"}
            assert ingest["active_connections"] == 1 and ingest["total_messages"] > 0
            assert s["pairs_count"] == 3 and sorted(s["pairs_sample"]) == SYMBOLS
            assert s["lag"]["count"] > 0 and "sink.local" in s["queues"]

            assert await get_json(client, "/pairs") == (200, {"count": 3, "pairs": SYMBOLS})

            r = await client.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            fams = {f.name: f for f in text_string_to_metric_families(r.text)}
            received = {s.labels["type"]: s.value for s in fams["websocket_messages_received"].samples}
            assert received["trade"] > 0 and received["depth"] > 0
            [stored] = fams["ingestion_success"].samples
            assert stored.labels == {"ingestd_instance": "binance", "sink": "local"} and stored.value > 0
            assert "trade_processing_latency_seconds" in fams and "ingestion_duration_ms" in fams

            assert (await client.head("/health")).content == b""
            assert (await client.get("/nope")).status_code == 404
            assert (await client.post("/stats")).status_code == 405

            sim_scope.cancel()  # the venue is gone: the feed can only retry

            async def unhealthy():
                status, body = await get_json(client, "/health")
                return status == 503 and body

            body = await wait_for(unhealthy)
            assert body["status"] == "unhealthy"
            assert body["reason"] == "no active websocket connections"
            assert body["websocket_connections"] == 0 and body["sinks"] == {"local": "connected"}
            assert body["stats"]["ingest"]["active_connections"] == 0
            assert body["stats"]["ingest"]["connection_errors"] >= 1
        nursery.cancel_scope.cancel()


# --- alerts to a webhook ----------------------------------------------------------------------


@asynccontextmanager
async def webhook_receiver():
    """A real HTTP server (Hypercorn) recording every JSON body POSTed to it."""
    from hypercorn.config import Config
    from hypercorn.trio import serve as hyper_serve

    received: list[dict] = []

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                await send({"type": message["type"] + ".complete"})
                if message["type"] == "lifespan.shutdown":
                    return
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        received.append(json.loads(body))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.errorlog = None
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(hyper_serve, app, config))
        yield binds[0] + "/hook", received
        nursery.cancel_scope.cancel()


@pytest.mark.trio
async def test_alert_raised_when_the_venue_goes_quiet_and_resolved_when_it_resumes(tmp_path):
    keep = {"NoDataReceived", "WebSocketDown"}
    cfg = AlertConfig(no_data_s=1.0, ws_down_for_s=0.5, clear_for_s=0.3,
                      disabled=frozenset(set(RULE_NAMES) - keep))
    engine = AlertEngine("binance", cfg)
    sim_scope = trio.CancelScope()
    async with webhook_receiver() as (url, received), trio.open_nursery() as nursery:
        sim = await nursery.start(run_sim, SimConfig(symbols=SYMBOLS, rate=600, seed=5), sim_scope)
        async with daemon(tmp_path, sim, engine=engine, webhook_url=url) as (client, stats):
            await wait_for(lambda: _async(stats.counters.get("sink.local.rows_written", 0) > 0))
            await trio.sleep(0.3)
            assert received == [] and engine.active() == []

            sim.pause()  # connections stay up; nothing is sent

            async def got(n):
                return len(received) >= n

            await wait_for(partial(got, 1))
            [firing] = received
            assert (firing["name"], firing["state"], firing["severity"]) == ("NoDataReceived", "firing", "critical")
            assert firing["instance"] == "binance" and firing["message"].startswith("no data received for")
            assert set(firing) >= {"instance", "name", "severity", "state", "message", "since", "at"}
            assert firing["since"] < firing["at"]  # since: when data stopped

            _, alerts = await get_json(client, "/alerts")
            assert [a["name"] for a in alerts["active"]] == ["NoDataReceived"]
            assert [a["name"] for a in stats.alerts if a["state"] == "firing"] == ["NoDataReceived"]
            metrics = (await client.get("/metrics")).text
            assert 'ingestd_alert_firing{alertname="NoDataReceived"' in metrics
            _, s = await get_json(client, "/stats")
            assert [a["name"] for a in s["alerts"] if a["state"] == "firing"] == ["NoDataReceived"]
            status, _ = await get_json(client, "/health")
            assert status == 200  # quiet is not unhealthy: the connection is up

            await trio.sleep(0.5)
            assert len(received) == 1  # still firing: not sent again

            sim.resume()
            await wait_for(partial(got, 2))
            resolved = received[1]
            assert (resolved["name"], resolved["state"]) == ("NoDataReceived", "resolved")
            assert resolved["since"] == firing["since"]
            await trio.sleep(0.5)
            assert [(m["name"], m["state"]) for m in received] == [
                ("NoDataReceived", "firing"), ("NoDataReceived", "resolved")]
            assert engine.active() == []
        nursery.cancel_scope.cancel()


async def _async(value):
    return value


# --- health logic without I/O ---------------------------------------------------------------------


def test_health_while_starting_and_for_a_feed_without_websockets():
    stats = StatsRegistry("coingecko")
    check = HealthCheck(stats)
    assert check() == (False, {"status": "unhealthy", "reason": "starting: no feed is running yet", "sinks": {},
                               "websocket_connections": 0})
    stats.heartbeat("feed.coingecko")  # a REST-polling feed: no connections, but running
    assert check()[0]


def test_health_check_follows_sink_failures_with_a_grace_period():
    now = [100.0]
    stats = StatsRegistry("binance")
    stats.gauges["binance.connections_planned"] = 1
    stats.connection("binance/0#1").state = "up"
    stats.counters["sink.pg.batches"] = 5
    check = HealthCheck(stats, sink_fail_s=30, clock=lambda: now[0])
    assert check() == (True, {"status": "healthy", "sinks": {"pg": "connected"}, "websocket_connections": 1})
    stats.counters["sink.pg.write_errors"] = 1  # failed, nothing committed since
    now[0] = 101
    assert check()[1]["sinks"] == {"pg": "retrying"} and check()[0]
    stats.counters["sink.pg.write_errors"] = 4
    now[0] = 131
    healthy, body = check()
    assert not healthy and body["sinks"] == {"pg": "failing"}
    assert body["reason"] == "sink pg failing for 30 s or more (4 write errors)"
    stats.counters["sink.pg.batches"] = 6  # a write went through
    now[0] = 132
    assert check() == (True, {"status": "healthy", "sinks": {"pg": "connected"}, "websocket_connections": 1})
    stats.gauges["sink.pg.state"] = 1  # the runner diverts batches to its disk spool
    assert check() == (True, {"status": "healthy", "sinks": {"pg": "spooling"}, "websocket_connections": 1})


def test_stats_body_error_rate_counts_failed_attempts():
    stats = StatsRegistry("binance")
    stats.counters.update({"sink.a.batches": 98, "sink.a.write_errors": 2, "sink.a.rows_written": 1000,
                           "binance.trades": 10, "binance.decode_errors.bad_json": 1,
                           "binance.disconnects": 2, "binance.connect_errors": 3})
    body = stats_body(stats.snapshot(), ["BTCUSDT"])
    assert body["publisher"]["error_rate"] == 0.02 and body["publisher"]["publish_count"] == 1000
    assert body["ingest"]["total_messages"] == 11 and body["ingest"]["error_messages"] == 1
    assert body["ingest"]["connection_errors"] == 5
