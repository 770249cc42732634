"""`[feeds.evm]`: ERC-20 Transfer logs of configured tokens over JSON-RPC (ingestd@evm).

    [feeds.evm]
    chain = "ethereum"
    rpc_url = { env = "ETH_RPC_URL" }
    confirmations = 12

    [[feeds.evm.tokens]]
    address = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
    symbol = "USDC"
    decimals = 6            # optional: read from the contract's decimals() when left out

    [feeds.evm.labels]
    "0x28c6c06298d514db089934071355e5743bf21d60" = "binance-hot-14"
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from ingestd.config import (
    _BAD,
    Check,
    FeedConfig,
    Integer,
    Invalid,
    ListOf,
    Number,
    Text,
    Url,
    _mismatch,
    describe,
    feed_family,
    option,
)
from ingestd.secrets import Secret

_ADDRESS = Text("a contract address, 0x and 40 hex digits", r"0x[0-9a-fA-F]{40}", accepts_secret=False)
_TOKEN_SYMBOL = Text('a token symbol of 1 to 20 characters A-Z, a-z, 0-9, ".", "_", "-" (like "USDC")',
                     r"[A-Za-z0-9._-]{1,20}", accepts_secret=False)
_WALLET = Text("an address, 0x and 40 hex digits", r"0x[0-9a-fA-F]{40}", accepts_secret=False)
_DECIMALS = Integer(0, 255)  # ERC-20 decimals() is a uint8
_LABEL = Text("a label of 1 to 64 characters", r"\S(?:.{0,62}\S)?", accepts_secret=False)


@dataclass(frozen=True)
class Token:
    address: str  # lowercase 0x hex
    symbol: str
    decimals: int | None = None  # None: ask the contract (eth_call decimals())


class TokenEntry(Check):
    """One `{address, symbol, decimals}` table; each key's problem is reported under its own path."""

    expected = "a table {address, symbol, decimals}"
    _KEYS = ("address", "symbol", "decimals")

    def parse(self, raw: Any) -> Token:
        problems: list[str] = []
        token = self.validate(raw, "token", problems)
        if token is _BAD:
            raise Invalid
        return token

    def validate(self, raw: Any, path: str, problems: list[str]) -> Any:
        if not isinstance(raw, dict):
            problems.append(_mismatch(path, self.expected, raw))
            return _BAD
        before = len(problems)
        for key in raw:
            if key not in self._KEYS:
                problems.append(f"{path}.{key}: unknown key; valid: {', '.join(self._KEYS)}")
        for key in ("address", "symbol"):
            if key not in raw:
                problems.append(f"{path}.{key}: missing (each token needs an address and a symbol)")
        address = _ADDRESS.validate(raw["address"], f"{path}.address", problems) if "address" in raw else _BAD
        symbol = _TOKEN_SYMBOL.validate(raw["symbol"], f"{path}.symbol", problems) if "symbol" in raw else _BAD
        decimals = _DECIMALS.validate(raw["decimals"], f"{path}.decimals", problems) if "decimals" in raw else None
        if len(problems) > before:
            return _BAD
        return Token(address.lower(), symbol, decimals)


class AddressLabels(Check):
    """A table of address = "label" (exchange hot wallets, bridges), stored sorted as pairs so the
    frozen config stays hashable and comparable."""

    expected = 'a table of "0x<address>" = "label"'

    def parse(self, raw: Any) -> tuple[tuple[str, str], ...]:
        problems: list[str] = []
        labels = self.validate(raw, "labels", problems)
        if labels is _BAD:
            raise Invalid
        return labels

    def validate(self, raw: Any, path: str, problems: list[str]) -> Any:
        if not isinstance(raw, dict):
            problems.append(_mismatch(path, self.expected, raw))
            return _BAD
        before = len(problems)
        out: dict[str, str] = {}
        for key, label in raw.items():
            where = f'{path}."{key}"'
            address = _WALLET.validate(key, where, problems)
            text = _LABEL.validate(label, where, problems)
            if address is _BAD or text is _BAD:
                continue
            if address.lower() in out:
                problems.append(f"{where}: the same address is labelled twice (addresses ignore case)")
                continue
            out[address.lower()] = text
        if len(problems) > before:
            return _BAD
        return tuple(sorted(out.items()))


