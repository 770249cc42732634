"""The `dex_pools` table: pools the Uniswap feed polls besides the configured `pools`.

It lives in the SQL store the instance writes to, as the Polymarket `whales` table does: the SQLite
file of a `sqlite` sink (created here, `CREATE TABLE IF NOT EXISTS`, with the columns of the
PostgreSQL table, since that sink's schema is not ours to extend), or the database of a `postgres`
sink (migration 0001_reference_tables.sql, applied by the sink's migrations). The legacy service's
columns are kept: (chain, address, token0, token1, fee_bps), primary key (chain, address); there is
no active flag and no DEX column, so every row of the feed's `chain` is polled.

Both stores are blocking (sqlite3, psycopg) and short-lived: open, read, close. The feed calls them
through `trio.to_thread`.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from typing import Any, Iterable, Protocol

from ingestd.sinks import sql_store

ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
BUSY_TIMEOUT_S = 10.0

SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS dex_pools (
    chain   TEXT NOT NULL,
    address TEXT NOT NULL,
    token0  TEXT,
    token1  TEXT,
    fee_bps INTEGER,
    PRIMARY KEY (chain, address)
)
"""

# The chain is compared case-insensitively (config chains are lowercase; a row may say "Ethereum").
_SELECT = "SELECT address FROM dex_pools WHERE lower(chain) = {param} ORDER BY address"


class PoolStore(Protocol):
    description: str

    def load(self, chain: str) -> list[str]:
        """The `address` of every row of `chain`, as stored (not checked, not normalized)."""
        ...


class SqlitePoolStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.description = f"sqlite:{self.path}"

    def load(self, chain: str) -> list[str]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            conn.execute(SQLITE_SCHEMA)
            rows = conn.execute(_SELECT.format(param="?"), (chain.lower(),)).fetchall()
        finally:
            conn.close()
        return [row[0] for row in rows]


class PostgresPoolStore:
    """The table comes from migration 0001_reference_tables.sql; this store never creates schema."""

    def __init__(self, cfg: Any) -> None:
        from ingestd.db import describe_target

        self.cfg = cfg
        self.description = f"postgres:{describe_target(cfg)}"

    def load(self, chain: str) -> list[str]:
        from ingestd.db import connect

        with connect(self.cfg) as conn:
            rows = conn.execute(_SELECT.format(param="%s"), (chain.lower(),)).fetchall()
        return [row[0] for row in rows]


def store_for_sink_object(sink: Any) -> PoolStore | None:
    """The dex_pools store of an opened-or-not sink object, or None if it has no SQL database."""
    return sql_store(sink, sqlite=SqlitePoolStore, postgres=PostgresPoolStore)


def normalize(addresses: Iterable[Any]) -> tuple[list[str], list[Any]]:
    """(pool addresses, lowercase, de-duplicated, in order; the values that are not an address).
    A checksummed (mixed-case) address is the same pool: the subgraph's ids are lowercase."""
    good: dict[str, None] = {}
    bad: list[Any] = []
    for value in addresses:
        if isinstance(value, str) and ADDRESS.fullmatch(value.strip()):
            good[value.strip().lower()] = None
        else:
            bad.append(value)
    return list(good), bad
