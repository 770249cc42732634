"""Schema migrations, data-quality views and `ingestd db migrate` against a real PostgreSQL server."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import threading
from pathlib import Path

import psycopg
import pytest

from ingestd.db import migrate
from ingestd.db.migrate import MigrationError, latest_version, load_migrations
from tests.pg_server import Database, free_port, pg_database, pg_server  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]

TABLES = ("assets", "dex_pools", "ticks", "books", "derivatives", "dex_metrics", "onchain_flows", "checkpoints",
          "prices", "prediction_books", "prediction_trades", "whale_trades")
TIME_SERIES = ("ticks", "books", "derivatives", "dex_metrics", "onchain_flows", "prices", "prediction_books",
               "prediction_trades", "whale_trades")
PRICE_VIEWS = ("price_latest", "price_volatility", "price_daily", "price_comparisons", "price_roi")


@pytest.fixture
def conn(pg_database: Database):
    c = psycopg.connect(pg_database.conninfo)
    yield c
    c.close()


def column_types(conn: psycopg.Connection, table: str) -> dict[str, str]:
    rows = conn.execute(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s", (table,)
    ).fetchall()
    conn.rollback()
    return dict(rows)


def primary_key(conn: psycopg.Connection, table: str) -> list[str]:
    rows = conn.execute(
        """
        SELECT a.attname FROM pg_index i
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = %s::regclass AND i.indisprimary
        ORDER BY array_position(i.indkey, a.attnum)
        """,
        (table,),
    ).fetchall()
    conn.rollback()
    return [name for (name,) in rows]


def test_migrations_apply_once_and_a_second_run_is_up_to_date(conn: psycopg.Connection) -> None:
    first = migrate(conn)
    assert first.mode == "postgres"
    assert [m.label for m in first.applied] == [
        "0001_reference_tables", "0002_time_series (postgres)", "0003_data_quality_views",
        "0004_more_record_kinds (postgres)", "0005_whales",
    ]
    assert first.version == latest_version() == 5
    second = migrate(conn)
    assert second.up_to_date and second.version == 5 and second.warnings == []
    rows = conn.execute("SELECT version, name, mode FROM schema_migrations ORDER BY version").fetchall()
    assert rows == [(1, "0001_reference_tables", "any"), (2, "0002_time_series", "postgres"),
                    (3, "0003_data_quality_views", "any"), (4, "0004_more_record_kinds", "postgres"),
                    (5, "0005_whales", "any")]


def test_every_migration_file_is_idempotent_on_its_own(conn: psycopg.Connection) -> None:
    migrate(conn)
    for m in load_migrations():
        if m.mode in ("any", "postgres"):
            conn.execute(m.sql)  # as an operator re-running a file with psql would
            conn.commit()


def test_the_schema_has_every_table_key_and_view(conn: psycopg.Connection) -> None:
    migrate(conn)
    for table in TABLES:
        assert column_types(conn, table), table
    assert primary_key(conn, "ticks") == ["venue", "symbol", "trade_id", "ts"]
    assert primary_key(conn, "books") == ["venue", "symbol", "update_id", "ts"]
    assert primary_key(conn, "derivatives") == ["venue", "symbol", "ts"]
    assert primary_key(conn, "dex_metrics") == ["chain", "pool_address", "ts"]
    assert primary_key(conn, "onchain_flows") == ["chain", "block_hash", "log_index", "ts"]
    assert primary_key(conn, "checkpoints") == ["venue", "symbol"]
    assert primary_key(conn, "dex_pools") == ["chain", "address"]
    assert primary_key(conn, "assets") == ["asset_id"]
    ticks = column_types(conn, "ticks")
    assert ticks["ts"] == "timestamp with time zone" and ticks["price"] == "double precision"
    assert ticks["trade_id"] == "bigint"
    assert column_types(conn, "books")["bids"] == "jsonb"
    assert column_types(conn, "onchain_flows")["amount"] == "numeric"
    assert column_types(conn, "assets")["risk_tags"] == "ARRAY"
    partitioned = {name for (name,) in conn.execute(
        "SELECT c.relname FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid"
    )}
    assert partitioned == set(TIME_SERIES)
    views = {name for (name,) in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    assert {"dq_tick_gaps", "dq_price_outliers", *PRICE_VIEWS} <= views


def test_the_runbooks_asset_insert_works(conn: psycopg.Connection) -> None:
    migrate(conn)
    conn.execute(
        "INSERT INTO assets (symbol, chain, address, sector, risk_tags) VALUES ('MATIC', 'polygon', NULL, 'Layer1',"
        " ARRAY['mid-cap'])"
    )
    conn.execute("INSERT INTO dex_pools (chain, address, token0, token1, fee_bps) VALUES ('ethereum', '0x1', 'USDC',"
                 " 'MATIC', 30)")
    assert conn.execute("SELECT asset_id, risk_tags FROM assets").fetchall() == [(1, ["mid-cap"])]


def test_two_daemons_migrating_at_once_apply_each_step_once(pg_database: Database) -> None:
    results, errors = [], []
    barrier = threading.Barrier(4)

    def run() -> None:
        try:
            with psycopg.connect(pg_database.conninfo) as c:
                barrier.wait()
                results.append(migrate(c))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r.applied) for r in results) == [0, 0, 0, 5]


def test_timescale_on_without_the_extension_is_refused(conn: psycopg.Connection) -> None:
    with pytest.raises(MigrationError, match="no timescaledb extension"):
        migrate(conn, "on")
    assert migrate(conn, "auto").mode == "postgres"  # auto falls back to native partitioning
    with pytest.raises(MigrationError, match="set up for plain PostgreSQL"):
        migrate(conn, "on")  # and a database keeps its mode
    assert migrate(conn, "off").up_to_date


def test_a_changed_applied_file_is_reported_not_rerun(conn: psycopg.Connection) -> None:
    migrate(conn)
    conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 3")
    conn.execute("INSERT INTO schema_migrations (version, name, mode, checksum) VALUES (99, '0099_future', 'any', 'x')")
    conn.commit()
    result = migrate(conn)
    assert result.up_to_date
    assert any("0003_data_quality_views" in w and "changed" in w for w in result.warnings)
    assert any("0099" in w and "newer ingestd" in w for w in result.warnings)


# --- data-quality views --------------------------------------------------------------------------


def test_data_quality_views_find_gaps_and_outliers_in_the_last_hour(pg_database: Database, conn) -> None:
    from ingestd.model import Trade
    from ingestd.sinks.postgres import PostgresSink
    from tests.integration.test_postgres_sink import config

    now = int(dt.datetime.now(dt.timezone.utc).timestamp() * 1e6)
    minute = 60_000_000
    trades = [
        Trade("binance", "BTCUSDT", 1, 100.0, 1.0, "buy", now - 50 * minute, now),
        Trade("binance", "BTCUSDT", 2, 101.0, 1.0, "buy", now - 49 * minute, now),
        Trade("binance", "BTCUSDT", 3, 130.0, 1.0, "buy", now - 20 * minute, now),  # +28.7 % after 29 min
        Trade("binance", "BTCUSDT", 4, 129.0, 1.0, "buy", now - 19 * minute, now),
        Trade("bybit", "BTCUSDT", 1, 50.0, 1.0, "buy", now - 18 * minute, now),  # another venue: no outlier
        Trade("binance", "ETHUSDT", 1, 10.0, 1.0, "buy", now - 3 * 60 * minute, now),  # older than an hour
        Trade("binance", "ETHUSDT", 2, 1.0, 1.0, "buy", now - 2 * minute, now),
    ]
    sink = PostgresSink("pg", config(pg_database))
    sink.open()
    try:
        sink.write(trades)
    finally:
        sink.close()
    gaps = conn.execute("SELECT venue, symbol, gap FROM dq_tick_gaps LIMIT 10").fetchall()
    assert gaps[0] == ("binance", "BTCUSDT", dt.timedelta(minutes=29))
    assert len(gaps) == 3  # BTCUSDT on binance: 3 gaps; bybit and ETHUSDT: one trade each in the hour
    outliers = conn.execute("SELECT venue, symbol, trade_id, price, prev_price FROM dq_price_outliers").fetchall()
    assert outliers == [("binance", "BTCUSDT", 3, 130.0, 101.0)]


# --- ingestd db migrate ------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}  # no $POSTGRES_* from the caller's environment
    return subprocess.run(
        [sys.executable, "-m", "ingestd", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=60
    )


def write_config(path: Path, db: Database, *, extra: str = "") -> Path:
    path.write_text(
        f"""
