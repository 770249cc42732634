"""Config loading: the shipped file, every-problem-at-once reporting, secrets, instance mapping."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ingestd.config import (
    AlertsConfig,
    FEED_FAMILIES,
    SINK_TYPES,
    BinanceFeedConfig,
    FeedConfig,
    KafkaSinkConfig,
    PostgresSinkConfig,
    RedisSinkConfig,
    ConfigError,
    DaemonConfig,
    SqliteSinkConfig,
    load_config,
    options_of,
    parse_config,
)
from ingestd.secrets import Secret
from ingestd.supervisor import FEED_CLASSES

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "etc" / "ingestd.toml"


def problems_of(text: str, environ: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ=environ or {})
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


def only_problem(text: str, environ: dict[str, str] | None = None) -> str:
    problems = problems_of(text, environ)
    assert len(problems) == 1, problems
    return problems[0]


# --- the shipped configuration -----------------------------------------------------------------


def test_shipped_config_is_valid():
    config = load_config(SHIPPED, environ={})
    assert config.source == str(SHIPPED)
    assert list(config.sinks) == ["local"]
    feed = config.feeds["binance"]
    assert feed.symbols == ("BTCUSDT", "ETHUSDT", "SOLUSDT", "BNBUSDT", "XRPUSDT")
    assert feed.sinks == ("local",)


def test_shipped_config_documents_every_key_with_its_default():
    # The file is the reference documentation: a key added to the schema must appear there,
    # and the values it shows must be the real defaults (symbols is the one deliberate example).
    text = SHIPPED.read_text()
    sections = [DaemonConfig, AlertsConfig, SqliteSinkConfig, PostgresSinkConfig, RedisSinkConfig, KafkaSinkConfig,
                BinanceFeedConfig]
    for cls in sections:
        for key in options_of(cls):
            assert re.search(rf"^(# )?{key} = ", text, re.MULTILINE), f"{cls.__name__}.{key} missing from {SHIPPED}"
    config = load_config(SHIPPED, environ={})
    shipped = {
        DaemonConfig: config.daemon,
        AlertsConfig: config.alerts,
        SqliteSinkConfig: config.sinks["local"],
        BinanceFeedConfig: config.feeds["binance"],
    }
    for cls, section in shipped.items():
        for key, spec in options_of(cls).items():
            if (cls, key) != (BinanceFeedConfig, "symbols"):
                assert getattr(section, key) == spec.default, f"{cls.__name__}.{key} differs from its default"


def test_empty_file_gives_defaults_and_an_implicit_local_sqlite_sink():
    config = parse_config("", environ={})
    assert config.daemon == DaemonConfig()
    assert config.sinks == {"local": SqliteSinkConfig(name="local", type="sqlite")}
    assert config.feeds == {}


def test_registries_are_keyed_by_type_and_family():
    assert SINK_TYPES == {
        "sqlite": SqliteSinkConfig, "postgres": PostgresSinkConfig, "redis": RedisSinkConfig, "kafka": KafkaSinkConfig,
    }
    assert FEED_FAMILIES["binance"] is BinanceFeedConfig
    # Every family registers a FeedConfig under the name it runs as, and the supervisor can build it.
    assert {"binance", "bybit", "uniswap", "evm", "polymarket", "coingecko"} <= set(FEED_FAMILIES)
    for family, schema in FEED_FAMILIES.items():
        assert issubclass(schema, FeedConfig), family
        assert family in FEED_CLASSES, f"{family} has a schema but no feed class in supervisor.FEED_CLASSES"


def test_sections_are_frozen():
    config = parse_config("[feeds.binance]\n", environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.feeds["binance"].pairs_per_connection = 3  # type: ignore[misc]


# --- every problem, at once, with its path -----------------------------------------------------

BROKEN = """\
[daemon]
log_level = "verbose"
batch_size = 0
linger_ms = true

[sinks.local]
type = "sqlite"
synchronous = "fast"

