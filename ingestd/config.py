"""Configuration: one TOML file, validated into frozen dataclasses, every problem reported at once.

Each config section is a frozen dataclass whose fields are declared with `option(default, check,
doc)`; one generic loader walks those declarations, so adding a key is one line and a new sink
type or feed family is one decorated class (`@sink_type("postgres")`, `@feed_family("bybit")`).

Validation never stops at the first mistake: a restart loop that reveals one typo per attempt is
the worst way to learn about a config. Every problem names its dotted key path, what was
expected and what was found, e.g.

    feeds.binance.pairs_per_connection: expected an integer from 1 to 512, got "fifty"

Secret values (`{ env = "NAME" }`, `{ credential = "name" }`) are resolved here; see secrets.py.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

from ingestd import secrets
from ingestd.logs import LOG_LEVELS
from ingestd.secrets import Secret, SecretError

DEFAULT_CONFIG_PATH = "/etc/ingestd.toml"
CONFIG_PATH_ENV = "INGESTD_CONFIG"


def default_config_path(environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    return environ.get(CONFIG_PATH_ENV) or DEFAULT_CONFIG_PATH


class ConfigError(Exception):
    """The configuration is unusable. `problems` holds every reason, one line each."""

    def __init__(self, problems: list[str], source: str = "<config>") -> None:
        self.problems = list(problems)
        self.source = source
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


# --- describing values in messages -------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _join(path: str, key: str) -> str:
    """Dotted key path as TOML would spell it (keys with dots or spaces get quoted)."""
    part = key if _BARE_KEY.fullmatch(key) else json.dumps(key)
    return f"{path}.{part}" if path else part


def describe(raw: Any) -> str:
    """A found value, written the way it looks in TOML, shortened so one problem stays one line."""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, str):
        text = json.dumps(raw, ensure_ascii=False)
        return text if len(text) <= 60 else text[:56] + '..."'
    if isinstance(raw, (int, float)):
        return repr(raw)
    if isinstance(raw, dict):
        return f"a table with keys {', '.join(raw)}" if raw else "an empty table"
    if isinstance(raw, list):
        shown = ", ".join(describe(item) for item in raw[:4])
        return f"[{shown}, ...]" if len(raw) > 4 else f"[{shown}]"
    return f"the {type(raw).__name__} {raw}"  # TOML dates and times


def _mismatch(path: str, expected: str, raw: Any) -> str:
    return f"{path}: expected {expected}, got {describe(raw)}"


def _unknown_key(path: str, key: str, valid: list[str], what: str = "key") -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f'did you mean "{close[0]}"?' if close else f"valid: {', '.join(valid) or 'none'}"
    return f"{_join(path, key)}: unknown {what}; {hint}"


# --- checks: one per kind of value -------------------------------------------------------------


class Invalid(Exception):
    """Raised by `Check.parse`; the loader adds the key path and the value found."""


_BAD = object()  # marks a value that failed validation (its problem is already recorded)


class Check:
    """Validates and converts one raw TOML value. `expected` completes "expected ...". """

    expected = "a value"
    accepts_secret = False  # only free-text options may be `{ env = ... }` / `{ credential = ... }`

    def parse(self, raw: Any) -> Any:
        raise NotImplementedError

    def from_text(self, text: str) -> Any:
        """An environment variable's text as the TOML value it stands for (still unvalidated)."""
        return text

    def validate(self, raw: Any, path: str, problems: list[str]) -> Any:
        try:
            return self.parse(raw)
        except Invalid:
            problems.append(_mismatch(path, self.expected, raw))
            return _BAD


class Integer(Check):
    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high
        self.expected = f"an integer from {low} to {high}"

    def parse(self, raw: Any) -> int:
        # bool is an int subclass in Python; `batch_size = true` must not mean 1.
        if isinstance(raw, int) and not isinstance(raw, bool) and self.low <= raw <= self.high:
            return raw
        raise Invalid

    def from_text(self, text: str) -> Any:
        try:
            return int(text.strip())
        except ValueError:
            return text


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(value)


class Number(Check):
    def __init__(self, low: float, high: float) -> None:
        self.low, self.high = low, high
        self.expected = f"a number from {_number(low)} to {_number(high)}"

    def parse(self, raw: Any) -> float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            if math.isfinite(raw) and self.low <= raw <= self.high:
                return float(raw)
        raise Invalid

    def from_text(self, text: str) -> Any:
        try:
            return float(text.strip())
        except ValueError:
            return text


