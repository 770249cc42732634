"""The one interface every sink implements.

Sinks are blocking objects (sqlite3, psycopg, redis-py, kafka-python are all blocking clients).
The pipeline calls them from a worker thread through `trio.to_thread.run_sync`, one call at a
time per sink, with whole batches, so the thread hop is paid per batch rather than per record.

Contract:
- `write(batch)` is idempotent: writing the same batch twice (a retry after a timeout, a spool
  replay after a crash) stores every record exactly once. Each record kind has a natural key
  (see `ingestd.model`); a sink must de-duplicate on it, and one duplicate must never cause the
  rest of its batch to be discarded.
- `write` either stores the whole batch durably or raises `SinkError`; partial success is
  allowed only because a retry of the whole batch is harmless (idempotency).
- `Checkpoint` records are stored in the same transaction (or, for stores without
  transactions, after) the records that precede them in the batch.
"""

from __future__ import annotations

import abc
from typing import Sequence

from ingestd.model import Record


class SinkError(Exception):
    """A write failed; the batch may be retried (writes are idempotent)."""


class Sink(abc.ABC):
    #: configured name, e.g. "local" for `[sinks.local]`
    name: str

    @abc.abstractmethod
    def open(self) -> None:
        """Connect and prepare (create tables if the sink owns its schema). Blocking."""

    @abc.abstractmethod
    def write(self, batch: Sequence[Record]) -> None:
        """Store the batch durably and idempotently, or raise SinkError. Blocking."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections. Blocking; must not raise."""

    def resume_points(self, venue: str) -> dict[str, int]:
        """symbol -> highest trade id below which every trade is stored (from Checkpoint records).

        Sinks that cannot be read back return {} (the feed then starts from live data).
        """
        return {}
