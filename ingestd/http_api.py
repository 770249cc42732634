"""HTTP endpoints: /health, /stats, /pairs, /metrics (and /alerts), served by Hypercorn's Trio worker.

    port = await nursery.start(partial(serve_http, stats, host="127.0.0.1", port=8099,
                                       pairs=lambda: feed.symbols, alerts=engine))

The app is a plain ASGI callable: four read-only JSON/text routes do not need a framework. Every
route reads `stats.snapshot()` (the metrics collector also reads the latency histograms), so the
endpoints cost nothing until they are called and agree with the stats socket and the alerts.

Shapes (the stream-ingest service's, adapted to several sinks):

    GET /health  200 {"status": "healthy", "sinks": {"local": "connected"}, "websocket_connections": 4}
                 503 {"status": "unhealthy", "reason": "no active websocket connections",
                      "sinks": {...}, "websocket_connections": 0, "stats": {...the /stats body...}}
    GET /stats   {"instance", "uptime_s",
                  "publisher": {"publish_count", "error_count", "error_rate", "sinks": {name: {...}}},
                  "ingest": {"active_connections", "planned_connections", "total_messages",
                             "error_messages", "connection_errors", "trades", "depth_updates", "gaps",
                             "trades_backfilled"},
                  "pairs_count", "pairs_sample", "lag", "stored_latency", "queues", "spool", "alerts"}
    GET /pairs   {"count": N, "pairs": ["BTCUSDT", ...]}
    GET /metrics Prometheus text format (OpenMetrics when the scraper asks), see ingestd.metrics
    GET /alerts  {"active": [...], "history": [...]}   (when an alert engine is given)

A sink is "connected" unless its writes are failing: "retrying" from the first failed write with no
successful one since, "failing" once that lasts `sink_fail_s`; otherwise "spooling" or "replaying"
while its runner diverts batches to, or replays them from, the disk spool (gauge sink.<s>.state). Unhealthy (503) means: no WebSocket
connection up (for a feed that has connections), no feed running yet (starting), or a sink "failing".
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from typing import Any, Callable, Sequence

import trio

from ingestd.metrics import build_registry, render, split_key
from ingestd.stats import StatsRegistry

log = logging.getLogger("ingestd.http")

HealthFn = Callable[[], "tuple[bool, dict[str, Any]]"]
PairsFn = Callable[[], Sequence[str]]

PAIRS_SAMPLE = 10
_RUNNER_STATES = {0: "connected", 1: "spooling", 2: "replaying"}


# --- bodies --------------------------------------------------------------------------------------


def _sum(counters: dict[str, int], pred: Callable[[tuple[str, str, str]], bool]) -> int:
    total = 0
    for key, value in counters.items():
        parts = split_key(key)
        if parts is not None and pred(parts):
            total += value
    return total


def sink_names(snapshot: dict) -> list[str]:
    names = set()
    for key in snapshot["counters"]:
        parts = split_key(key)
        if parts and parts[0] == "sink":
            names.add(parts[1])
    for q in snapshot["queues"]:
        if q.startswith("sink."):
            names.add(q[5:])
    return sorted(names)


def pairs_from_snapshot(snapshot: dict) -> list[str]:
    """Symbols that have had events (the default when the daemon passes no `pairs`)."""
    return sorted({key.partition(":")[2] for key in snapshot["symbols"]})


def connection_counts(snapshot: dict) -> tuple[int, int]:
    """(connections up, connections planned or known)."""
    conns = snapshot["connections"]
    up = sum(1 for c in conns if c["state"] == "up")
    planned = int(sum(v for k, v in snapshot["gauges"].items() if k.endswith(".connections_planned")))
    return up, max(planned, len(conns))


def stats_body(snapshot: dict, pairs: Sequence[str], alerts: list[dict] | None = None) -> dict[str, Any]:
    c = snapshot["counters"]

    def feed(*fields: str) -> int:
        return _sum(c, lambda p: p[0] == "feed" and p[2] in fields)

    rows = _sum(c, lambda p: p[0] == "sink" and p[2] == "rows_written")
    write_errors = _sum(c, lambda p: p[0] == "sink" and p[2] == "write_errors")
    batches = _sum(c, lambda p: p[0] == "sink" and p[2] == "batches")
    decode_errors = _sum(c, lambda p: p[0] == "feed" and p[2].startswith("decode_errors."))
    up, planned = connection_counts(snapshot)
    sinks = {
        name: {
            "rows_written": c.get(f"sink.{name}.rows_written", 0),
            "write_errors": c.get(f"sink.{name}.write_errors", 0),
            "batches": c.get(f"sink.{name}.batches", 0),
        }
        for name in sink_names(snapshot)
    }
    spool = {}
    for key, value in snapshot["gauges"].items():
        parts = split_key(key)
        if parts and parts[0] == "spool":
            spool.setdefault(parts[1], {})[parts[2]] = value
    pairs = list(pairs)
    return {
        "instance": snapshot["instance"],
        "uptime_s": round(max(0, snapshot["now_us"] - snapshot["started_us"]) / 1e6, 3),
        "publisher": {
            "publish_count": rows,
            "error_count": write_errors,
            # failed write attempts over all write attempts (a failed batch is retried until it succeeds)
            "error_rate": round(write_errors / (batches + write_errors), 6) if batches + write_errors else 0.0,
            "sinks": sinks,
        },
        "ingest": {
            "active_connections": up,
            "planned_connections": planned,
            "total_messages": feed("trades", "depth_updates", "duplicates_dropped") + decode_errors,
            "error_messages": decode_errors,
            "connection_errors": feed("connect_errors", "disconnects"),
            "trades": feed("trades"),
            "depth_updates": feed("depth_updates"),
            "gaps": feed("gaps"),
            "trades_backfilled": feed("trades_backfilled"),
        },
        "pairs_count": len(pairs),
        "pairs_sample": pairs[:PAIRS_SAMPLE],
        "lag": snapshot["lag"],
        "stored_latency": snapshot["stored_latency"],
        "queues": snapshot["queues"],
        "spool": spool,
        "alerts": alerts if alerts is not None else snapshot.get("alerts", []),
    }


# --- health --------------------------------------------------------------------------------------


class HealthCheck:
    """The default `health` callable: returns (healthy, body). `sample()` follows each sink's write
    counters (serve_http calls it every second, and every request does): a sink whose write errors grew
    with no batch committed since is "retrying", and "failing" once that has lasted sink_fail_s."""

    def __init__(self, stats: StatsRegistry, *, sink_fail_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stats = stats
        self.sink_fail_s = sink_fail_s
        self.clock = clock
        self._sinks: dict[str, tuple[int, int, float | None]] = {}  # name -> (errors, batches, failing since)

    def sample(self, snapshot: dict | None = None) -> dict:
        snapshot = snapshot or self.stats.snapshot()
        now = self.clock()
        c = snapshot["counters"]
        for name in sink_names(snapshot):
            errors = c.get(f"sink.{name}.write_errors", 0)
            batches = c.get(f"sink.{name}.batches", 0)
            prev = self._sinks.get(name)
            if prev is None:
                since = now if errors and not batches else None
            else:
                p_errors, p_batches, since = prev
                if batches != p_batches:
                    since = None  # a write went through
                elif errors != p_errors and since is None:
                    since = now
            self._sinks[name] = (errors, batches, since)
        return snapshot

    def sink_states(self, snapshot: dict | None = None) -> dict[str, str]:
        now = self.clock()
        gauges = (snapshot or {}).get("gauges", {})
        out = {}
        for name, (_, _, since) in sorted(self._sinks.items()):
            if since is not None:
                out[name] = "failing" if now - since >= self.sink_fail_s else "retrying"
            else:
                # the runner's state gauge (0 live, 1 spooling, 2 replaying), when it has a spool
                out[name] = _RUNNER_STATES.get(gauges.get(f"sink.{name}.state", 0), "connected")
        return out

    def __call__(self) -> tuple[bool, dict[str, Any]]:
        snapshot = self.sample()
        sinks = self.sink_states(snapshot)
        up, planned = connection_counts(snapshot)
        reasons = []
        if planned and not up:
            reasons.append("no active websocket connections")
        elif not planned and not any(k.startswith("feed.") for k in snapshot["heartbeat_age_s"]):
            reasons.append("starting: no feed is running yet")
        for name, state in sinks.items():
            if state == "failing":
                errors = snapshot["counters"].get(f"sink.{name}.write_errors", 0)
                reasons.append(f"sink {name} failing for {self.sink_fail_s:g} s or more ({errors} write errors)")
        body: dict[str, Any] = {"status": "unhealthy" if reasons else "healthy"}
        if reasons:
            body["reason"] = "; ".join(reasons)
        body["sinks"] = sinks
        body["websocket_connections"] = up
        return not reasons, body


# --- the ASGI app --------------------------------------------------------------------------------


class HttpApp:
    """A minimal ASGI 3 app. GET/HEAD only; everything answers JSON except /metrics."""

    def __init__(self, stats: StatsRegistry, *, health: HealthFn, pairs: PairsFn | None = None,
                 alerts: Any = None, registry=None) -> None:
        self.stats = stats
        self.health = health
        self.pairs = pairs
        self.alerts = alerts
        self.registry = registry or build_registry(stats, alerts=alerts.active if alerts is not None else None)
        self.routes: dict[str, Callable[[dict], tuple[int, bytes, str]]] = {
            "/health": self._health,
            "/stats": self._stats,
            "/pairs": self._pairs,
            "/metrics": self._metrics,
        }
        if alerts is not None:
            self.routes["/alerts"] = self._alerts
        self.routes["/"] = self._index

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        method = scope["method"]
        route = self.routes.get(scope["path"].rstrip("/") or "/")
        extra: list[tuple[bytes, bytes]] = []
        if route is None:
            status, body, ctype = _json(404, {"error": "not found", "endpoints": sorted(self.routes)})
        elif method not in ("GET", "HEAD"):
            status, body, ctype = _json(405, {"error": "method not allowed"})
            extra.append((b"allow", b"GET, HEAD"))
        else:
            try:
                status, body, ctype = route(scope)
            except Exception:  # a bug in a handler must not take the server down, but must be seen
                log.exception("HTTP handler failed", extra={"path": scope["path"]})
                status, body, ctype = _json(500, {"error": "internal error"})
        headers = [
            (b"content-type", ctype.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    # --- routes (synchronous: they only read memory) ---

    def _pairs_list(self, snapshot: dict) -> list[str]:
        if self.pairs is None:
            return pairs_from_snapshot(snapshot)
        return list(self.pairs())

    def _alerts_list(self) -> list[dict] | None:
        if self.alerts is None:
            return None
        from ingestd.alerts import alert_records

        return alert_records(self.alerts)

    def _health(self, scope) -> tuple[int, bytes, str]:
        healthy, body = self.health()
        if not healthy and "stats" not in body:
            snapshot = self.stats.snapshot()
            body["stats"] = stats_body(snapshot, self._pairs_list(snapshot), self._alerts_list())
        return _json(200 if healthy else 503, body)

    def _stats(self, scope) -> tuple[int, bytes, str]:
        snapshot = self.stats.snapshot()
        return _json(200, stats_body(snapshot, self._pairs_list(snapshot), self._alerts_list()))

    def _pairs(self, scope) -> tuple[int, bytes, str]:
        pairs = self._pairs_list(self.stats.snapshot())
        return _json(200, {"count": len(pairs), "pairs": pairs})

    def _metrics(self, scope) -> tuple[int, bytes, str]:
        accept = ""
        for name, value in scope.get("headers", []):
            if name == b"accept":
                accept = value.decode("latin-1")
        body, ctype = render(self.registry, accept)
        return 200, body, ctype

    def _alerts(self, scope) -> tuple[int, bytes, str]:
        return _json(200, {
            "active": [a.as_dict() for a in self.alerts.active()],
            "history": [t.as_dict() for t in self.alerts.history()],
        })

    def _index(self, scope) -> tuple[int, bytes, str]:
        return _json(200, {"instance": self.stats.instance, "endpoints": sorted(r for r in self.routes if r != "/")})


def _json(status: int, body: Any) -> tuple[int, bytes, str]:
    return status, json.dumps(body, separators=(",", ":")).encode() + b"\n", "application/json"


# --- serving -------------------------------------------------------------------------------------


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def _sample_forever(health: HealthCheck, interval_s: float) -> None:
    logged = False
    while True:
        try:
            health.sample()
        except Exception:  # never let the health sampler take the daemon down
            if not logged:
                log.exception("health sampling failed (logged once)")
                logged = True
        await trio.sleep(interval_s)


async def serve_http(
    stats: StatsRegistry,
    *,
    host: str = "127.0.0.1",
    port: int = 8099,
    health: HealthFn | None = None,
    pairs: PairsFn | None = None,
    alerts: Any = None,
    sink_fail_s: float = 30.0,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the endpoints until cancelled. Reports the bound port through task_status (port 0 picks a
    free one). `health()` returns (healthy, body), by default a HealthCheck over `stats`; `pairs()` the
    followed symbols, by default those that had events; `alerts` an AlertEngine (adds /alerts and
    ingestd_alert_firing). A port already in use raises OSError before task_status is reported."""
    from hypercorn.config import Config as HyperConfig
    from hypercorn.trio import serve

    if health is None:
        health = HealthCheck(stats, sink_fail_s=sink_fail_s)
    app = HttpApp(stats, health=health, pairs=pairs, alerts=alerts)
    config = HyperConfig()
    config.bind = [_bind(host, port)]
    config.accesslog = None
    hyper_log = logging.getLogger("ingestd.http.hypercorn")
    config.errorlog = hyper_log
    config.loglevel = "WARNING"
    config.include_server_header = False
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 30.0  # Prometheus scrapes every 15-60 s over one connection
    # Hypercorn announces "Running on ... (CTRL + C to quit)" at info; we say it our own way.
    if hyper_log.level == logging.NOTSET:
        hyper_log.setLevel(logging.WARNING)
    async with trio.open_nursery() as nursery:
        if isinstance(health, HealthCheck):
            nursery.start_soon(_sample_forever, health, 1.0)
        binds = await nursery.start(partial(serve, app, config))  # an async __call__: detected as ASGI
        bound = int(binds[0].rsplit(":", 1)[1]) if binds else port
        log.info("HTTP endpoints up", extra={"url": f"http://{_bind(host, bound)}",
                                             "endpoints": ",".join(sorted(r for r in app.routes if r != "/"))})
        task_status.started(bound)
