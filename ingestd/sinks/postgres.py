"""The PostgreSQL / TimescaleDB sink: trades into `ticks`, book tops into `books`, resume points into
`checkpoints`, in the legacy service's schema (ingestd/db/migrations), and every other record kind into
its table (`derivatives`, `dex_metrics`, `onchain_flows`, `prices`, `prediction_books`,
`prediction_trades`, `whale_trades`) as declared in ingestd/sinks/tables.py, which both SQL sinks use.
Trades and book tops keep hand-written row building (they carry an asset id per symbol); the other
kinds take the same path from their declarations: COPY into their temp table, then INSERT ... SELECT
with the conversions the declaration asks for (µs -> timestamptz, decimal text -> numeric, levels ->
jsonb).

One transaction per batch: the batch's rows are sent with binary `COPY` into session temp tables
(`ON COMMIT DELETE ROWS`, created once per connection), moved into the real tables with
`INSERT ... SELECT`, and the batch's checkpoints are upserted with `GREATEST` before the single
COMMIT. So a checkpoint is never stored without the trades before it, and a retried or replayed
batch stores nothing twice: rows already stored are skipped on the natural key, the rest of the
batch is stored (see "Idempotency" below).

Idempotency, and the fast path: `INSERT ... ON CONFLICT (key) DO NOTHING` costs ~3 µs a row on the
server for its speculative insertion (bench/postgres_sink.py, durable server, batches of 5000-20000
new trades: 72-88k rows/s with ON CONFLICT alone, 105-133k with a plain INSERT). Most batches hold
only new rows, so the sink first moves the rows with a plain INSERT; if any row is already stored (a
retry, a spool replay, another writer, a duplicate inside the batch) PostgreSQL raises
unique_violation, the whole transaction is rolled back and the batch is written again with
`ON CONFLICT DO NOTHING`. Replays come in runs, so after such a batch the
sink stays with ON CONFLICT until a batch turns out to hold no duplicate. What ends up stored is
exactly what ON CONFLICT DO NOTHING alone stores; `optimistic=False` turns the fast path off. (Each
fallback leaves one "duplicate key" ERROR line in the server log.)

Round trips: beside a busy trio thread every wait on the server hands the GIL over and costs up to
the 5 ms switch interval to get back, so a batch is BEGIN, one COPY per kind present (two round trips
each), then the INSERTs, the checkpoint upsert and COMMIT in one pipeline (one round trip).

Values PostgreSQL cannot hold: text with a NUL character, integers beyond bigint (or integer, for
`integer` columns), times outside 1970..9999, strings with lone surrogates, decimals that are not
digits. Checking every field of every record would cost more than
the insert, so the batch is tried as is; when it fails on such a value, the transaction is rolled
back, every record is screened, the offending ones are refused (logged with the reason, counted in
`sink.<name>.records_refused`) and the rest is written. A data error that the screening does not
explain (class 22 from the server) is isolated by splitting the batch in halves, in order, until
the offending records are found; those are refused with the server's message. The screening is
`ingestd.sinks.tables.refusal_reason`, shared with the SQLite sink. Anything else wrong
with the input (a record of the wrong type) is a bug and raises.

Connection loss: any error that leaves the connection broken raises SinkError and drops the
connection; the next `write()` reconnects first (one attempt, `connect_timeout_s`; the new session
is migrated and reloads the asset ids, in case the database was restored or recreated meanwhile),
and raises SinkError again while the server is away. The sink never sleeps: the pipeline's backoff
spaces the attempts and its spool holds the batches meanwhile. A batch whose COMMIT was cut off may or may not
be stored; writing it again is harmless.

Maintenance: `ingestd.db.run_maintenance` (partitions ahead, retention) runs in `open()` and then
from `write()` at most once an hour, before that batch; see ingestd/db/maintenance.py for why.

Assets: every trade, book and derivative symbol written gets an `assets` row (asset_id), registered
in its own committed transaction before the batch, so the in-memory symbol -> asset_id cache only
ever holds committed ids, as in the SQLite sink. (The other kinds name no market symbol; see
`tables.asset_symbols`.)

Threads: the pipeline calls open/write/close from worker threads, one call at a time; a lock still
guards the connection so `resume_points` and the read helpers can run from another thread.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import operator
import threading
import time
from typing import Any, Callable, Sequence

import msgspec
import psycopg
from psycopg import errors as pg_errors

from ingestd.db import connect, describe_target, maintenance
from ingestd.db.maintenance import EPOCH_DAY, MAX_DAY_NUMBER, MIN_DAY_NUMBER, US_PER_DAY, run_maintenance
from ingestd.db.migrate import MigrationError, migrate
from ingestd.model import BookTop, Checkpoint, Record
from ingestd.sinks import tables
from ingestd.sinks.base import Sink, SinkError
from ingestd.stats import StatsRegistry

logger = logging.getLogger("ingestd.sinks.postgres")

MAINTENANCE_INTERVAL_S = 3600.0
MAINTENANCE_RETRY_S = 300.0

# Record times the sink stores: 1970-01-01 .. 9999-12-30 UTC (psycopg cannot read back years past 9999).
MIN_TS_US = 0
MAX_TS_US = (MAX_DAY_NUMBER + 1) * US_PER_DAY - 1  # the last day a partition can be made for

MAX_REFUSALS_LOGGED = tables.MAX_REFUSALS_LOGGED

# What PostgreSQL can hold (see refusal_reason).
LIMITS = tables.Limits(store="PostgreSQL", nul_in_text=False, time_range=(MIN_TS_US, MAX_TS_US),
                       time_words="a time between 1970 and 9999")

# `timestamptz` from integer microseconds, exact (int8 * interval keeps whole microseconds).
_US = "timestamptz 'epoch' + {} * interval '1 microsecond'"


class _Table:
    """A target table, its session temp table and the statements that move rows between them."""

    def __init__(self, table: str, key: str, temp_columns: list[tuple[str, str]], select: str, columns: str):
        self.table = table
        self.temp = f"ingestd_{table}_in"
        self.types = [pg_type for _, pg_type in temp_columns]
        names = ", ".join(name for name, _ in temp_columns)
        self.create_temp = (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.temp} ("
            + ", ".join(f"{name} {pg_type}" for name, pg_type in temp_columns)
            + ") ON COMMIT DELETE ROWS"
        )
        self.copy = f"COPY {self.temp} ({names}) FROM STDIN (FORMAT BINARY)"
        self.insert = f"INSERT INTO {table} ({columns}) SELECT {select} FROM {self.temp}"
        self.insert_on_conflict = f"{self.insert} ON CONFLICT ({key}) DO NOTHING"

    @classmethod
    def declared(cls, t: tables.Table) -> "_Table":
        """The statements of a kind stored by its declaration (ingestd/sinks/tables.py)."""
        return cls(
            t.name,
            key=", ".join(t.partition_key),
            temp_columns=[(c.name, _COPY_TYPES[c.type]) for c in t.columns],
            columns=", ".join(t.column_names),
            select=", ".join(_SELECT[c.type].format(c.name) for c in t.columns),
        )


# How each declared column type travels: COPY as (temp table type), then converted on INSERT ... SELECT.
_COPY_TYPES = {
    tables.TEXT: "text", tables.BIGINT: "int8", tables.INTEGER: "int8", tables.FLOAT: "float8",
    tables.TIME: "int8", tables.DECIMAL: "text", tables.LEVELS: "text",
}
_SELECT = {
    tables.TEXT: "{}", tables.BIGINT: "{}", tables.INTEGER: "{}", tables.FLOAT: "{}", tables.TIME: _US,
    tables.DECIMAL: "{}::numeric", tables.LEVELS: "{}::jsonb",
}
# Reading back: text for what Python would otherwise turn into Decimal or parsed JSON.
_READ = {tables.DECIMAL: "{}::text", tables.LEVELS: "{}::text"}


TICKS = _Table(
    "ticks",
    key="venue, symbol, trade_id, ts",
    temp_columns=[
        ("venue", "text"), ("symbol", "text"), ("trade_id", "int8"), ("ts", "int8"), ("price", "float8"),
        ("qty", "float8"), ("side", "text"), ("recv_ts", "int8"), ("asset_id", "int4"),
    ],
    columns="ts, venue, symbol, trade_id, price, qty, side, recv_ts, asset_id",
    select=f"{_US.format('ts')}, venue, symbol, trade_id, price, qty, side, {_US.format('recv_ts')}, asset_id",
)

BOOKS = _Table(
    "books",
    key="venue, symbol, update_id, ts",
    temp_columns=[
        ("venue", "text"), ("symbol", "text"), ("update_id", "int8"), ("ts", "int8"), ("recv_ts", "int8"),
        ("bid_px", "float8"), ("bid_sz", "float8"), ("ask_px", "float8"), ("ask_sz", "float8"),
        ("spread_bps", "float8"), ("bids", "text"), ("asks", "text"), ("asset_id", "int4"),
    ],
    columns="ts, venue, symbol, update_id, bid_px, bid_sz, ask_px, ask_sz, spread_bps, bids, asks, recv_ts, asset_id",
    select=(
        f"{_US.format('ts')}, venue, symbol, update_id, bid_px, bid_sz, ask_px, ask_sz, spread_bps,"
        f" bids::jsonb, asks::jsonb, {_US.format('recv_ts')}, asset_id"
    ),
)

GENERIC = {t: _Table.declared(t) for t in tables.GENERIC}
ALL_TABLES = (TICKS, BOOKS, *GENERIC.values())

# A checkpoint only moves forward: a replayed old batch must not rewind resume.
_UPSERT_CHECKPOINTS = """
INSERT INTO checkpoints AS c (venue, symbol, trade_id, updated_at)
SELECT venue, symbol, trade_id, now() FROM unnest(%s::text[], %s::text[], %s::int8[]) AS u (venue, symbol, trade_id)
ON CONFLICT (venue, symbol) DO UPDATE
    SET trade_id = GREATEST(c.trade_id, EXCLUDED.trade_id), updated_at = EXCLUDED.updated_at
    WHERE EXCLUDED.trade_id > c.trade_id
