"""Normalized records: what feeds produce and sinks store.

Every record carries `KIND`, the routing key sinks use to pick a table, stream or topic.
Times are integer microseconds since the Unix epoch (UTC): exact, cheap to compare, and
convertible to any store's native type at the edge.

Structs are `gc=False` and frozen-free on purpose: a feed creates tens of thousands per second,
and msgspec structs without GC tracking cost a fraction of a dataclass.
"""

from __future__ import annotations

from typing import ClassVar, Union

import msgspec


class Trade(msgspec.Struct, gc=False):
    """One executed trade (table `ticks`). Natural key: (venue, symbol, trade_id)."""

    KIND: ClassVar[str] = "trade"
    venue: str
    symbol: str
    trade_id: int
    price: float
    qty: float
    side: str  # taker side: "buy" or "sell"
    ts_us: int  # exchange trade time
    recv_us: int  # when ingestd received it


class BookTop(msgspec.Struct, gc=False):
    """Top-N snapshot of a local order book (table `books`). Natural key: (venue, symbol, update_id)."""

    KIND: ClassVar[str] = "book"
    venue: str
    symbol: str
    update_id: int  # the book's last applied update id when the snapshot was taken
    ts_us: int  # exchange time of that update
    recv_us: int
    bid_px: float
    bid_sz: float
    ask_px: float
    ask_sz: float
    spread_bps: float
    bids: list[tuple[float, float]]  # best first, at most N levels
    asks: list[tuple[float, float]]


class Checkpoint(msgspec.Struct, gc=False):
    """In-band resume marker: every trade of (venue, symbol) with id <= trade_id has been emitted.

    It travels through the same FIFO channel as the trades, so a sink that stores it in the
    same transaction as its batch never records a checkpoint ahead of the data it covers.
    """

    KIND: ClassVar[str] = "checkpoint"
    venue: str
    symbol: str
    trade_id: int


Record = Union[Trade, BookTop, Checkpoint]

RECORD_TYPES: dict[str, type] = {cls.KIND: cls for cls in (Trade, BookTop, Checkpoint)}


def spread_bps(bid: float, ask: float) -> float:
    """Quoted spread in basis points of the mid price (0 when the book is one-sided)."""
    if bid <= 0 or ask <= 0:
        return 0.0
    mid = (bid + ask) / 2.0
    return (ask - bid) / mid * 10_000.0