class Boolean(Check):
    expected = "true or false"
    _WORDS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}

    def parse(self, raw: Any) -> bool:
        if isinstance(raw, bool):
            return raw
        raise Invalid

    def from_text(self, text: str) -> Any:
        return self._WORDS.get(text.strip().lower(), text)


class Choice(Check):
    def __init__(self, *options: str | int) -> None:
        self.options = options
        self.expected = "one of " + ", ".join(describe(option) for option in options)

    def parse(self, raw: Any) -> Any:
        if not isinstance(raw, bool) and raw in self.options and type(raw) is type(self.options[0]):
            return raw
        raise Invalid


class Text(Check):
    """Free text (paths, hosts, URLs); the only kind of option that may be a secret reference."""

    def __init__(
        self, expected: str = "a non-empty string", pattern: str = r".+", *, accepts_secret: bool = True
    ) -> None:
        self.expected = expected
        self.pattern = re.compile(pattern, re.DOTALL)
        self.accepts_secret = accepts_secret

    def parse(self, raw: Any) -> str:
        if isinstance(raw, str) and self.pattern.fullmatch(raw):
            return raw
        raise Invalid


def Url(*schemes: str) -> Text:
    names = " or ".join(f"{scheme}://" for scheme in schemes)
    return Text(f"a {names} URL", rf"(?:{'|'.join(schemes)})://[^\s/]+\S*")


def Symbol() -> Text:
    return Text('a symbol of 2 to 20 characters A-Z, 0-9 (like "BTCUSDT")', r"[A-Z0-9]{2,20}", accepts_secret=False)


class Shard(Check):
    expected = 'a shard "i/N" with 1 <= i <= N (like "2/4")'

    def parse(self, raw: Any) -> tuple[int, int]:
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", raw) if isinstance(raw, str) else None
        if match:
            index, total = int(match[1]), int(match[2])
            if 1 <= index <= total:
                return index, total
        raise Invalid


class ListOf(Check):
    """A list whose items are checked one by one, each problem reported as `key[i]`."""

    def __init__(self, item: Check, noun: str, *, min_items: int = 0) -> None:
        self.item, self.noun, self.min_items = item, noun, min_items
        self.expected = f"a {'non-empty ' if min_items else ''}list of {noun}"

    def validate(self, raw: Any, path: str, problems: list[str]) -> Any:
        if not isinstance(raw, list) or len(raw) < self.min_items:
            problems.append(_mismatch(path, self.expected, raw))
            return _BAD
        items = [self.item.validate(value, f"{path}[{i}]", problems) for i, value in enumerate(raw)]
        if any(item is _BAD for item in items):
            return _BAD
        seen: set[Any] = set()
        for item in items:
            if item in seen:
                problems.append(f"{path}: {describe(item)} is listed twice")
                return _BAD
            seen.add(item)
        return tuple(items)

    def from_text(self, text: str) -> Any:
        # The seed service's convention: FALLBACK_PAIRS=BTCUSDT,ETHUSDT,SOLUSDT
        return [part.strip() for part in text.split(",") if part.strip()]


# --- declaring and loading sections ------------------------------------------------------------


def option(default: Any, check: Check, doc: str, *, env: str | None = None) -> Any:
    """A config key: its default, how to validate it, one line of documentation, and optionally
    the environment variable that overrides it (for settings users know from the seed service)."""
    return field(default=default, metadata={"check": check, "doc": doc, "env": env})


def options_of(cls: type) -> dict[str, dataclasses.Field]:
    """The config keys of a section class, in declaration order (base class keys first)."""
    return {f.name: f for f in dataclasses.fields(cls) if "check" in f.metadata}


@dataclass(frozen=True)
class _Context:
    environ: Mapping[str, str]
    sink_names: frozenset[str]  # declared [sinks.X] names, valid or not, for reference checks


class Section:
    """Base of every section dataclass: `cross_check` relates keys to each other."""

    @classmethod
    def cross_check(cls, values: Mapping[str, Any], context: _Context) -> Iterator[tuple[str, str]]:
        """Yield (key, problem) pairs. Values that failed their own check are `_BAD`; skip them."""
        return iter(())


def _validate_option(check: Check, raw: Any, path: str, problems: list[str], environ: Mapping[str, str]) -> Any:
    if not secrets.is_reference(raw):
        return check.validate(raw, path, problems)
    if not check.accepts_secret:
        problems.append(f"{path}: expected {check.expected}, got a secret reference (only free-text keys take those)")
        return _BAD
    try:
        secret = secrets.resolve(raw, environ)
    except SecretError as exc:
        problems.append(f"{path}: {exc}")
        return _BAD
    try:
        return Secret(check.parse(secret.reveal()), secret.origin)
    except Invalid:
        problems.append(f"{path}: expected {check.expected}, got the secret from {secret.origin} (value hidden)")
        return _BAD


