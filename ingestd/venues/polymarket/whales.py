"""The `whales` table: the wallets the Polymarket feed watches, with the legacy service's fields.

It lives in the SQL store the instance writes to: the SQLite file of a `sqlite` sink (created here,
`CREATE TABLE IF NOT EXISTS`, since that sink's schema is not ours to extend), or the database of
a `postgres` sink (migration 0005_whales.sql, applied by the sink's migrations). A wallet is
watched while `is_copying_enabled` is true, as in the service this replaces.

Both stores are blocking (sqlite3, psycopg) and short-lived: open, do one thing, close. The feed
calls them through `trio.to_thread`, the `ingestd whales` command directly.
"""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path
from typing import Any, Iterable, Protocol

import msgspec

from ingestd.sinks import sql_store

ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
TIERS = ("MEGA", "LARGE", "MEDIUM", "SMALL")  # the seed's tiers; any other text is stored as given

BUSY_TIMEOUT_S = 10.0


class Whale(msgspec.Struct, kw_only=True):
    address: str  # lowercase 0x hex
    pseudonym: str | None = None
    tier: str | None = None
    notes: str | None = None
    cluster_name: str | None = None
    is_famous: bool = False
    estimated_pnl: float | None = None
    primary_category: str | None = None
    win_rate: float | None = None  # percent, as the seed writes it (65.0)
    total_volume: float | None = None
    is_confirmed: bool = False
    is_copying_enabled: bool = False
    created_at: str | None = None  # ISO 8601 UTC, set by the store
    updated_at: str | None = None


# Columns a user sets (all but the timestamps), in table order.
FIELDS = ("address", "pseudonym", "tier", "notes", "cluster_name", "is_famous", "estimated_pnl",
          "primary_category", "win_rate", "total_volume", "is_confirmed", "is_copying_enabled")
_COLUMNS = FIELDS + ("created_at", "updated_at")


def normalize_address(text: str) -> str:
    if not isinstance(text, str) or not ADDRESS.fullmatch(text.strip()):
        raise ValueError(f'expected a wallet address ("0x" and 40 hex digits), got {text!r}')
    return text.strip().lower()


class WhaleStore(Protocol):
    description: str

    def ensure_schema(self) -> None: ...

    def load(self, *, enabled_only: bool) -> list[Whale]: ...

    def upsert(self, whales: Iterable[Whale]) -> int: ...

    def set_enabled(self, addresses: Iterable[str], enabled: bool) -> list[str]:
        """Returns the addresses that exist (and were set)."""
        ...