[feeds.binance]
pairs_per_connection = "fifty"
pairs_per_conection = 3
sinks = ["local", "warehouse"]
shard = "5/4"
ws_url = "https://stream.binance.com"
"""


def test_broken_file_reports_every_problem_with_its_key_path():
    problems = problems_of(BROKEN)
    assert problems == [
        'daemon.log_level: expected one of "debug", "info", "warning", "error", got "verbose"',
        "daemon.batch_size: expected an integer from 1 to 1000000, got 0",
        "daemon.linger_ms: expected an integer from 1 to 60000, got true",
        'sinks.local.synchronous: expected one of "off", "normal", "full", got "fast"',
        'feeds.binance.pairs_per_conection: unknown key; did you mean "pairs_per_connection"?',
        'feeds.binance.shard: expected a shard "i/N" with 1 <= i <= N (like "2/4"), got "5/4"',
        'feeds.binance.ws_url: expected a ws:// or wss:// URL, got "https://stream.binance.com"',
        'feeds.binance.pairs_per_connection: expected an integer from 1 to 512, got "fifty"',
        'feeds.binance.sinks: sink "warehouse" is not defined (defined: local); add a [sinks.warehouse] table',
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[feeds.binance]\nbook_levls = 5\n", 'feeds.binance.book_levls: unknown key; did you mean "book_levels"?'),
        ("[deamon]\n", 'deamon: unknown section; did you mean "daemon"?'),
        ("[feeds.binanse]\n", 'feeds.binanse: unknown feed family; did you mean "binance"?'),
        ("[daemon]\nzzz = 1\n", "daemon.zzz: unknown key; valid: state_dir, runtime_dir, log_level,"),
        # Fields filled from the table name are not keys: writing them must not be silently ignored.
        ('[feeds.binance]\nfamily = "bybit"\n', "feeds.binance.family: unknown key;"),
        ('[sinks.local]\ntype = "sqlite"\nname = "x"\n', "sinks.local.name: unknown key;"),
    ],
)
def test_unknown_keys_suggest_the_closest_valid_one(text, expected):
    assert only_problem(text).startswith(expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("[daemon]\nbatch_size = 2.5\n", "daemon.batch_size: expected an integer from 1 to 1000000, got 2.5"),
        ("[daemon]\nshutdown_timeout_s = 61\n", "daemon.shutdown_timeout_s: expected a number from 0.1 to 60, got 61"),
        ("[daemon]\nhttp_port = 70000\n", "daemon.http_port: expected an integer from 0 to 65535, got 70000"),
        ("[feeds.binance]\ndepth = \"yes\"\n", 'feeds.binance.depth: expected true or false, got "yes"'),
        ("[feeds.binance]\ndepth_speed_ms = 250\n", "feeds.binance.depth_speed_ms: expected one of 100, 1000, got 250"),
        ("[feeds.binance]\nrest_url = \"ftp://x\"\n", 'feeds.binance.rest_url: expected a http:// or https:// URL, got "ftp://x"'),
        ("[feeds.binance]\nmax_outgoing_per_s = 10\n", "feeds.binance.max_outgoing_per_s: expected a number from 0.1 to 5, got 10"),
        ("[feeds.binance]\nsymbols = \"BTCUSDT\"\n", 'feeds.binance.symbols: expected a list of symbols, got "BTCUSDT"'),
        ("[feeds.binance]\nsinks = []\n", "feeds.binance.sinks: expected a non-empty list of sink names, got []"),
        ("[feeds]\nbinance = 3\n", "feeds.binance: expected a table, got 3"),
        ("[sinks.db]\npath = \"x\"\n", 'sinks.db.type: expected one of "sqlite", "postgres", "redis", "kafka", got nothing (the key is required)'),
    ],
)
def test_wrong_types_and_out_of_range_values(text, expected):
    assert only_problem(text) == expected


def test_list_items_are_checked_one_by_one():
    problems = problems_of('[feeds.binance]\nsymbols = ["BTCUSDT", "eth", 7]\n')
    assert problems == [
        'feeds.binance.symbols[1]: expected a symbol of 2 to 20 characters A-Z, 0-9 (like "BTCUSDT"), got "eth"',
        'feeds.binance.symbols[2]: expected a symbol of 2 to 20 characters A-Z, 0-9 (like "BTCUSDT"), got 7',
    ]
    assert only_problem('[feeds.binance]\nsymbols = ["BTCUSDT", "BTCUSDT"]\n') == (
        'feeds.binance.symbols: "BTCUSDT" is listed twice'
    )


def test_undefined_sink_reference_is_named_with_a_suggestion():
    text = '[sinks.archive]\ntype = "sqlite"\n[feeds.binance]\nsinks = ["archiv"]\n'
    assert only_problem(text) == (
        'feeds.binance.sinks: sink "archiv" is not defined (defined: archive); did you mean "archive"?'
    )


def test_implicit_local_sink_disappears_once_sinks_are_declared():
    text = '[sinks.archive]\ntype = "sqlite"\n[feeds.binance]\n'
    assert "sink \"local\" is not defined" in only_problem(text)


@pytest.mark.parametrize(
    "shard_lines, expected",
    [
        ('shard = "0/4"', 'feeds.binance.shard: expected a shard "i/N" with 1 <= i <= N (like "2/4"), got "0/4"'),
        ('shard = "two"', 'feeds.binance.shard: expected a shard "i/N" with 1 <= i <= N (like "2/4"), got "two"'),
        ('shard = "1/3"\nshards = 4', 'feeds.binance.shard: "1/3" disagrees with shards = 4; make N match or drop one of them'),
    ],
)
def test_bad_shard(shard_lines, expected):
    assert only_problem(f"[feeds.binance]\n{shard_lines}\n") == expected


def test_cross_field_rules():
    text = "[feeds.binance]\nreconnect_base_s = 40\nreconnect_cap_s = 10\nbook_levels = 100\nsnapshot_limit = 50\n"
    assert problems_of(text) == [
        "feeds.binance.reconnect_base_s: must not exceed reconnect_cap_s (10), got 40",
        "feeds.binance.book_levels: must not exceed snapshot_limit (50), got 100",
    ]


def test_toml_syntax_error_reports_line_and_column():
    problem = only_problem('[daemon]\nlog_level = "info"\nbatch_size = = 3\n')
    assert problem.startswith("line 3, column 14: TOML syntax error: ")
    assert only_problem('[daemon]\nlog_level = "info').startswith("end of file: TOML syntax error: ")


def test_missing_file_says_how_to_point_elsewhere(tmp_path):
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "nope.toml", environ={})
    assert caught.value.source == str(tmp_path / "nope.toml")
    assert caught.value.problems == ["config file not found (point --config or $INGESTD_CONFIG at another file)"]


# --- environment overrides from the seed service -----------------------------------------------


def test_seed_environment_variables_override_the_binance_feed():
    environ = {
        "PAIRS_PER_CONNECTION": "25",
        "FALLBACK_PAIRS": "BTCUSDT, ETHUSDT",
        "BINANCE_WS_URL": "ws://127.0.0.1:9000",
        "HEALTH_PORT": "0",
    }
    config = parse_config("[feeds.binance]\npairs_per_connection = 100\n", environ=environ)
    feed = config.feeds["binance"]
    assert (feed.pairs_per_connection, feed.fallback_pairs, feed.ws_url) == (25, ("BTCUSDT", "ETHUSDT"), "ws://127.0.0.1:9000")
    assert config.daemon.http_port == 0


def test_empty_environment_variables_count_as_unset():
    config = parse_config("[feeds.binance]\n", environ={"PAIRS_PER_CONNECTION": ""})
    assert config.feeds["binance"].pairs_per_connection == 50


def test_bad_environment_override_is_reported_with_the_variable_name():
    problems = problems_of("[feeds.binance]\n", {"PAIRS_PER_CONNECTION": "fifty", "FALLBACK_PAIRS": "BTCUSDT,b"})
    assert problems == [
        '$FALLBACK_PAIRS[1]: expected a symbol of 2 to 20 characters A-Z, 0-9 (like "BTCUSDT"), got "b" '
        "(set in the environment; overrides feeds.binance.fallback_pairs)",
        '$PAIRS_PER_CONNECTION: expected an integer from 1 to 512, got "fifty" '
        "(set in the environment; overrides feeds.binance.pairs_per_connection)",
    ]


# --- secrets -----------------------------------------------------------------------------------

SECRET_URL = "https://user:hunter2-very-secret@api.example.com"


def test_secret_from_environment():
    config = parse_config('[feeds.binance]\nrest_url = { env = "REST" }\n', environ={"REST": SECRET_URL})
    rest_url = config.feeds["binance"].rest_url
    assert isinstance(rest_url, Secret)
    assert rest_url.reveal() == SECRET_URL
    assert rest_url.origin == "$REST"


def test_secret_from_credentials_directory(tmp_path):
    (tmp_path / "binance-rest").write_text(SECRET_URL + "\n")
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path)}
    config = parse_config('[feeds.binance]\nrest_url = { credential = "binance-rest" }\n', environ=environ)
    assert config.feeds["binance"].rest_url.reveal() == SECRET_URL  # trailing newline dropped


def test_secret_never_appears_in_str_repr_or_format():
    config = parse_config('[feeds.binance]\nrest_url = { env = "REST" }\n', environ={"REST": SECRET_URL})
    secret = config.feeds["binance"].rest_url
    for shown in (str(secret), repr(secret), f"{secret}", f"{secret:>40}", repr(config), str(config.feeds)):
        assert "hunter2" not in shown
    assert str(secret) == repr(secret) == "***"


def test_invalid_secret_value_is_reported_without_the_value():
    problem = only_problem('[feeds.binance]\nws_url = { env = "WS" }\n', {"WS": SECRET_URL})
    assert problem == "feeds.binance.ws_url: expected a ws:// or wss:// URL, got the secret from $WS (value hidden)"


@pytest.mark.parametrize(
    "reference, environ, expected",
    [
        ('{ env = "REST" }', {}, "feeds.binance.rest_url: environment variable $REST is not set"),
        ('{ credential = "rest" }', {}, 'feeds.binance.rest_url: credential "rest" needs $CREDENTIALS_DIRECTORY'),
        ('{ credential = "rest" }', {"CREDENTIALS_DIRECTORY": "/nonexistent"}, 'feeds.binance.rest_url: credential "rest" not found'),
        ('{ credential = "../etc/shadow" }', {"CREDENTIALS_DIRECTORY": "/tmp"}, "feeds.binance.rest_url: credential \"../etc/shadow\" must be a plain file name"),
        ('{ env = "A", credential = "b" }', {}, "feeds.binance.rest_url: a secret reference takes exactly one of"),
    ],
)
def test_unresolvable_secret_names_the_key(reference, environ, expected):
    assert only_problem(f"[feeds.binance]\nrest_url = {reference}\n", environ).startswith(expected)


def test_secrets_are_refused_for_enumerated_options():
    problem = only_problem('[feeds.binance]\ntrade_stream = { env = "T" }\n', {"T": "trade"})
    assert problem == (
        'feeds.binance.trade_stream: expected one of "trade", "aggTrade", got a secret reference '
        "(only free-text keys take those)"
    )


def test_secret_value_is_not_in_any_error_message(tmp_path):
    (tmp_path / "c").write_text(SECRET_URL)
    environ = {"E": SECRET_URL, "CREDENTIALS_DIRECTORY": str(tmp_path), "PAIRS_PER_CONNECTION": "x"}
    text = (
        '[daemon]\nhttp_host = { env = "E" }\nbatch_size = 0\n'
        '[feeds.binance]\nws_url = { env = "E" }\nrest_url = { credential = "c" }\nfoo = 1\n'
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, environ=environ)
    assert len(caught.value.problems) == 4  # batch_size, foo, ws_url, PAIRS_PER_CONNECTION
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value)


# --- instances ---------------------------------------------------------------------------------


def test_feed_for_plain_instance():
    config = parse_config("[feeds.binance]\n", environ={})
    family, feed = config.feed_for_instance("binance")
    assert family == "binance"
    assert feed is config.feeds["binance"]
    assert feed.shard is None


def test_feed_for_shard_instance():
    config = parse_config("[feeds.binance]\nshards = 4\n", environ={})
    family, feed = config.feed_for_instance("binance-2")
    assert (family, feed.shard, feed.shards) == ("binance", (2, 4), 4)
    assert config.feeds["binance"].shard is None  # the shared config is untouched


@pytest.mark.parametrize(
    "text, instance, expected",
    [
        ("[feeds.binance]\n", "bybit", 'instance "bybit": no [feeds.bybit] table (configured feeds: binance)'),
        ("[feeds.binance]\nshards = 2\n", "binance-3", 'instance "binance-3": shard 3 does not exist, feeds.binance.shards = 2'),
        ("[feeds.binance]\n", "binance-2", 'instance "binance-2": shard 2 does not exist, feeds.binance.shards = 1'),
        ('[feeds.binance]\nshard = "1/3"\n', "binance-2", 'instance "binance-2": names shard 2, but feeds.binance.shard = "1/3"'),
        ("[feeds.binance]\nshards = 2\n", "binance", 'instance "binance": feeds.binance.shards = 2, so run binance-1 to binance-2'),
        ("[feeds.binance]\nenabled = false\n", "binance", 'instance "binance": feeds.binance.enabled is false'),
        ("[feeds.binance]\n", "Binance!", 'instance "Binance!": expected FAMILY or FAMILY-i'),
    ],
)
def test_feed_for_instance_errors(text, instance, expected):
    config = parse_config(text, environ={})
    with pytest.raises(ConfigError) as caught:
        config.feed_for_instance(instance)
    assert str(caught.value).startswith(expected)