def _load_section(
    cls: type,
    table: Any,
    path: str,
    problems: list[str],
    context: _Context,
    *,
    fixed: Mapping[str, Any] | None = None,
    handled_keys: tuple[str, ...] = (),
) -> Any:
    """Validate one TOML table against `cls`; return the instance, or None if anything was wrong.

    `fixed` fills the fields that are not options (a section's name); `handled_keys` are table
    keys the caller already validated (a sink's `type`)."""
    if not isinstance(table, dict):
        problems.append(_mismatch(path, "a table", table))
        return None
    before = len(problems)
    fixed = fixed or {}
    options = options_of(cls)
    for key in table:
        if key not in options and key not in handled_keys:
            problems.append(_unknown_key(path, key, list(options)))
    values: dict[str, Any] = {}
    for name, spec in options.items():
        check: Check = spec.metadata["check"]
        key_path = _join(path, name)
        value = spec.default
        if name in table:
            value = _validate_option(check, table[name], key_path, problems, context.environ)
        env = spec.metadata["env"]
        # Empty counts as unset: compose files and unit templates often carry `NAME=` lines.
        if env and context.environ.get(env):
            env_problems: list[str] = []
            override = check.validate(check.from_text(context.environ[env]), f"${env}", env_problems)
            problems.extend(f"{problem} (set in the environment; overrides {key_path})" for problem in env_problems)
            value = override if value is not _BAD else value
        values[name] = value
    for key, problem in cls.cross_check(values, context):
        problems.append(f"{_join(path, key)}: {problem}")
    if len(problems) > before:
        return None
    return cls(**fixed, **values)


def _ok(*values: Any) -> bool:
    return all(value is not _BAD for value in values)


# --- [daemon] ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DaemonConfig(Section):
    state_dir: str | Secret = option(
        "/var/lib/ingestd",
        Text(),
        "durable state (SQLite store, spool); --state-dir and $STATE_DIRECTORY override it",
    )
    runtime_dir: str | Secret = option("/run/ingestd", Text(), "per-boot files such as the stats socket")
    log_level: str = option("info", Choice(*LOG_LEVELS), "least severe level logged; --log-level overrides it")
    batch_size: int = option(
        5000, Integer(1, 1_000_000), "most records per sink write; bigger batches amortize transactions"
    )
    linger_ms: int = option(5, Integer(1, 60_000), "longest a partial batch waits before it is written anyway")
    channel_capacity: int = option(
        256, Integer(1, 100_000), "chunks buffered between feeds and sinks; when full, feeds wait (backpressure)"
    )
    shutdown_timeout_s: float = option(
        4.0, Number(0.1, 60), "time to flush and close on SIGTERM; keep it below systemd's TimeoutStopSec"
    )
    http_port: int = option(
        8099, Integer(0, 65535), "port of /health, /stats, /metrics; 0 turns the HTTP server off", env="HEALTH_PORT"
    )
    http_host: str | Secret = option("127.0.0.1", Text(), "address the HTTP server binds; 0.0.0.0 exposes it")
    health_sink_fail_s: float = option(
        30.0, Number(1, 86400), "/health turns 503 when a sink has been failing this long"
    )
    stats_socket: str | Secret = option(
        "", Text("a path", r".*"), "the stats socket; empty: <runtime_dir>/<instance>/stats.sock ($RUNTIME_DIRECTORY)"
    )


# --- [alerts] ----------------------------------------------------------------------------------


_RULE_NAME = Text("an alert rule name", r"[A-Za-z]+", accepts_secret=False)