DEFAULT_TOKENS = (
    Token("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", "USDC", 6),
    Token("0xdac17f958d2ee523a2206206994597c13d831ec7", "USDT", 6),
    Token("0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2", "WETH", 18),
)


@feed_family("evm")
@dataclass(frozen=True, kw_only=True)
class EvmFeedConfig(FeedConfig):
    chain: str = option(
        "ethereum", Text("a chain name of a-z, 0-9 and -", r"[a-z0-9-]{1,40}", accepts_secret=False),
        "chain name stored with every row; also the key of this feed's resume checkpoint",
    )
    rpc_url: str | Secret = option(
        "http://127.0.0.1:8545", Url("http", "https"),
        "JSON-RPC endpoint; provider URLs carry an API key, so give it as { env = \"ETH_RPC_URL\" } or "
        "{ credential = \"eth-rpc-url\" }",
        env="ETH_RPC_URL",
    )
    tokens: tuple[Token, ...] = option(
        DEFAULT_TOKENS, ListOf(TokenEntry(), "token tables {address, symbol, decimals}", min_items=1),
        "ERC-20 contracts whose Transfer logs are stored; decimals left out are read with eth_call decimals()",
    )
    labels: tuple[tuple[str, str], ...] = option(
        (), AddressLabels(), "address -> label for from_tag/to_tag (exchange hot wallets, bridges)"
    )
    confirmations: int = option(
        12, Integer(0, 10_000),
        "a block is final, and its transfers stored, once this many blocks are on top of it",
    )
    poll_interval_s: float = option(12.0, Number(0.05, 3600), "seconds between polls of eth_blockNumber")
    start_block: int | None = option(
        None, Integer(0, 2**53),
        "first block to read when no checkpoint exists; unset: start at the current final block (no history)",
    )
    max_block_range: int = option(
        2000, Integer(1, 1_000_000),
        "most blocks per eth_getLogs; a provider's refusal shrinks it (bisection), successes grow it back",
    )
    request_timeout_s: float = option(10.0, Number(0.5, 300), "give up on one JSON-RPC request after this long")
    max_retry_after_s: float = option(
        60.0, Number(0, 3600), "longest a 429's Retry-After makes the feed wait before its next request"
    )
    retry_base_s: float = option(0.5, Number(0.01, 60), "first retry delay ceiling after a failed request (full jitter)")
    retry_cap_s: float = option(30.0, Number(0.1, 3600), "largest retry delay ceiling")
    progress_interval_s: float = option(
        10.0, Number(0.5, 3600), "how often a backfill of more than one poll's blocks logs blocks done, rate and ETA"
    )

    @classmethod
    def cross_check(cls, values: Mapping[str, Any], context: Any) -> Iterator[tuple[str, str]]:
        yield from super().cross_check(values, context)
        tokens = values["tokens"]
        if tokens is not _BAD:
            for attr in ("address", "symbol"):
                seen: set[str] = set()
                for token in tokens:
                    value = getattr(token, attr)
                    if value in seen:
                        yield "tokens", f"{describe(value)} is listed twice (each token's {attr} must be unique)"
                    seen.add(value)
        # Shards would share one checkpoint (the chain), and a checkpoint only moves forward: a
        # lagging shard would resume past blocks it never read.
        if values["shards"] not in (1, _BAD):
            yield "shards", f"the EVM feed runs as one process per chain; expected 1, got {values['shards']}"
        if values["shard"] not in (None, _BAD):
            yield "shard", "the EVM feed runs as one process per chain; remove shard"
        base, cap = values["retry_base_s"], values["retry_cap_s"]
        if base is not _BAD and cap is not _BAD and base > cap:
            yield "retry_base_s", f"must not exceed retry_cap_s ({cap:g}), got {base:g}"
