"""Versioned schema migrations: plain SQL files, applied in order, each in its own transaction.

Files live in `ingestd/db/migrations/` and are named `NNNN_name.sql`, or, when a step differs
between plain PostgreSQL and TimescaleDB, `NNNN_name.postgres.sql` plus `NNNN_name.timescale.sql`
(exactly one of the two is applied). Versions run 1, 2, 3, ... without holes. A shipped file is
never edited: a change is a new file. Every file is also idempotent on its own (IF NOT EXISTS,
CREATE OR REPLACE), so applying one by hand with psql and then running `ingestd db migrate` is
harmless.

`migrate(conn, timescale)`:
1. takes a session advisory lock (`MIGRATION_LOCK`), so two daemons starting together apply each
   step once: the second waits, then finds nothing left to do;
2. creates `schema_migrations (version, name, mode, checksum, applied_at)` if missing;
3. picks the mode: the one recorded by an earlier mode-specific step if any (a database never
   changes mode under our feet), else `timescale` when the config says `on`, or says `auto` and the
   extension is installed or preloaded (`shared_preload_libraries`), else `postgres`;
4. applies each missing version in one transaction together with its `schema_migrations` row, so a
   step is either fully applied and recorded or not at all.

A recorded step whose file has changed since (checksum) is reported with a warning, never re-run.
The one exception is an edit to comments only, listed in `EARLIER_CHECKSUMS`: a database migrated
from the earlier text has exactly the same schema, so it gets no warning.
A database with versions this code does not know (a newer ingestd migrated it) is used as is with
a warning: migrations only ever add, so older code keeps working against a newer schema.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from importlib import resources

import psycopg

logger = logging.getLogger("ingestd.db")

# pg_advisory_lock key: any constant works as long as every ingestd uses the same one.
MIGRATION_LOCK = 0x696E_6765_7374_01  # "ingest" + 1

MODES = ("postgres", "timescale")

# Checksums of shipped files that were later edited in their comments only: (name, mode) -> sha256s.
EARLIER_CHECKSUMS: dict[tuple[str, str], frozenset[str]] = {
    # onchain_flows.amount's comment said "raw token units"; amounts are scaled by the token's decimals.
    ("0002_time_series", "postgres"): frozenset({"237a315eb4b047df1f1f9bd1191bdd891b3ca74c60b7524d1a76a471c6fd5611"}),
    ("0002_time_series", "timescale"): frozenset({"0a29e58db154bc03a99c9dc72df73adb90a9bb2caa7b2c89499b2abbccc14a1a"}),
}

_FILE_NAME = re.compile(r"^(?P<version>\d{4})_(?P<name>[a-z0-9_]+?)(?:\.(?P<mode>postgres|timescale))?\.sql$")

_CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    mode       text        NOT NULL,  -- 'any', 'postgres' or 'timescale': which variant was applied
    checksum   text        NOT NULL,  -- sha256 of the file as applied
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(Exception):
    """The schema cannot be brought up to date (not retriable by reconnecting)."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str  # e.g. "0002_time_series"
    mode: str  # "any", "postgres" or "timescale"
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    @property
    def label(self) -> str:
        return self.name if self.mode == "any" else f"{self.name} ({self.mode})"


@dataclass
class MigrationResult:
    mode: str  # "postgres" or "timescale"
    version: int  # schema version after the run
    applied: list[Migration] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def up_to_date(self) -> bool:
        return not self.applied


def load_migrations() -> list[Migration]:
    """Every migration file shipped with this ingestd, in version order (checked for holes)."""
    found: list[Migration] = []
    directory = resources.files("ingestd.db") / "migrations"
    for entry in directory.iterdir():
        match = _FILE_NAME.match(entry.name)
        if match is None:
            if entry.name.endswith(".sql"):
                raise MigrationError(f"migration file {entry.name} is not named NNNN_name[.postgres|.timescale].sql")
            continue
        version = int(match["version"])
        found.append(
            Migration(version, f"{match['version']}_{match['name']}", match["mode"] or "any", entry.read_text("utf-8"))
        )
    if not found:
        # A wheel built without package data: pyproject.toml must list the SQL files, e.g.
        # [tool.setuptools.package-data] "ingestd.db" = ["migrations/*.sql"].
        raise MigrationError(f"no migration files in {directory}: this ingestd was packaged without its SQL files")
    found.sort(key=lambda m: (m.version, m.mode))
    by_version: dict[int, list[Migration]] = {}
    for m in found:
        by_version.setdefault(m.version, []).append(m)
    for expected, version in enumerate(sorted(by_version), start=1):
        if version != expected:
            raise MigrationError(f"migration {expected:04d} is missing (found {version:04d} instead)")
        modes = sorted(m.mode for m in by_version[version])
        if modes not in (["any"], sorted(MODES)):
            raise MigrationError(
                f"migration {version:04d} must be one file, or one .postgres.sql and one .timescale.sql; found {modes}"
            )
    return found