[sinks.pg]
type = "postgres"
host = "{db.host}"
port = {db.port}
dbname = "{db.dbname}"
user = "{db.user}"
{extra}
"""
    )
    return path


def test_cli_migrate_applies_then_reports_up_to_date(pg_database: Database, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "ingestd.toml", pg_database)
    first = run_cli("db", "migrate", "--config", str(cfg))
    assert first.returncode == 0, first.stderr
    assert ("sinks.pg: applied 0001_reference_tables, 0002_time_series (postgres), 0003_data_quality_views,"
            " 0004_more_record_kinds (postgres), 0005_whales; schema v5 (postgres)") in first.stdout
    second = run_cli("--config", str(cfg), "db", "migrate", "--sink", "pg")
    assert second.returncode == 0, second.stderr
    assert "sinks.pg: up to date (schema v5, postgres)" in second.stdout


def test_cli_migrate_fails_clearly_when_it_cannot_connect(pg_database: Database, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "ingestd.toml", pg_database)
    port = free_port()
    cfg.write_text(cfg.read_text().replace(f"port = {pg_database.port}", f"port = {port}")
                   + '\n[sinks.local]\ntype = "sqlite"\n')
    result = run_cli("db", "migrate", "--config", str(cfg))
    assert result.returncode == 1
    assert f"ingestd: sinks.pg: cannot connect to ingestd@127.0.0.1:{port}/{pg_database.dbname}" in result.stderr
    assert result.stdout == ""


def test_cli_migrate_usage_problems_exit_2(pg_database: Database, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "ingestd.toml", pg_database, extra='[sinks.local]\ntype = "sqlite"\n')
    missing = run_cli("db", "migrate", "--config", str(cfg), "--sink", "nope")
    assert missing.returncode == 2 and "has no [sinks.nope]" in missing.stderr
    sqlite = run_cli("db", "migrate", "--config", str(cfg), "--sink", "local")
    assert sqlite.returncode == 2 and "not postgres" in sqlite.stderr
    none = tmp_path / "none.toml"
    none.write_text('[sinks.local]\ntype = "sqlite"\n')
    nothing = run_cli("db", "migrate", "--config", str(none))
    assert nothing.returncode == 2 and 'no [sinks.NAME] with type = "postgres"' in nothing.stderr
    no_command = run_cli("db")
    assert no_command.returncode == 2


# --- the TimescaleDB variant, against a stand-in of its API ------------------------------------------
# Debian ships no TimescaleDB, so the .timescale.sql file cannot run for real here. These stubs have
# the signatures of TimescaleDB 2.x's documented functions and views and record their calls: the test
# proves the file parses, resolves every call and argument name, and asks for the right hypertables,
# policies and retention changes. It cannot prove what TimescaleDB itself then does.

TIMESCALE_STUBS = """
CREATE TABLE ts_calls (call text);
CREATE TABLE ts_jobs (proc_name text, hypertable_schema name, hypertable_name name, config jsonb);
CREATE FUNCTION create_hypertable(
    relation regclass, time_column_name name, partitioning_column name DEFAULT NULL,
    number_partitions integer DEFAULT NULL, associated_schema_name name DEFAULT NULL,
    associated_table_prefix name DEFAULT NULL, chunk_time_interval anyelement DEFAULT NULL,
    create_default_indexes boolean DEFAULT true, if_not_exists boolean DEFAULT false,
    partitioning_func regproc DEFAULT NULL, migrate_data boolean DEFAULT false
) RETURNS TABLE (hypertable_id integer, schema_name name, table_name name, created boolean)
LANGUAGE sql AS $$
    INSERT INTO ts_calls VALUES (format('create_hypertable %s %s %s', relation, time_column_name, chunk_time_interval));
    SELECT 1, 'public'::name, relation::text::name, true;
