"""Maintenance of the time-series tables: partitions ahead of time, and retention.

Plain PostgreSQL (tables partitioned by day, see migrations/0002_time_series.postgres.sql and
0004_more_record_kinds.postgres.sql; every table in TIME_SERIES_TABLES):
- `ensure_partitions()` creates `<table>_pYYYYMMDD` for given UTC days; `run_maintenance()` calls it
  for today and the next `PARTITION_DAYS_AHEAD` days, and the sink calls it on demand for any
  other day a batch carries (a backfill of last week, a venue clock running ahead).
- Retention drops whole day partitions whose every row is older than `retention_days`: a day is
  kept until its last microsecond is `retention_days` old, so rows live at least `retention_days`
  and at most one day more. Dropping a partition is instant and leaves nothing to vacuum, where
  the legacy `DELETE FROM ticks WHERE ts < now() - interval '30 days'` rewrote every row.
  Only partitions named `<table>_pYYYYMMDD` are touched; partitions made by hand are left alone.

TimescaleDB (hypertables): retention is TimescaleDB's own retention policy (drop_chunks run by
its scheduler); `run_maintenance()` makes the policy match `retention_days`, adding, replacing or
removing it. Chunks are created by TimescaleDB itself.

Locking: DDL on a partition takes a strong lock on its parent, so each step runs in its own short
transaction under an advisory lock (two daemons do not race to create the same partition), with
`lock_timeout` so that a long report holding the table makes the step fail fast instead of
queueing every writer behind it; the steps after it are skipped (they would wait as long), and the
sink runs maintenance again five minutes later rather than in an hour.

Scheduling: the sink calls `run_maintenance()` from `open()` and then from `write()` at most once an
hour, before the batch (see ingestd.sinks.postgres). That is the simplest honest schedule inside a
blocking sink: no thread or timer of its own, and when nothing is written nothing needs a new
partition; the cost is that retention waits for the next write after an idle spell.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable

import psycopg
from psycopg import sql

logger = logging.getLogger("ingestd.db")

# The tables partitioned (or made hypertables) by time, all on column `ts` (migrations 0002 and 0004).
TIME_SERIES_TABLES = (
    "ticks", "books", "derivatives", "dex_metrics", "onchain_flows",
    "prices", "prediction_books", "prediction_trades", "whale_trades",
)

PARTITION_DAYS_AHEAD = 2  # besides today
MAINTENANCE_LOCK = 0x696E_6765_7374_02
LOCK_TIMEOUT = "5s"

EPOCH_DAY = dt.date(1970, 1, 1)
US_PER_DAY = 86_400_000_000
# Days a partition can be made for: what Python's date and a partition name can spell.
MIN_DAY_NUMBER = 0  # 1970-01-01
MAX_DAY_NUMBER = (dt.date(9999, 12, 30) - EPOCH_DAY).days


@dataclass
class MaintenanceReport:
    created: list[str] = field(default_factory=list)  # partitions created
    dropped: list[str] = field(default_factory=list)  # partitions dropped (or "<table>: N chunks")
    retention_policies: list[str] = field(default_factory=list)  # TimescaleDB policy changes
    problems: list[str] = field(default_factory=list)  # steps that failed and will be retried next run


def partition_name(table: str, day: dt.date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def day_of_us(ts_us: int) -> int:
    """Day number (days since 1970-01-01 UTC) of a microsecond timestamp."""
    return ts_us // US_PER_DAY


def partitioned_tables(conn: psycopg.Connection) -> list[str]:
    """Which of TIME_SERIES_TABLES are natively partitioned, in the current schema."""
    rows = conn.execute(
        """
        SELECT c.relname FROM pg_partitioned_table p
        JOIN pg_class c ON c.oid = p.partrelid
        WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = ANY(%s)
        """,
        (list(TIME_SERIES_TABLES),),
    ).fetchall()
    return sorted(name for (name,) in rows)


def hypertables(conn: psycopg.Connection) -> list[str]:
    """Which of TIME_SERIES_TABLES are TimescaleDB hypertables ([] without the extension)."""
    installed = conn.execute("SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')").fetchone()
    if not installed or not installed[0]:
        return []
    rows = conn.execute(
        "SELECT hypertable_name FROM timescaledb_information.hypertables"
        " WHERE hypertable_schema = current_schema() AND hypertable_name = ANY(%s)",
        (list(TIME_SERIES_TABLES),),
    ).fetchall()
    return sorted(name for (name,) in rows)


def existing_partitions(conn: psycopg.Connection, table: str) -> set[dt.date]:
    """Days that have a `<table>_pYYYYMMDD` partition."""
    pattern = re.compile(rf"^{re.escape(table)}_p(\d{{8}})$")
    rows = conn.execute(
        """
        SELECT c.relname FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class parent ON parent.oid = i.inhparent
        WHERE parent.relname = %s AND parent.relnamespace = current_schema()::regnamespace
        """,
        (table,),
    ).fetchall()
    days = set()
    for (name,) in rows:
        match = pattern.match(name)
        if match:
            try:
                days.add(dt.datetime.strptime(match[1], "%Y%m%d").date())
            except ValueError:
                pass
    return days


def ensure_partitions(conn: psycopg.Connection, table: str, days: Iterable[dt.date]) -> list[str]:
    """Create the day partitions of `table` that are missing; returns the names created.

    One transaction, under the maintenance advisory lock. A day already covered by a partition
    with another name (made by hand) is skipped. `conn` must be idle (not inside a transaction)."""
    days = sorted(set(days))
    if not days:
        return []
    created: list[str] = []
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MAINTENANCE_LOCK,))
        have = existing_partitions(conn, table)
        for day in days:
            if day in have:
                continue
            name = partition_name(table, day)
            statement = sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(name),
                sql.Identifier(table),
                sql.Literal(f"{day.isoformat()} 00:00:00+00"),
                sql.Literal(f"{(day + dt.timedelta(days=1)).isoformat()} 00:00:00+00"),
            )
            try:
                with conn.transaction():  # a savepoint: an overlap must not abort the other days
                    conn.execute(statement)
            except psycopg.errors.InvalidObjectDefinition as exc:  # "would overlap partition ..."
                logger.info("partition %s not created: %s", name, exc)
                continue
            created.append(name)
    for name in created:
        logger.info("created partition %s", name)
    return created


def drop_expired_partitions(conn: psycopg.Connection, table: str, retention_days: int, now: dt.datetime) -> list[str]:
    """Drop the `<table>_pYYYYMMDD` partitions whose whole day is older than retention_days."""
    if retention_days <= 0:
        return []
    cutoff = now - dt.timedelta(days=retention_days)
    dropped: list[str] = []
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MAINTENANCE_LOCK,))
        for day in sorted(existing_partitions(conn, table)):
            end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=dt.timezone.utc)
            if end > cutoff:
                break
            name = partition_name(table, day)
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
            dropped.append(name)
    for name in dropped:
        logger.info("retention: dropped partition %s (older than %d days)", name, retention_days)
    return dropped


def set_retention_policy(conn: psycopg.Connection, table: str, retention_days: int) -> str | None:
    """TimescaleDB: make `table`'s retention policy drop chunks older than retention_days (0: none).

    Returns a description of the change, or None when the policy already matched."""
    with conn.transaction():
        conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MAINTENANCE_LOCK,))
        row = conn.execute(
            "SELECT (config ->> 'drop_after')::interval FROM timescaledb_information.jobs"
            " WHERE proc_name = 'policy_retention' AND hypertable_schema = current_schema()"
            " AND hypertable_name = %s",
            (table,),
        ).fetchone()
        current = row[0] if row else None
        wanted = dt.timedelta(days=retention_days) if retention_days > 0 else None
        if current == wanted:
            return None
        if current is not None:
            conn.execute("SELECT remove_retention_policy(%s::regclass, if_exists => TRUE)", (table,))
        if wanted is not None:
            conn.execute(
                "SELECT add_retention_policy(%s::regclass, make_interval(days => %s))", (table, retention_days)
            )
    change = f"{table}: drop chunks older than {retention_days} days" if wanted else f"{table}: retention off"
    logger.info("retention policy %s", change)
    return change


def run_maintenance(
    conn: psycopg.Connection, retention_days: int, *, now: dt.datetime | None = None
) -> MaintenanceReport:
    """Create the coming days' partitions and apply retention (see the module docstring).

    `conn` must be idle with autocommit off; every step commits on its own. A step that fails on a
    lock timeout or similar is reported in `problems` and left for the next run; a lost connection
    raises psycopg.OperationalError."""
    now = now or dt.datetime.now(dt.timezone.utc)
    today = now.astimezone(dt.timezone.utc).date()
    report = MaintenanceReport()
    with conn.transaction():
        partitioned = partitioned_tables(conn)
        hyper = hypertables(conn)
    ahead = [today + dt.timedelta(days=i) for i in range(PARTITION_DAYS_AHEAD + 1)]
    steps: list[tuple[str, Callable[[], None]]] = []
    for table in partitioned:
        steps.append((f"{table}: create partitions",
                      lambda table=table: report.created.extend(ensure_partitions(conn, table, ahead))))
        steps.append((f"{table}: retention",
                      lambda table=table: report.dropped.extend(
                          drop_expired_partitions(conn, table, retention_days, now))))
    for table in hyper:

        def policy(table: str = table) -> None:
            change = set_retention_policy(conn, table, retention_days)
            if change:
                report.retention_policies.append(change)

        steps.append((f"{table}: retention policy", policy))
    for what, work in steps:
        if not _attempt(conn, report, what, work):
            # The tables are busy (a lock wait timed out): the remaining steps would most likely
            # wait as long each, and the caller's next batch waits for all of them. Next run.
            report.problems.append("remaining steps skipped until the next run")
            break
    return report


def _attempt(conn: psycopg.Connection, report: MaintenanceReport, what: str, work: Callable[[], None]) -> bool:
    """Run one step; False when it hit a lock timeout (the caller stops there)."""
    try:
        work()
    except psycopg.Error as exc:
        if conn.closed or conn.broken:
            raise  # the connection is gone: the caller reconnects
        # A lock timeout, a permission problem, a name clash: this step waits for the next run.
        report.problems.append(f"{what}: {exc}")
        logger.warning("maintenance: %s failed, retrying at the next run: %s", what, exc)
        return not isinstance(exc, psycopg.errors.LockNotAvailable)
    return True