@dataclass(frozen=True, kw_only=True)
class AlertsConfig(Section):
    """The alert engine (ingestd.alerts): rules from the runbooks, each raised and resolved once."""

    enabled: bool = option(True, Boolean(), "evaluate alert rules")
    interval_s: float = option(5.0, Number(0.5, 3600), "how often rules are evaluated")
    webhook_url: str | Secret | None = option(
        None, Url("http", "https"), "POST each raise/resolve here as JSON (optional)", env="ALERT_WEBHOOK_URL"
    )
    min_severity: str = option(
        "warning", Choice("info", "warning", "error", "critical"), "least severe alert sent to the webhook",
        env="ALERT_MIN_SEVERITY",
    )
    webhook_timeout_s: float = option(5.0, Number(0.1, 120), "one webhook POST gives up after this long")
    webhook_attempts: int = option(4, Integer(1, 20), "POST attempts per transition (with backoff)")
    disabled: tuple[str, ...] = option((), ListOf(_RULE_NAME, "rule names"), "rules not to evaluate")
    ws_down_for_s: float = option(60.0, Number(1, 86400), "WebSocketDown: no connection up for this long")
    no_data_s: float = option(300.0, Number(1, 86400), "NoDataReceived: no event for this long")
    no_data_written_s: float = option(300.0, Number(1, 86400), "NoDataWritten: a sink stored nothing this long")
    write_errors_window_s: float = option(60.0, Number(1, 86400), "SinkWriteErrors: errors within this window")
    error_rate: float = option(0.01, Number(0, 1), "HighErrorRate: bad frames / messages above this")
    error_rate_window_s: float = option(300.0, Number(1, 86400), "HighErrorRate: measured over this window")
    error_rate_min_messages: int = option(100, Integer(1, 1 << 40), "HighErrorRate: needs this many messages")
    error_rate_for_s: float = option(60.0, Number(0, 86400), "HighErrorRate: sustained this long")
    memory_ratio: float = option(0.8, Number(0.01, 1), "MemoryHigh: share of the memory limit")
    memory_for_s: float = option(60.0, Number(0, 86400), "MemoryHigh: sustained this long")
    memory_limit_bytes: int = option(0, Integer(0, 1 << 50), "MemoryHigh: limit; 0 = the cgroup's (skip if none)")
    lag_p99_ms: float = option(1000.0, Number(1, 3_600_000), "HighLag: receive lag p99 above this")
    lag_for_s: float = option(300.0, Number(0, 86400), "HighLag: sustained this long")
    spool_fill_ratio: float = option(0.8, Number(0.01, 1), "SpoolFilling: share of spool_max_bytes")
    cpu_ratio: float = option(0.9, Number(0.01, 64), "CpuHigh: share of one core")
    cpu_window_s: float = option(60.0, Number(1, 86400), "CpuHigh: measured over this window")
    cpu_for_s: float = option(300.0, Number(0, 86400), "CpuHigh: sustained this long")
    clear_for_s: float = option(30.0, Number(0, 86400), "a firing alert resolves after staying clear this long")
    clear_ratio: float = option(0.9, Number(0.01, 1), "threshold rules clear below threshold x this")

    def rule_settings(self) -> dict:
        """The rule thresholds, keyed as ingestd.alerts.AlertConfig expects."""
        general = {"enabled", "interval_s", "webhook_url", "min_severity", "webhook_timeout_s", "webhook_attempts"}
        values = {k: getattr(self, k) for k in options_of(type(self)) if k not in general}
        if not values["memory_limit_bytes"]:
            values["memory_limit_bytes"] = None
        return values


# --- [sinks.<name>] ----------------------------------------------------------------------------

SINK_TYPES: dict[str, type[SinkConfig]] = {}


def sink_type(name: str):
    """Register a sink schema under its `type = "..."` value."""

    def register(cls: type[SinkConfig]) -> type[SinkConfig]:
        SINK_TYPES[name] = cls
        return cls

    return register


@dataclass(frozen=True, kw_only=True)
class SinkConfig(Section):
    name: str  # the X of [sinks.X]
    type: str  # key of SINK_TYPES
    spool_max_bytes: int = option(
        1 << 30,
        Integer(1 << 20, 1 << 40),
        "disk spool for batches this sink could not take (outage or slowness); alert at 80 %",
    )
    spool_when_full: str = option(
        "block",
        Choice("block", "drop_oldest"),
        "full spool: block (backpressure to the feed; resume refetches) or drop_oldest (logged, counted)",
    )
    max_stall_ms: int = option(
        500,
        Integer(0, 10_000),
        "a feed's only sink, healthy but behind a burst, makes it wait this long for room before "
        "diverting to the spool; 0 diverts at once",
    )


@sink_type("sqlite")
@dataclass(frozen=True, kw_only=True)
class SqliteSinkConfig(SinkConfig):
    path: str | Secret = option("ingestd.sqlite", Text(), "database file; a relative path is inside the state dir")
    synchronous: str = option(
        "normal", Choice("off", "normal", "full"), "SQLite PRAGMA synchronous (normal is durable in WAL mode)"
    )

    def resolved_path(self, state_dir: str | Path) -> Path:
        return Path(state_dir) / secrets.reveal(self.path)  # an absolute path replaces state_dir