$$;
CREATE FUNCTION add_compression_policy(hypertable regclass, compress_after anyelement DEFAULT NULL,
                                       if_not_exists boolean DEFAULT false) RETURNS integer
LANGUAGE sql AS $$ INSERT INTO ts_calls VALUES (format('add_compression_policy %s %s', hypertable, compress_after));
                   SELECT 1 $$;
CREATE FUNCTION add_retention_policy(relation regclass, drop_after anyelement DEFAULT NULL,
                                     if_not_exists boolean DEFAULT false) RETURNS integer
LANGUAGE sql AS $$
    INSERT INTO ts_jobs VALUES ('policy_retention', 'public', relation::text,
                                jsonb_build_object('drop_after', drop_after::text));
    INSERT INTO ts_calls VALUES (format('add_retention_policy %s %s', relation, drop_after));
    SELECT 1
$$;
CREATE FUNCTION remove_retention_policy(relation regclass, if_exists boolean DEFAULT false) RETURNS void
LANGUAGE sql AS $$
    DELETE FROM ts_jobs WHERE hypertable_name = relation::text;
    INSERT INTO ts_calls VALUES (format('remove_retention_policy %s', relation));
$$;
CREATE SCHEMA timescaledb_information;
CREATE VIEW timescaledb_information.hypertables AS
    SELECT 'public'::name AS hypertable_schema, table_name AS hypertable_name, true AS compression_enabled
    FROM ts_calls, LATERAL (SELECT split_part(call, ' ', 2)::name AS table_name) t
    WHERE call LIKE 'create_hypertable %';
