"""Cases shared by the SQL sink tests (SQLite and PostgreSQL): every record kind stored by declaration,
values crafted to break SQL, and a spool outage through the real SinkRunner."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import msgspec

import trio
import trio.testing

from ingestd.model import Record
from ingestd.pipeline import Router, SinkRunner
from ingestd.sinks import tables
from ingestd.sinks.base import Sink, SinkError
from ingestd.stats import StatsRegistry
from tests import samples

SAMPLE = {
    tables.DERIVATIVES: samples.derivative,
    tables.DEX_METRICS: samples.dex_metric,
    tables.ONCHAIN_FLOWS: samples.onchain_flow,
    tables.PRICES: samples.price,
    tables.PREDICTION_BOOKS: samples.prediction_book,
    tables.PREDICTION_TRADES: samples.prediction_trade,
    tables.WHALE_TRADES: samples.whale_trade,
}
assert set(SAMPLE) == set(tables.GENERIC), "a kind without a sample"

# Stored verbatim by both sinks.
CRAFTED = [
    "'); DROP TABLE prices;--",
    "O'Brien\"s; SELECT 1",
    "back\\slash\\N \\x00 \\\\",
    "tab\tnew\nline\rcr",
    "ÄÖÜ-€-中文-🚀-\u202e-\ufeff",
    "%s %(x)s {} $1 ?",
    " ",
    "",
]
NUL = "nul\x00inside"  # stored verbatim by SQLite; PostgreSQL text cannot hold it (refused)
SURROGATE = "lone\udcffsurrogate"  # neither can encode it as UTF-8 (refused by both)


def by_kind(records: Sequence[Record]) -> dict[type, list[Record]]:
    out: dict[type, list[Record]] = {t.record: [] for t in tables.GENERIC}
    for r in records:
        out[type(r)].append(r)
    return out


def canonical(records: Sequence[Record]) -> list[Record]:
    """Order-free comparison of records (the stores order text keys by their own collations)."""
    return sorted(records, key=lambda r: msgspec.json.encode(r))


def text_columns(table: tables.Table) -> list[tables.Column]:
    return [c for c in table.columns if c.type == tables.TEXT]


def with_text(strings: Sequence[str], first_i: int = 1000) -> list[Record]:
    """For every kind and every text field, one record per string in that field (keys all distinct)."""
    out: list[Record] = []
    i = first_i
    for table, make in SAMPLE.items():
        for column in text_columns(table):
            for s in strings:
                out.append(msgspec.structs.replace(make(i), **{column.field: s}))
                i += 1
    return out


class Flaky(Sink):
    """A real sink that fails every call while `down` (a server outage as the pipeline sees it)."""

    def __init__(self, inner: Sink) -> None:
        self.inner = inner
        self.name = inner.name
        self.down = False

    def open(self) -> None:
        if self.down:
            raise SinkError("server down")
        self.inner.open()

    def write(self, batch: Sequence[Record]) -> None:
        if self.down:
            raise SinkError("server down")
        self.inner.write(batch)

    def close(self) -> None:
        self.inner.close()

    def resume_points(self, venue: str) -> dict[str, int]:
        return self.inner.resume_points(venue)


def outage_through_the_spool(sink: Sink, spool_dir: Path, chunks: list[list[Record]]) -> StatsRegistry:
    """Send `chunks` through a real Router/SinkRunner while `sink` goes down mid-way and comes back:
    the middle third is spooled to disk and replayed. Returns the runner's stats."""
    stats = StatsRegistry("test")
    flaky = Flaky(sink)
    runner = SinkRunner(flaky, stats, batch_size=20, linger_s=0.01, capacity=4, retry_base_s=0.05,
                        retry_cap_s=0.5, spool_after_s=1.0, spool_dir=spool_dir, spool_fsync=False)
    third = max(1, len(chunks) // 3)

    async def until(predicate, what: str) -> None:
        # A wall-clock bound, not a count of (virtual) sleeps: the autojumping clock races ahead
        # while the sink works in a worker thread, so a count runs out on a busy machine.
        deadline = time.monotonic() + 120
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} never happened")
            await trio.sleep(0.01)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            async with Router([runner]) as router:
                for chunk in chunks[:third]:
                    await router.send(chunk)
                flaky.down = True
                for chunk in chunks[third : 2 * third]:
                    await router.send(chunk)
                    await trio.sleep(0.1)
                await until(lambda: runner.spool is not None and not runner.spool.is_empty, "spooling")
                flaky.down = False
                await until(lambda: runner.state == "live", "the hand-over back to live")
                for chunk in chunks[2 * third :]:
                    await router.send(chunk)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return stats