@sink_type("postgres")
@dataclass(frozen=True, kw_only=True)
class PostgresSinkConfig(SinkConfig):
    host: str | Secret = option("localhost", Text(), "server host name, address or socket directory", env="POSTGRES_HOST")
    port: int = option(5432, Integer(1, 65535), "server port", env="POSTGRES_PORT")
    dbname: str | Secret = option("ingestd", Text(), "database", env="POSTGRES_DB")
    user: str | Secret = option("ingestd", Text(), "role to connect as", env="POSTGRES_USER")
    password: str | Secret = option("", Text("a string", r".*"), 'password; give it as { env = "..." } or { credential = "..." }')
    retention_days: int = option(30, Integer(0, 36_500), "drop rows older than this many days; 0 keeps everything")
    timescale: str = option(
        "auto", Choice("auto", "on", "off"), "use TimescaleDB hypertables: auto = when the extension is installed"
    )
    connect_timeout_s: float = option(5.0, Number(0.1, 300), "give up on one connection attempt after this long")


class StreamTemplate(Check):
    """A Redis stream key pattern that uses each of `placeholders` once or more, and nothing else: one
    stream per scope, since the sink derives a stream's entry ids from its records' times."""

    def __init__(self, *placeholders: str) -> None:
        self.placeholders = placeholders
        self.expected = "a stream key pattern with " + ", ".join(f"{{{p}}}" for p in placeholders) + \
            (" (and no other placeholder)" if len(placeholders) > 1 else " (and no other)")

    def parse(self, raw: Any) -> str:
        import string

        if not isinstance(raw, str):
            raise Invalid
        try:
            used = {name for _, name, _, _ in string.Formatter().parse(raw) if name is not None}
        except ValueError:
            raise Invalid from None
        if used != set(self.placeholders):
            raise Invalid
        return raw


@sink_type("redis")
@dataclass(frozen=True, kw_only=True)
class RedisSinkConfig(SinkConfig):
    url: str | Secret = option("redis://localhost:6379/0", Url("redis", "rediss"), "server URL", env="REDIS_URL")
    stream_maxlen: int = option(10_000, Integer(1, 1 << 40), "approximate length each stream is trimmed to (MAXLEN ~)",
                                env="STREAM_MAXLEN")
    raw_json: bool = option(False, Boolean(), "also store each trade's venue message as raw_json")
    trades_stream: str = option("trades:{symbol}", Text(accepts_secret=False), "stream key of trades")
    books_stream: str = option("books:{symbol}", Text(accepts_secret=False), "stream key of book snapshots")
    # The other kinds' streams hold one scope each (their entry ids come from the records' times).
    derivatives_stream: str = option("derivatives:{venue}:{symbol}", StreamTemplate("venue", "symbol"),
                                     "stream key of derivatives (funding, open interest, mark/index)")
    dex_stream: str = option("dex:{chain}:{pool}", StreamTemplate("chain", "pool"), "stream key of DEX pool metrics")
    flows_stream: str = option("flows:{chain}:{token}", StreamTemplate("chain", "token"),
                               "stream key of on-chain token transfers")
    prices_stream: str = option("prices:{source}:{coin_id}", StreamTemplate("source", "coin_id"),
                                "stream key of aggregator prices")
    prediction_books_stream: str = option("{venue}:books:{asset}", StreamTemplate("venue", "asset"),
                                          "stream key of prediction-market order books")
    prediction_trades_stream: str = option("{venue}:trades:{asset}", StreamTemplate("venue", "asset"),
                                           "stream key of prediction-market trades")
    whales_stream: str = option("whales:{address}", StreamTemplate("address"), "stream key of whale trades")


# Kafka's own rule for topic names: 1 to 249 of these characters, and not "." or "..".
_TOPIC = Text("a topic name of 1-249 characters a-z, A-Z, 0-9, '.', '_', '-'", r"(?!\.\.?$)[A-Za-z0-9._-]{1,249}",
              accepts_secret=False)


