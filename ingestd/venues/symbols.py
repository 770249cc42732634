"""Which symbols an instance follows: sources, the always-included fallback pairs, and sharding.

A `SymbolSource` answers "which symbols now?". The static source is the config's `symbols` list;
the CoinGecko discovery (a later feed family) implements the same protocol, so the Binance feed
never knows where its list came from. As in the service this replaces, `fallback_pairs` are always
included, and they are the whole list when a dynamic source fails.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Protocol, Sequence


class SymbolSource(Protocol):
    async def fetch(self) -> list[str]:
        """The symbols wanted now. May raise; the caller then keeps the fallback pairs."""
        ...


class StaticSymbols:
    def __init__(self, symbols: Sequence[str]) -> None:
        self._symbols = list(symbols)

    async def fetch(self) -> list[str]:
        return list(self._symbols)


def merge_with_fallback(symbols: Iterable[str], fallback: Iterable[str]) -> list[str]:
    """symbols then fallback pairs, upper-cased, de-duplicated, first occurrence wins."""
    seen: dict[str, None] = {}
    for s in list(symbols) + list(fallback):
        seen.setdefault(s.upper(), None)
    return list(seen)


def shard_index(symbol: str, shards: int) -> int:
    """1-based shard owning `symbol`. A keyed hash, stable across processes, machines and versions
    (Python's own hash() is salted per process, so it cannot be used)."""
    digest = hashlib.blake2b(symbol.upper().encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards + 1


def select_shard(symbols: Iterable[str], shard: tuple[int, int] | None) -> list[str]:
    """The symbols shard (i, N) owns; N instances with i = 1..N partition any list exactly."""
    if shard is None or shard[1] == 1:
        return list(symbols)
    i, n = shard
    return [s for s in symbols if shard_index(s, n) == i]


def split_groups(symbols: Sequence[str], per_group: int) -> list[list[str]]:
    """Consecutive groups of at most `per_group` symbols (one WebSocket connection each)."""
    return [list(symbols[i:i + per_group]) for i in range(0, len(symbols), per_group)]
