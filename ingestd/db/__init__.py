"""The PostgreSQL / TimescaleDB schema of the `postgres` sink: migrations, maintenance, connections.

- `ingestd/db/migrations/NNNN_name.sql` are plain SQL files applied in order by `migrate()` (see
  `ingestd.db.migrate`), by the sink when it opens and by `ingestd db migrate`.
- `run_maintenance()` (see `ingestd.db.maintenance`) creates the coming days' partitions and applies
  `retention_days`; the sink runs it when it opens and then at most once an hour.
- `connect()` opens a connection the way the sink and the CLI both do.

Nothing here imports the rest of the daemon except `ingestd.secrets`, so `ingestd db migrate`
stays quick and works without Trio or the feeds.

Schema choices
--------------
Time series on plain PostgreSQL: native declarative range partitioning, one partition per UTC day,
rather than one big table with a BRIN index on `ts`. Both make "the last hour" cheap to find; they
differ in retention, which for market data is the operation that hurts: at tens of thousands of rows a
second, `DELETE ... WHERE ts < now() - interval '30 days'` rewrites and WAL-logs every expired row
and leaves the dead tuples to VACUUM, hour after hour, while dropping a day partition is a catalog
change. Partitions also keep each day's key index small and hot. The price is that a unique key must
include the partition column, so the natural keys are (venue, symbol, trade_id, ts) etc.: still
unique per trade, because `ts` is the venue's own time of that trade and never changes for it (a
retried or replayed record carries the same ts and conflicts in the same partition), and exactly what
TimescaleDB demands of hypertables too, so both modes have the same keys. Partitions are created a
few days ahead by the maintenance job and on demand for any other day a batch carries; there is no
DEFAULT partition (rows parked there would block creating their day's partition later). Each
partition also gets a BRIN index on `ts` (inherited from the parent), nearly free to maintain.

With TimescaleDB: the same tables become hypertables with one-day chunks, compressed after 7 days,
with TimescaleDB's retention policy set from `retention_days`.

Numbers: prices, sizes and rates are double precision. The feeds hand over IEEE doubles
(`Trade.price: float`); float8 stores them bit-exactly in 8 fixed bytes and takes them by binary
COPY as is, while numeric would only spell out the same binary value in decimal, in more bytes and
slower arithmetic. Token amounts (`onchain_flows.amount`, a uint256 scaled by the token's decimals,
handed over as an exact decimal string) and pool liquidity (`dex_metrics.liquidity`, a uint128) are
numeric: they must stay exact and do not fit a float. Times are timestamptz (UTC instants), converted exactly from the
records' integer microseconds on the server.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg

from ingestd.secrets import reveal

APPLICATION_NAME = "ingestd"

# A statement that runs longer than this is cancelled, so a write stuck behind a lock (an operator's
# ALTER TABLE, a long report holding a partition) fails as a SinkError the pipeline can retry or
# spool, rather than blocking the sink's thread for good. Migrations lift it.
STATEMENT_TIMEOUT_MS = 60_000


def connect_params(cfg: Any) -> dict[str, Any]:
    """libpq connection parameters for a `PostgresSinkConfig`, secrets revealed (never log this)."""
    params: dict[str, Any] = {
        "host": reveal(cfg.host),
        "port": cfg.port,
        "dbname": reveal(cfg.dbname),
        "user": reveal(cfg.user),
        # libpq counts whole seconds and treats anything below 2 as 2.
        "connect_timeout": max(2, math.ceil(cfg.connect_timeout_s)),
        "application_name": APPLICATION_NAME,
        # A server that vanished without closing the socket (power cut, network partition) is
        # noticed within ~25 s idle, or 30 s with unacknowledged data, instead of TCP's ~15 min.
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
        "tcp_user_timeout": 30_000,
        "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
    }
    password = reveal(cfg.password)
    if password:
        params["password"] = password
    return params


def describe_target(cfg: Any) -> str:
    """`user@host:port/dbname` for messages; a value given as a secret shows as ***."""
    return f"{cfg.user}@{cfg.host}:{cfg.port}/{cfg.dbname}"


def connect(cfg: Any, *, autocommit: bool = False) -> psycopg.Connection:
    """Open a connection for a `PostgresSinkConfig`; raises psycopg.OperationalError if it cannot."""
    return psycopg.connect(autocommit=autocommit, **connect_params(cfg))


from ingestd.db.maintenance import MaintenanceReport, run_maintenance  # noqa: E402
from ingestd.db.migrate import MigrationError, MigrationResult, migrate  # noqa: E402

__all__ = [
    "APPLICATION_NAME",
    "MaintenanceReport",
    "MigrationError",
    "MigrationResult",
    "connect",
    "connect_params",
    "describe_target",
    "migrate",
    "run_maintenance",
]