@sink_type("kafka")
@dataclass(frozen=True, kw_only=True)
class KafkaSinkConfig(SinkConfig):
    bootstrap_servers: tuple[str, ...] = option(
        ("localhost:9092",), ListOf(Text("host:port", r"[^\s:]+:\d+", accepts_secret=False), "host:port addresses",
                                    min_items=1), "brokers to bootstrap from"
    )
    trades_topic: str = option("market_trades", _TOPIC, "topic of trades")
    books_topic: str = option("order_books", _TOPIC, "topic of book snapshots")
    whales_topic: str = option("whale_activity", _TOPIC, "topic of whale trades (the legacy whale_trade events)")
    prediction_trades_topic: str = option("market_trades", _TOPIC, "topic of prediction-market trades")
    prediction_books_topic: str = option("order_books", _TOPIC, "topic of prediction-market order books")
    derivatives_topic: str = option("derivatives", _TOPIC, "topic of derivatives (funding, open interest, mark/index)")
    dex_topic: str = option("dex_metrics", _TOPIC, "topic of DEX pool metrics")
    flows_topic: str = option("onchain_flows", _TOPIC, "topic of on-chain token transfers")
    prices_topic: str = option("prices", _TOPIC, "topic of aggregator prices")
    compression: str = option("gzip", Choice("none", "gzip", "snappy", "lz4", "zstd"), "producer compression codec")
    client_id: str = option("ingestd", Text(accepts_secret=False), "client id the brokers see")
    delivery_timeout_s: float = option(30.0, Number(1, 3600), "retry a batch this long before spooling it")


# The sink a first run writes to when the file declares none, so `ingestd run` needs no server.
IMPLICIT_SINK = "local"


def _load_sinks(raw: Any, problems: list[str], context: _Context) -> dict[str, SinkConfig] | None:
    if raw is None or raw == {}:
        return {IMPLICIT_SINK: SqliteSinkConfig(name=IMPLICIT_SINK, type="sqlite")}
    if not isinstance(raw, dict):
        problems.append(_mismatch("sinks", "a table of [sinks.NAME] tables", raw))
        return None
    sinks: dict[str, SinkConfig] = {}
    for name, table in raw.items():
        path = _join("sinks", name)
        if not isinstance(table, dict):
            problems.append(_mismatch(path, "a table", table))
            continue
        kind = table.get("type")
        if not isinstance(kind, str) or kind not in SINK_TYPES:
            # Without a known type there is no schema to check the other keys against.
            found = "nothing (the key is required)" if kind is None else describe(kind)
            problems.append(f"{_join(path, 'type')}: expected {Choice(*SINK_TYPES).expected}, got {found}")
            continue
        fixed = {"name": name, "type": kind}
        sink = _load_section(SINK_TYPES[kind], table, path, problems, context, fixed=fixed, handled_keys=("type",))
        if sink is not None:
            sinks[name] = sink
    return sinks if len(sinks) == len(raw) else None


# --- [feeds.<family>] --------------------------------------------------------------------------

FEED_FAMILIES: dict[str, type[FeedConfig]] = {}


def feed_family(name: str):
    """Register a feed schema under its [feeds.<family>] name."""

    def register(cls: type[FeedConfig]) -> type[FeedConfig]:
        FEED_FAMILIES[name] = cls
        return cls

    return register


_SINK_NAME = Text("a sink name", r"\S+", accepts_secret=False)


@dataclass(frozen=True, kw_only=True)
class FeedConfig(Section):
    """Keys every feed family has."""

    family: str  # the X of [feeds.X]
    enabled: bool = option(True, Boolean(), "false keeps the section but refuses to run the feed")
    sinks: tuple[str, ...] = option(
        ("local",), ListOf(_SINK_NAME, "sink names", min_items=1), "[sinks.X] names to write to"
    )
    shard: tuple[int, int] | None = option(
        None, Shard(), 'this process takes part i of N of the symbols ("i/N"); usually set by the instance name'
    )
    shards: int = option(1, Integer(1, 256), "N for instances named FAMILY-i (ingestd@binance-2 is shard 2 of N)")
    http_port: int | None = option(
        None, Integer(0, 65535),
        "this family's HTTP port (instances on one host need distinct ports); shard i uses http_port + i - 1",
    )

    @classmethod
    def cross_check(cls, values: Mapping[str, Any], context: _Context) -> Iterator[tuple[str, str]]:
        yield from super().cross_check(values, context)
        if _ok(values["sinks"]):
            for name in values["sinks"]:
                if name not in context.sink_names:
                    close = difflib.get_close_matches(name, sorted(context.sink_names), n=1, cutoff=0.6)
                    hint = f'did you mean "{close[0]}"?' if close else f"add a [sinks.{name}] table"
                    defined = ", ".join(sorted(context.sink_names)) or "none"
                    yield "sinks", f'sink "{name}" is not defined (defined: {defined}); {hint}'
        shard, shards = values["shard"], values["shards"]
        if _ok(shard, shards) and shard is not None and shards != 1 and shard[1] != shards:
            yield "shard", (
                f'"{shard[0]}/{shard[1]}" disagrees with shards = {shards}; make N match or drop one of them'
            )