# --- SQLite --------------------------------------------------------------------------------------

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS whales (
    address            TEXT PRIMARY KEY CHECK (address GLOB '0x[0-9a-f]*' AND length(address) = 42),
    pseudonym          TEXT,
    tier               TEXT,
    notes              TEXT,
    cluster_name       TEXT,
    is_famous          INTEGER NOT NULL DEFAULT 0,
    estimated_pnl      REAL,
    primary_category   TEXT,
    win_rate           REAL,
    total_volume       REAL,
    is_confirmed       INTEGER NOT NULL DEFAULT 0,
    is_copying_enabled INTEGER NOT NULL DEFAULT 0,
    created_at         TEXT NOT NULL,  -- ISO 8601 UTC
    updated_at         TEXT NOT NULL
) WITHOUT ROWID
"""


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class SqliteWhaleStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.description = f"sqlite:{self.path}"

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        # The sink puts the file in WAL mode; a store created by `ingestd whales add` before the
        # daemon ever ran gets it here, so the daemon's writes never block our reads.
        conn.execute("PRAGMA journal_mode=WAL")
        return conn

    def ensure_schema(self) -> None:
        conn = self._connect()
        try:
            conn.execute(SQLITE_SCHEMA)
        finally:
            conn.close()

    def load(self, *, enabled_only: bool) -> list[Whale]:
        conn = self._connect()
        try:
            conn.execute(SQLITE_SCHEMA)
            where = " WHERE is_copying_enabled" if enabled_only else ""
            rows = conn.execute(f"SELECT {', '.join(_COLUMNS)} FROM whales{where} ORDER BY address").fetchall()
        finally:
            conn.close()
        return [_whale(row) for row in rows]

    def upsert(self, whales: Iterable[Whale]) -> int:
        now = _utc_now()
        rows = [[getattr(w, f) for f in FIELDS] + [now, now] for w in whales]
        updates = ", ".join(f"{f} = excluded.{f}" for f in FIELDS[1:]) + ", updated_at = excluded.updated_at"
        conn = self._connect()
        try:
            conn.execute(SQLITE_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                f"INSERT INTO whales ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))}) "
                f"ON CONFLICT (address) DO UPDATE SET {updates}",
                rows,
            )
            conn.execute("COMMIT")
        finally:
            conn.close()
        return len(rows)

    def set_enabled(self, addresses: Iterable[str], enabled: bool) -> list[str]:
        found: list[str] = []
        conn = self._connect()
        try:
            conn.execute(SQLITE_SCHEMA)
            conn.execute("BEGIN IMMEDIATE")
            for address in addresses:
                cur = conn.execute(
                    "UPDATE whales SET is_copying_enabled = ?, updated_at = ? WHERE address = ?",
                    (int(enabled), _utc_now(), address),
                )
                if cur.rowcount:
                    found.append(address)
            conn.execute("COMMIT")
        finally:
            conn.close()
        return found


def _whale(row: tuple) -> Whale:
    values = dict(zip(_COLUMNS, row))
    for flag in ("is_famous", "is_confirmed", "is_copying_enabled"):
        values[flag] = bool(values[flag])
    for when in ("created_at", "updated_at"):
        if values[when] is not None and not isinstance(values[when], str):
            values[when] = values[when].strftime("%Y-%m-%dT%H:%M:%SZ")  # a PostgreSQL timestamptz
    return Whale(**values)


# --- PostgreSQL ----------------------------------------------------------------------------------

class PostgresWhaleStore:
    """The table comes from migration 0005_whales.sql; this store never creates schema itself."""

    def __init__(self, cfg: Any) -> None:
        from ingestd.db import describe_target

        self.cfg = cfg
        self.description = f"postgres:{describe_target(cfg)}"

    def _connect(self):
        from ingestd.db import connect

        return connect(self.cfg)

    def ensure_schema(self) -> None:
        """Migrate (idempotent, under the migrations' advisory lock): `ingestd whales add` may run
        before the daemon ever opened this database."""
        from ingestd.db import migrate

        with self._connect() as conn:
            migrate(conn, getattr(self.cfg, "timescale", "auto"))

    def load(self, *, enabled_only: bool) -> list[Whale]:
        where = " WHERE is_copying_enabled" if enabled_only else ""
        with self._connect() as conn:
            cur = conn.execute(
                f"SELECT {', '.join(_COLUMNS[:-2])}, created_at AT TIME ZONE 'UTC', updated_at AT TIME ZONE 'UTC'"
                f" FROM whales{where} ORDER BY address"
            )
            rows = cur.fetchall()
        return [_whale(row) for row in rows]

    def upsert(self, whales: Iterable[Whale]) -> int:
        rows = [[getattr(w, f) for f in FIELDS] for w in whales]
        updates = ", ".join(f"{f} = excluded.{f}" for f in FIELDS[1:]) + ", updated_at = now()"
        with self._connect() as conn:
            with conn.cursor() as cur:
                cur.executemany(
                    f"INSERT INTO whales ({', '.join(FIELDS)}) VALUES ({', '.join(['%s'] * len(FIELDS))}) "
                    f"ON CONFLICT (address) DO UPDATE SET {updates}",
                    rows,
                )
        return len(rows)

    def set_enabled(self, addresses: Iterable[str], enabled: bool) -> list[str]:
        found: list[str] = []
        with self._connect() as conn:
            for address in addresses:
                cur = conn.execute(
                    "UPDATE whales SET is_copying_enabled = %s, updated_at = now() WHERE address = %s",
                    (enabled, address),
                )
                if cur.rowcount:
                    found.append(address)
        return found


def store_for_sink(sink_cfg: Any, state_dir: str | Path) -> WhaleStore:
    """The whales store of a configured sink (`SqliteSinkConfig` or `PostgresSinkConfig`)."""
    if sink_cfg.type == "sqlite":
        return SqliteWhaleStore(sink_cfg.resolved_path(state_dir))
    if sink_cfg.type == "postgres":
        return PostgresWhaleStore(sink_cfg)
    raise ValueError(f"sinks.{sink_cfg.name} is a {sink_cfg.type} sink, which has no SQL database for the whales table")


def store_for_sink_object(sink: Any) -> WhaleStore | None:
    """The whales store of an opened-or-not sink object, or None if it has no SQL database."""
    return sql_store(sink, sqlite=SqliteWhaleStore, postgres=PostgresWhaleStore)