def plan(migrations: list[Migration], mode: str) -> list[Migration]:
    """The files to apply for a database in `mode`, one per version."""
    return [m for m in migrations if m.mode in ("any", mode)]


def latest_version(migrations: list[Migration] | None = None) -> int:
    migrations = load_migrations() if migrations is None else migrations
    return max((m.version for m in migrations), default=0)


def migrate(conn: psycopg.Connection, timescale: str = "auto") -> MigrationResult:
    """Bring the schema up to date. `conn` must not be in autocommit mode nor inside a transaction.

    Raises MigrationError when the configured mode contradicts the database or a step fails, and
    psycopg.OperationalError when the connection is lost (the caller reconnects and retries)."""
    if timescale not in ("auto", "on", "off"):
        raise ValueError(f"timescale must be auto, on or off, not {timescale!r}")
    if conn.autocommit:
        raise ValueError("migrate() needs a connection with autocommit off")
    migrations = load_migrations()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        return _migrate_locked(conn, migrations, timescale)
    finally:
        if not conn.closed and not conn.broken:
            if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                conn.rollback()
            with conn.transaction():
                conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


def _migrate_locked(conn: psycopg.Connection, migrations: list[Migration], timescale: str) -> MigrationResult:
    with conn.transaction():
        conn.execute(_CREATE_SCHEMA_MIGRATIONS)
    with conn.transaction():
        applied = {
            version: (name, mode, checksum)
            for version, name, mode, checksum in conn.execute(
                "SELECT version, name, mode, checksum FROM schema_migrations ORDER BY version"
            )
        }
        mode = _resolve_mode(conn, timescale, applied)
    result = MigrationResult(mode=mode, version=max(applied, default=0))
    todo = plan(migrations, mode)
    known = {m.version for m in todo}
    unknown = sorted(v for v in applied if v not in known)
    if unknown:
        result.warnings.append(
            f"the database has migrations this ingestd does not know ({', '.join(f'{v:04d}' for v in unknown)}):"
            " a newer ingestd migrated it; continuing, since migrations only add"
        )
    for m in todo:
        if m.version in applied:
            name, recorded_mode, checksum = applied[m.version]
            if checksum != m.checksum and checksum not in EARLIER_CHECKSUMS.get((m.name, m.mode), ()):
                result.warnings.append(
                    f"migration {m.label} was applied from a file that has changed since; not re-running it"
                )
            continue
        try:
            with conn.transaction():
                # Schema changes may take long on big tables; the session's statement timeout is
                # for the sink's writes, not for this.
                conn.execute("SET LOCAL statement_timeout = 0")
                conn.execute(m.sql)  # no parameters: sent as one simple query, so several statements are fine
                conn.execute(
                    "INSERT INTO schema_migrations (version, name, mode, checksum) VALUES (%s, %s, %s, %s)",
                    (m.version, m.name, m.mode, m.checksum),
                )
        except psycopg.OperationalError:
            raise
        except psycopg.Error as exc:
            raise MigrationError(f"migration {m.label} failed: {exc}") from exc
        logger.info("applied migration %s", m.label)
        result.applied.append(m)
        result.version = max(result.version, m.version)
    for warning in result.warnings:
        logger.warning("%s", warning)
    return result


def _resolve_mode(conn: psycopg.Connection, timescale: str, applied: dict[int, tuple[str, str, str]]) -> str:
    recorded = {mode for _, mode, _ in applied.values() if mode in MODES}
    if len(recorded) > 1:
        raise MigrationError("schema_migrations records both postgres and timescale steps; fix it by hand")
    if recorded:
        (mode,) = recorded
        if timescale == "on" and mode != "timescale":
            raise MigrationError(
                "timescale = on, but this database was set up for plain PostgreSQL (partitioned tables);"
                " converting it is a manual job: use timescale = auto or off"
            )
        if timescale == "off" and mode == "timescale":
            raise MigrationError("timescale = off, but this database was set up with TimescaleDB hypertables")
        return mode
    installed, available, preloaded = conn.execute(
        """
        SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'),
               EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),
               current_setting('shared_preload_libraries') ~ '(^|[ ,])timescaledb'
        """
    ).fetchone()
    if timescale == "on":
        if not (installed or available):
            raise MigrationError(
                "timescale = on, but the server has no timescaledb extension (use timescale = auto to fall"
                " back to native partitioning)"
            )
        return "timescale"
    if timescale == "auto" and (installed or (available and preloaded)):
        return "timescale"
    return "postgres"


def schema_mode(conn: psycopg.Connection) -> str | None:
    """The mode a migrated database was set up in, or None before the mode-specific step."""
    row = conn.execute(
        "SELECT mode FROM schema_migrations WHERE mode IN ('postgres', 'timescale') LIMIT 1"
    ).fetchone()
    return row[0] if row else None