"""

_REGISTER_ASSETS = "INSERT INTO assets (symbol) SELECT unnest(%s::text[]) ON CONFLICT (symbol) DO NOTHING"
_LOOKUP_ASSETS = "SELECT symbol, asset_id FROM assets WHERE symbol = ANY(%s::text[])"

# Failures of the fast path that may come from one bad value in the batch: screen and retry.
_MAYBE_BAD_VALUE = (psycopg.DataError, pg_errors.CheckViolation, UnicodeEncodeError, OverflowError, TypeError,
                    ValueError)

_encode_json = msgspec.json.Encoder().encode
_decode_levels = msgspec.json.Decoder(list[tuple[float, float]]).decode

DEFAULT_COUNTED = ("assets", "ticks", "books", "checkpoints")


class PostgresSink(Sink):
    """Stores every record kind in PostgreSQL (TimescaleDB when available).

    `cfg` is a `PostgresSinkConfig` (host, port, dbname, user, password, retention_days, timescale,
    connect_timeout_s). The sink never logs the password."""

    def __init__(
        self,
        name: str,
        cfg: Any,
        *,
        stats: StatsRegistry | None = None,
        optimistic: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.cfg = cfg
        self._stats = stats
        self._rows_written = f"sink.{name}.rows_written"
        self._duplicates_skipped = f"sink.{name}.duplicates_skipped"
        self._batches = f"sink.{name}.batches"
        self._records_refused = f"sink.{name}.records_refused"
        self._clock = clock
        self._lock = threading.RLock()
        self._conn: psycopg.Connection | None = None
        self._opened = False
        self._asset_ids: dict[str, int] = {}  # symbol -> assets.asset_id, committed rows only
        # Day numbers known to have a partition, per natively partitioned table (none on TimescaleDB).
        self._partition_days: dict[str, set[int]] = {}
        self._optimistic_enabled = optimistic
        self._optimistic = optimistic  # try the plain INSERT first (see the docstring)
        self._next_maintenance = float("-inf")
        self.mode: str | None = None  # "postgres" or "timescale" once open
        self.schema_version: int | None = None
        self.target = describe_target(cfg)

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            if self._conn is not None:
                return
            conn = self._connect()
            try:
                applied = self._set_up(conn)
                self._maintain(conn)
            except psycopg.Error as exc:
                _close_quietly(conn)
                raise SinkError(f"{self.name}: cannot prepare {self.target}: {_one_line(exc)}") from exc
            except BaseException:  # MigrationError (the config contradicts the database): not retriable
                _close_quietly(conn)
                raise
            self._conn = conn
            self._opened = True
        logger.info(
            "sink %s: opened %s (%s, schema v%d; migrations applied: %s)",
            self.name, self.target, self.mode, self.schema_version, ", ".join(applied) or "none",
        )

    def _set_up(self, conn: psycopg.Connection) -> list[str]:
        """Migrate, prepare the session, (re)load the asset ids; returns the migrations applied.

        Also run on every reconnect: a database restored from a backup or recreated while the
        daemon ran gets its schema back, and asset ids are never taken from the old one."""
        result = migrate(conn, self.cfg.timescale)
        self.mode, self.schema_version = result.mode, result.version
        self._prepare_session(conn)
        self._asset_ids = dict(conn.execute("SELECT symbol, asset_id FROM assets").fetchall())
        conn.commit()
        return [m.label for m in result.applied]

    def close(self) -> None:
        with self._lock:
            self._opened = False
            conn, self._conn = self._conn, None
            if conn is not None:
                _close_quietly(conn)

    def _connect(self) -> psycopg.Connection:
        try:
            return connect(self.cfg)
        except psycopg.Error as exc:
            raise SinkError(f"{self.name}: cannot connect to {self.target}: {_one_line(exc)}") from exc

    def _prepare_session(self, conn: psycopg.Connection) -> None:
        """Per-connection setup: temp tables, and what partitions exist. Commits."""
        for table in ALL_TABLES:
            conn.execute(table.create_temp)
        partitioned = maintenance.partitioned_tables(conn)
        written = {table.table for table in ALL_TABLES}
        self._partition_days = {
            table: {(day - EPOCH_DAY).days for day in maintenance.existing_partitions(conn, table)}
            for table in partitioned
            if table in written
        }
        conn.commit()

    def _connection(self) -> psycopg.Connection:
        """The live connection, reconnecting after a loss (raises SinkError while the server is away)."""
        if self._conn is not None:
            return self._conn
        if not self._opened:
            raise SinkError(f"{self.name}: sink is not open")
        conn = self._connect()
        try:
            self._set_up(conn)
        except (psycopg.Error, MigrationError) as exc:
            _close_quietly(conn)
            raise SinkError(f"{self.name}: cannot prepare the connection to {self.target}: {_one_line(exc)}") from exc
        except BaseException:
            _close_quietly(conn)
            raise
        self._conn = conn
        logger.info("sink %s: reconnected to %s", self.name, self.target)
        return conn

    def _failed(self, conn: psycopg.Connection, exc: BaseException, what: str) -> SinkError:
        """Clean up after a failed operation; the SinkError to raise."""
        if conn.closed or conn.broken:
            self._conn = None
            _close_quietly(conn)
            return SinkError(f"{self.name}: {what} failed, connection to {self.target} lost: {_one_line(exc)}")
        _rollback_quietly(conn)
        if isinstance(exc, pg_errors.CheckViolation):  # "no partition of relation found": reload the cache
            self._partition_days = {}
            try:
                self._prepare_session(conn)
            except psycopg.Error:
                _rollback_quietly(conn)
        return SinkError(f"{self.name}: {what} failed: {_one_line(exc)}")

    # --- maintenance ---------------------------------------------------------------------------

    def _maintain(self, conn: psycopg.Connection) -> None:
        report = run_maintenance(conn, self.cfg.retention_days)
        # A step that failed (most likely on a busy table) is tried again sooner than in an hour.
        interval = MAINTENANCE_RETRY_S if report.problems else MAINTENANCE_INTERVAL_S
        self._next_maintenance = self._clock() + interval
        if report.created or report.dropped:
            self._prepare_session(conn)  # refresh the partition cache
        if report.dropped:
            logger.info("sink %s: retention dropped %s", self.name, ", ".join(report.dropped))

    # --- writing -------------------------------------------------------------------------------

    def write(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        with self._lock:
            conn = self._connection()
            try:
                if self._clock() >= self._next_maintenance:
                    self._maintain(conn)
                inserted, attempted, refused = self._write(conn, batch)
            except psycopg.Error as exc:
                raise self._failed(conn, exc, f"write of {len(batch)} records") from exc
            except BaseException:
                _rollback_quietly(conn)
                raise
        stats = self._stats
        if stats is not None:
            stats.incr(self._rows_written, inserted)
            stats.incr(self._duplicates_skipped, attempted - inserted)
            stats.incr(self._batches)
            if refused:
                stats.incr(self._records_refused, refused)

    def _write(self, conn: psycopg.Connection, batch: Sequence[Record]) -> tuple[int, int, int]:
        """Store the batch; returns (data rows inserted, data rows attempted, records refused)."""
        try:
            return (*self._store(conn, batch), 0)
        except _MAYBE_BAD_VALUE as exc:
            if conn.broken or conn.closed:
                raise
            _rollback_quietly(conn)
            first_error = exc
        # Slow path: some value may be unstorable. Screen every record, refuse the bad ones.
        kept, refusals = tables.screen(batch, LIMITS)
        if not refusals and not isinstance(first_error, (psycopg.DataError, pg_errors.CheckViolation)):
            raise first_error  # nothing wrong with the records: a bug, not bad input
        self._log_refusals(refusals)
        if isinstance(first_error, pg_errors.CheckViolation):
            self._partition_days = {}
            self._prepare_session(conn)
        try:
            inserted, attempted = self._store(conn, kept)
            return inserted, attempted, len(refusals)
        except psycopg.DataError as exc:
            if conn.broken or conn.closed:
                raise
            _rollback_quietly(conn)
            logger.warning(
                "sink %s: a batch of %d records still fails after screening (%s); isolating the bad records",
                self.name, len(kept), _one_line(exc),
            )
        inserted, attempted, refused = self._isolate(conn, kept)
        return inserted, attempted, refused + len(refusals)

    def _isolate(self, conn: psycopg.Connection, records: list[Record]) -> tuple[int, int, int]:
        """Store `records` in order, halving around server-side data errors; refuse single culprits."""
        try:
            inserted, attempted = self._store(conn, records)
            return inserted, attempted, 0
        except psycopg.DataError as exc:
            if conn.broken or conn.closed:
                raise
            _rollback_quietly(conn)
            if len(records) == 1:
                self._log_refusals([(records[0], f"PostgreSQL refused it: {_one_line(exc)}")])
                return 0, 0, 1
        middle = len(records) // 2
        first = self._isolate(conn, records[:middle])
        second = self._isolate(conn, records[middle:])
        return first[0] + second[0], first[1] + second[1], first[2] + second[2]

    def _log_refusals(self, refusals: list[tuple[Record, str]]) -> None:
        tables.log_refusals(logger, self.name, refusals)

    def _store(self, conn: psycopg.Connection, records: Sequence[Record]) -> tuple[int, int]:
        """Store records in one transaction; returns (rows inserted, rows attempted).

        Asset ids and partitions are made beforehand, in their own transactions."""
        groups = tables.group_by_table(records, "PostgresSink")
        trades = groups.get(tables.TICKS, ())
        books = groups.get(tables.BOOKS, ())
        symbols = tables.asset_symbols(groups)
        if symbols:
            self._register_assets(conn, symbols)
        if trades:
            self._ensure_partitions(conn, TICKS.table, {t.ts_us // US_PER_DAY for t in trades})
        if books:
            self._ensure_partitions(conn, BOOKS.table, {b.ts_us // US_PER_DAY for b in books})
        asset_id = self._asset_ids.__getitem__
        work: list[tuple[_Table, list[tuple]]] = []
        if trades:
            work.append((TICKS, [
                (t.venue, t.symbol, t.trade_id, t.ts_us, t.price, t.qty, t.side, t.recv_us, asset_id(t.symbol))
                for t in trades
            ]))
        if books:
            work.append((BOOKS, [
                (
                    b.venue, b.symbol, b.update_id, b.ts_us, b.recv_us, b.bid_px, b.bid_sz, b.ask_px, b.ask_sz,
                    b.spread_bps, _encode_json(b.bids).decode(), _encode_json(b.asks).decode(), asset_id(b.symbol),
                )
                for b in books
            ]))
        for declared, kind_records in groups.items():
            target = GENERIC.get(declared)
            if target is None:
                continue
            time_of = operator.attrgetter(declared.time_field)
            self._ensure_partitions(conn, target.table, {time_of(r) // US_PER_DAY for r in kind_records})
            row = declared.row
            work.append((target, [row(r) for r in kind_records]))
        checkpoints = groups.get(tables.CHECKPOINTS)
        cp_arrays = _checkpoint_arrays(checkpoints) if checkpoints else None
        attempted = sum(len(rows) for _, rows in work)
        if self._optimistic:
            try:
                return self._transaction(conn, work, cp_arrays, optimistic=True), attempted
            except pg_errors.UniqueViolation:
                # Some row is stored already (a retry, a replay, another writer): the transaction is
                # void, so do it again the slow way. Replays come in runs: stay on the slow way
                # until a batch turns out to hold no duplicate.
                _rollback_quietly(conn)
                self._optimistic = False
        inserted = self._transaction(conn, work, cp_arrays, optimistic=False)
        if inserted == attempted and self._optimistic_enabled:
            self._optimistic = True
        return inserted, attempted

    def _transaction(
        self, conn: psycopg.Connection, work: list[tuple[_Table, list[tuple]]], cp_arrays: tuple | None,
        *, optimistic: bool,
    ) -> int:
        """BEGIN, COPY into the temp tables, INSERT ... SELECT, upsert checkpoints, COMMIT; rows inserted.

        Round trips are what a batch costs beside a busy trio thread (each wait hands the GIL over),
        so everything after the COPYs goes in one pipeline: BEGIN, one COPY per table (two round
        trips each), then INSERTs + upsert + COMMIT together."""
        with conn.cursor() as cur:
            for table, rows in work:
                with cur.copy(table.copy) as copy:
                    copy.set_types(table.types)
                    write_row = copy.write_row
                    for row in rows:
                        write_row(row)
        statements: list[tuple[str, Any]] = [
            (table.insert if optimistic else table.insert_on_conflict, None) for table, _ in work
        ]
        inserting = len(statements)
        if cp_arrays is not None:
            statements.append((_UPSERT_CHECKPOINTS, cp_arrays))
        cursors = [conn.cursor() for _ in statements]
        try:
            with _pipeline(conn):
                for cur, (query, params) in zip(cursors, statements):
                    cur.execute(query, params)
                conn.commit()
            return sum(cur.rowcount for cur in cursors[:inserting])
        finally:
            for cur in cursors:
                cur.close()

    def _register_assets(self, conn: psycopg.Connection, symbols: set[str]) -> None:
        """Give every new symbol an `assets` row, in its own committed transaction (see the module
        docstring). The symbols are those of trades, book tops and derivatives; why no other kind
        names an asset is in `tables.asset_symbols`."""
        missing = [s for s in symbols if s not in self._asset_ids]
        if not missing:
            return
        missing.sort()  # the same lock order in every process: concurrent registrations cannot deadlock
        conn.execute(_REGISTER_ASSETS, (missing,))
        found = dict(conn.execute(_LOOKUP_ASSETS, (missing,)).fetchall())
        conn.commit()
        self._asset_ids.update(found)

    def _ensure_partitions(self, conn: psycopg.Connection, table: str, days: set[int]) -> None:
        known = self._partition_days.get(table)
        if known is None:  # not natively partitioned (TimescaleDB makes its own chunks)
            return
        missing = {d for d in days if d not in known and MIN_DAY_NUMBER <= d <= MAX_DAY_NUMBER}
        if not missing:
            return
        maintenance.ensure_partitions(conn, table, [EPOCH_DAY + dt.timedelta(days=d) for d in missing])
        known |= missing

    # --- reading -------------------------------------------------------------------------------

    def resume_points(self, venue: str) -> dict[str, int]:
        return dict(self._query("SELECT symbol, trade_id FROM checkpoints WHERE venue = %s", (venue,)))

    def trade_ids(self, venue: str, symbol: str) -> list[int]:
        """Stored trade ids of one market, ascending."""
        rows = self._query(
            "SELECT trade_id FROM ticks WHERE venue = %s AND symbol = %s ORDER BY trade_id", (venue, symbol)
        )
        return [trade_id for (trade_id,) in rows]

    def update_ids(self, venue: str, symbol: str) -> list[int]:
        """Stored book update ids of one market, ascending."""
        rows = self._query(
            "SELECT update_id FROM books WHERE venue = %s AND symbol = %s ORDER BY update_id", (venue, symbol)
        )
        return [update_id for (update_id,) in rows]

    def counts(self, table_names: Sequence[str] = DEFAULT_COUNTED) -> dict[str, int]:
        """Rows per table (a full count: for tests, the demo and operators, not the hot path)."""
        for table in table_names:
            if table not in DEFAULT_COUNTED and table not in tables.BY_NAME:
                raise ValueError(f"no table {table!r}")
        return {table: self._query(f"SELECT count(*) FROM {table}")[0][0] for table in table_names}

    def records(self, kind: type) -> list:
        """Every stored record of a kind stored by declaration (Derivative, Price, ...), as records,
        in natural-key order."""
        table = tables.BY_KIND[kind.KIND]
        if table not in GENERIC:
            raise ValueError(f"{kind.__name__} is not read back generically")
        columns = ", ".join(_READ.get(c.type, "{}").format(c.name) for c in table.columns)
        rows = self._query(f"SELECT {columns} FROM {table.name} ORDER BY {', '.join(table.key)}")
        times = [i for i, c in enumerate(table.columns) if c.type == tables.TIME]
        out = []
        for row in rows:
            values = list(row)
            for i in times:
                if values[i] is not None:
                    values[i] = _us(values[i])
            out.append(table.record_from_row(values))
        return out

    def latest_book(self, venue: str, symbol: str) -> BookTop | None:
        """The stored book top with the highest update id, or None."""
        rows = self._query(
            "SELECT venue, symbol, update_id, ts, recv_ts, bid_px, bid_sz, ask_px, ask_sz, spread_bps,"
            " bids::text, asks::text FROM books WHERE venue = %s AND symbol = %s ORDER BY update_id DESC LIMIT 1",
            (venue, symbol),
        )
        if not rows:
            return None
        v, s, update_id, ts, recv_ts, bid_px, bid_sz, ask_px, ask_sz, spread, bids, asks = rows[0]
        return BookTop(
            venue=v, symbol=s, update_id=update_id, ts_us=_us(ts), recv_us=_us(recv_ts),
            bid_px=bid_px, bid_sz=bid_sz, ask_px=ask_px, ask_sz=ask_sz, spread_bps=spread,
            bids=_decode_levels(bids), asks=_decode_levels(asks),
        )

    def _query(self, query: str, params: tuple = ()) -> list[tuple]:
        with self._lock:
            conn = self._connection()
            try:
                rows = conn.execute(query, params).fetchall()
                conn.commit()
                return rows
            except psycopg.Error as exc:
                raise self._failed(conn, exc, "query") from exc


# --- screening ---------------------------------------------------------------------------------


def refusal_reason(record: Record) -> str | None:
    """Why PostgreSQL cannot store this record as it is, or None when it can (TypeError for a
    non-record)."""
    return tables.refusal_reason(record, LIMITS)


describe_record = tables.describe_record


# --- helpers (no state of their own) ------------------------------------------------------------


def _checkpoint_arrays(checkpoints: Sequence[Checkpoint]) -> tuple[list[str], list[str], list[int]]:
    """One row per market with the batch's highest trade id (an upsert must not touch a row twice)."""
    highest: dict[tuple[str, str], int] = {}
    for cp in checkpoints:
        key = (cp.venue, cp.symbol)
        highest[key] = max(cp.trade_id, highest.get(key, cp.trade_id))
    venues = [venue for venue, _ in highest]
    symbols = [symbol for _, symbol in highest]
    return venues, symbols, list(highest.values())


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _us(when: dt.datetime) -> int:
    """Integer microseconds since the epoch of a timestamptz, exactly."""
    return (when - _EPOCH) // dt.timedelta(microseconds=1)


def _pipeline(conn: psycopg.Connection):
    """conn.pipeline() where libpq supports it (>= 14, as bundled with psycopg[binary]), else nothing."""
    return conn.pipeline() if psycopg.Pipeline.is_supported() else contextlib.nullcontext()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _rollback_quietly(conn: psycopg.Connection) -> None:
    try:
        if not conn.closed and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
            conn.rollback()
    except psycopg.Error:
        pass


def _close_quietly(conn: psycopg.Connection) -> None:
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - close must not raise
        pass