CREATE VIEW timescaledb_information.jobs AS SELECT * FROM ts_jobs;
"""


def test_the_timescale_variant_runs_against_a_stand_in_of_the_timescaledb_api(conn: psycopg.Connection) -> None:
    from ingestd.db.maintenance import set_retention_policy

    conn.execute(TIMESCALE_STUBS)
    for m in load_migrations():
        if m.mode in ("any", "timescale"):
            statements = m.sql.replace("CREATE EXTENSION IF NOT EXISTS timescaledb;", "")
            conn.execute(statements)
    conn.commit()
    calls = [c for (c,) in conn.execute("SELECT call FROM ts_calls")]
    first = ["ticks", "books", "derivatives", "dex_metrics", "onchain_flows"]  # 0002
    then = ["prices", "prediction_books", "prediction_trades", "whale_trades"]  # 0004
    assert calls == (
        [f"create_hypertable {t} ts 1 day" for t in first] + [f"add_compression_policy {t} 7 days" for t in first]
        + [f"create_hypertable {t} ts 1 day" for t in then] + [f"add_compression_policy {t} 7 days" for t in then]
    )
    assert column_types(conn, "derivatives")["recv_ts"] == "timestamp with time zone"
    views = {name for (name,) in conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    assert set(PRICE_VIEWS) <= views
    for table in TIME_SERIES:  # plain tables, not partitioned: TimescaleDB makes the chunks
        assert conn.execute("SELECT relkind FROM pg_class WHERE relname = %s", (table,)).fetchone() == ("r",)
    assert primary_key(conn, "ticks") == ["venue", "symbol", "trade_id", "ts"]
    conn.rollback()
    assert set_retention_policy(conn, "ticks", 30) == "ticks: drop chunks older than 30 days"
    assert set_retention_policy(conn, "ticks", 30) is None  # already so
    assert set_retention_policy(conn, "ticks", 7) == "ticks: drop chunks older than 7 days"
    assert set_retention_policy(conn, "ticks", 0) == "ticks: retention off"
    calls = [c for (c,) in conn.execute("SELECT call FROM ts_calls WHERE call LIKE '%retention%'")]
    assert calls == [
        "add_retention_policy ticks 30 days", "remove_retention_policy ticks", "add_retention_policy ticks 7 days",
        "remove_retention_policy ticks",
    ]