@feed_family("binance")
@dataclass(frozen=True, kw_only=True)
class BinanceFeedConfig(FeedConfig):
    ws_url: str | Secret = option(
        "wss://stream.binance.com:9443", Url("ws", "wss"), "WebSocket base URL", env="BINANCE_WS_URL"
    )
    rest_url: str | Secret = option(
        "https://api.binance.com", Url("http", "https"), "REST base URL (depth snapshots, backfill, exchangeInfo)"
    )
    symbols: tuple[str, ...] = option((), ListOf(Symbol(), "symbols"), "symbols to ingest, besides fallback_pairs")
    fallback_pairs: tuple[str, ...] = option(
        ("BTCUSDT", "ETHUSDT", "SOLUSDT"),
        ListOf(Symbol(), "symbols"),
        "symbols always ingested, whatever symbols says",
        env="FALLBACK_PAIRS",
    )
    pairs_per_connection: int = option(
        50,
        Integer(1, 512),
        "symbols per WebSocket; each takes 2 streams (trade + depth), Binance allows 1024 streams per connection",
        env="PAIRS_PER_CONNECTION",
    )
    trade_stream: str = option(
        "trade", Choice("trade", "aggTrade"), "raw trades, or trades aggregated per taker order"
    )
    depth: bool = option(True, Boolean(), "maintain local order books and store their top levels")
    depth_speed_ms: int = option(100, Choice(100, 1000), "diff-depth update interval Binance pushes")
    book_levels: int = option(10, Integer(1, 100), "levels per side in each stored book snapshot")
    book_interval_ms: int = option(1000, Integer(100, 3_600_000), "how often each book's top levels are stored")
    snapshot_limit: int = option(
        1000, Integer(5, 5000), "levels in the REST depth snapshot a book starts from (more levels cost more weight)"
    )
    max_connection_age_s: int = option(
        85800, Integer(60, 86000), "reconnect before Binance's 24 h disconnect, on our schedule, without a gap"
    )
    backfill: bool = option(
        True, Boolean(), "after a reconnect, fetch missed trades over REST so the tape has no gap"
    )
    rest_weight_limit: int = option(6000, Integer(1, 1_000_000), "REST request weight Binance allows per minute")
    rest_weight_headroom: float = option(
        0.8, Number(0.1, 1.0), "fraction of rest_weight_limit we let ourselves use; the rest is safety margin"
    )
    reconnect_base_s: float = option(0.5, Number(0.01, 60), "first reconnect delay ceiling (full-jitter backoff)")
    reconnect_cap_s: float = option(30.0, Number(0.1, 3600), "largest reconnect delay ceiling")
    max_outgoing_per_s: float = option(
        5.0, Number(0.1, 5.0), "messages we send per second per connection; Binance disconnects above 5"
    )
    exchange_info_check: bool = option(
        True, Boolean(), "check symbols against /api/v3/exchangeInfo at start and skip ones not trading"
    )
    pairs_file: str = option(
        "", Text("a path", r".*", accepts_secret=False),
        "also follow the pairs in this file (ingestd@coingecko's discovery writes it), applied live on change; "
        "empty: off",
    )
    pairs_file_check_s: float = option(5.0, Number(0.1, 3600), "how often pairs_file is checked for a change")

    @classmethod
    def cross_check(cls, values: Mapping[str, Any], context: _Context) -> Iterator[tuple[str, str]]:
        yield from super().cross_check(values, context)
        base, cap = values["reconnect_base_s"], values["reconnect_cap_s"]
        if _ok(base, cap) and base > cap:
            yield "reconnect_base_s", f"must not exceed reconnect_cap_s ({cap:g}), got {base:g}"
        levels, limit = values["book_levels"], values["snapshot_limit"]
        if _ok(levels, limit) and values["depth"] is True and levels > limit:
            # A book started from a snapshot shallower than what we publish would publish holes.
            yield "book_levels", f"must not exceed snapshot_limit ({limit}), got {levels}"


def _load_feeds(raw: Any, problems: list[str], context: _Context) -> dict[str, FeedConfig] | None:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.append(_mismatch("feeds", "a table of [feeds.FAMILY] tables", raw))
        return None
    feeds: dict[str, FeedConfig] = {}
    for family, table in raw.items():
        if family not in FEED_FAMILIES:
            problems.append(_unknown_key("feeds", family, list(FEED_FAMILIES), what="feed family"))
            continue
        path = _join("feeds", family)
        feed = _load_section(FEED_FAMILIES[family], table, path, problems, context, fixed={"family": family})
        if feed is not None:
            feeds[family] = feed
    return feeds if len(feeds) == len(raw) else None


# --- the whole file ----------------------------------------------------------------------------

_INSTANCE = re.compile(r"(?P<family>[a-z][a-z0-9_]*?)(?:-(?P<index>\d+))?")


@dataclass(frozen=True)
class Config:
    daemon: DaemonConfig
    sinks: dict[str, SinkConfig]
    feeds: dict[str, FeedConfig]
    source: str
    alerts: AlertsConfig = field(default_factory=AlertsConfig)

    SECTIONS: ClassVar[tuple[str, ...]] = ("daemon", "alerts", "sinks", "feeds")

    def feed_for_instance(self, instance: str) -> tuple[str, FeedConfig]:
        """Map a systemd instance name to its feed: "binance" -> the [feeds.binance] config;
        "binance-2" -> the same with shard=(2, N), N from feeds.binance.shards (or its shard)."""
        def refuse(reason: str) -> ConfigError:
            return ConfigError([f'instance "{instance}": {reason}'], self.source)

        match = _INSTANCE.fullmatch(instance)
        if not match:
            raise refuse('expected FAMILY or FAMILY-i, like "binance" or "binance-2"')
        family, index = match["family"], match["index"]
        feed = self.feeds.get(family)
        if feed is None:
            raise refuse(f"no [feeds.{family}] table (configured feeds: {', '.join(self.feeds) or 'none'})")
        if not feed.enabled:
            raise refuse(f"feeds.{family}.enabled is false")
        total = feed.shard[1] if feed.shard else feed.shards
        if index is None:
            if feed.shard is None and total > 1:
                # Running the whole family next to its shards would ingest every symbol twice.
                raise refuse(f"feeds.{family}.shards = {total}, so run {family}-1 to {family}-{total} instead")
            return family, feed
        shard = int(index)
        if feed.shard and feed.shard[0] != shard:
            raise refuse(f'names shard {shard}, but feeds.{family}.shard = "{feed.shard[0]}/{total}"')
        if not 1 <= shard <= total:
            raise refuse(f"shard {shard} does not exist, feeds.{family}.shards = {total} (shards are 1 to {total})")
        return family, dataclasses.replace(feed, shard=(shard, total))


def _syntax_problem(exc: tomllib.TOMLDecodeError) -> str:
    # Python 3.11's TOMLDecodeError has no lineno attribute; the position ends the message.
    message = str(exc)
    match = re.search(r"\s*\(at (line (\d+), column (\d+)|end of document)\)$", message)
    if not match:
        return f"TOML syntax error: {message}"
    where = match[1] if match[2] else "end of file"
    return f"{where}: TOML syntax error: {message[: match.start()]}"


def parse_config(text: str, *, source: str = "<config>", environ: Mapping[str, str] | None = None) -> Config:
    """Validate TOML text; raise ConfigError listing every problem."""
    environ = os.environ if environ is None else environ
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([_syntax_problem(exc)], source) from None
    problems: list[str] = []
    for key in document:
        if key not in Config.SECTIONS:
            problems.append(_unknown_key("", key, list(Config.SECTIONS), what="section"))
    raw_sinks = document.get("sinks")
    declared = raw_sinks.keys() if isinstance(raw_sinks, dict) and raw_sinks else {IMPLICIT_SINK}
    context = _Context(environ=environ, sink_names=frozenset(declared))
    daemon = _load_section(DaemonConfig, document.get("daemon", {}), "daemon", problems, context)
    alerts = _load_section(AlertsConfig, document.get("alerts", {}), "alerts", problems, context)
    sinks = _load_sinks(raw_sinks, problems, context)
    feeds = _load_feeds(document.get("feeds"), problems, context)
    if problems:
        raise ConfigError(problems, source)
    return Config(daemon=daemon, sinks=sinks, feeds=feeds, source=source, alerts=alerts)


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate a config file; raise ConfigError listing every problem."""
    source = str(path)
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            [f"config file not found (point --config or ${CONFIG_PATH_ENV} at another file)"], source
        ) from None
    except OSError as exc:
        raise ConfigError([f"cannot read the config file: {exc.strerror or exc}"], source) from None
    except UnicodeDecodeError as exc:
        problem = f"byte {exc.start}: the config file is not UTF-8 text, as TOML requires"
        raise ConfigError([problem], source) from None
    return parse_config(text, source=source, environ=environ)


# Last, once everything a family schema uses is defined: the other families register themselves.
from ingestd.venues import families as _families  # noqa: E402,F401
