"""`[feeds.polymarket]`: the CLOB market channel and the whale watcher (etc/ingestd.toml documents it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from ingestd.config import (
    Boolean,
    FeedConfig,
    Integer,
    ListOf,
    Number,
    Text,
    Url,
    _Context,
    _ok,
    feed_family,
    option,
)
from ingestd.secrets import Secret

_TOKEN_ID = Text("an outcome token id (decimal digits)", r"[0-9]{1,80}", accepts_secret=False)
_ADDRESS = Text('a wallet address ("0x" and 40 hex digits)', r"0x[0-9a-fA-F]{40}", accepts_secret=False)


@feed_family("polymarket")
@dataclass(frozen=True, kw_only=True)
class PolymarketFeedConfig(FeedConfig):
    ws_url: str | Secret = option(
        "wss://ws-subscriptions-clob.polymarket.com/ws/market", Url("ws", "wss"),
        "CLOB market channel WebSocket URL", env="POLYMARKET_WS_URL",
    )
    data_api_url: str | Secret = option(
        "https://data-api.polymarket.com", Url("http", "https"), "Data API base URL (GET /trades)"
    )
    asset_ids: tuple[str, ...] = option(
        (), ListOf(_TOKEN_ID, "outcome token ids"),
        "outcome tokens whose books and trades are always followed; markets whales trade are added",
    )
    follow_whale_markets: bool = option(
        True, Boolean(), "also follow the books and trades of every token an enabled whale trades"
    )
    assets_per_connection: int = option(
        500, Integer(1, 500), "outcome tokens per WebSocket connection (the venue allows 500)"
    )
    book_levels: int = option(50, Integer(1, 1000), "levels per side in each stored book")
    book_interval_ms: int = option(
        1000, Integer(10, 3_600_000), "a changed book is stored at most this often (and always once it settles)"
    )
    ping_interval_s: float = option(10.0, Number(1, 60), "seconds between text PING heartbeats")
    reconnect_base_s: float = option(0.5, Number(0.01, 60), "first reconnect delay ceiling (full-jitter backoff)")
    reconnect_cap_s: float = option(30.0, Number(0.1, 3600), "largest reconnect delay ceiling")
    backfill: bool = option(
        True, Boolean(), "after a reconnect, fetch the trades missed meanwhile from the Data API (?market=)"
    )
    backfill_overlap_s: int = option(
        5, Integer(0, 3600), "a reconnect's backfill starts this many seconds before the last trade seen"
    )
    backfill_delay_s: float = option(
        2.0, Number(0, 600), "a backfill waits this long after the hole closed: the Data API lists trades a "
        "little after they happen"
    )
    backfill_max_s: int = option(
        3600, Integer(0, 30 * 86400),
        "no backfill reaches further back than this many seconds: a restart's (from the stored resume "
        "point) and a whale's (to its first trade in a market followed because of it)",
    )
    whales_sink: str = option(
        "", Text("a sink name", r"\S*", accepts_secret=False),
        'the sink whose database holds the whales table; "" = the first sqlite or postgres sink in sinks',
    )
    whale_addresses: tuple[str, ...] = option(
        (), ListOf(_ADDRESS, "wallet addresses"), "wallets watched besides the enabled rows of the whales table"
    )
    whales_reload_s: float = option(60.0, Number(1, 86400), "how often the whales table is read again")
    poll_interval_s: float = option(
        5.0, Number(0.1, 3600), "each enabled whale's trades are polled this often (spread over the interval)"
    )
    whale_history_s: int = option(
        3600, Integer(0, 30 * 86400),
        "a whale without a stored resume point has its trades of this many seconds back fetched",
    )
    whale_lookback_s: int = option(
        60, Integer(0, 86400), "each poll asks again for this many seconds before the newest trade seen "
        "(trades the API indexes late); repeats are dropped"
    )
    page_size: int = option(500, Integer(1, 10_000), "rows per Data API request")
    data_api_requests: int = option(200, Integer(1, 100_000), "Data API requests allowed per data_api_window_s")
    data_api_window_s: float = option(10.0, Number(0.1, 3600), "the Data API rate-limit window")
    data_api_headroom: float = option(
        0.9, Number(0.1, 1.0), "fraction of data_api_requests ingestd lets itself use"
    )
    request_timeout_s: float = option(10.0, Number(0.1, 300), "one Data API request gives up after this long")

    @classmethod
    def cross_check(cls, values: Mapping[str, Any], context: _Context) -> Iterator[tuple[str, str]]:
        yield from super().cross_check(values, context)
        base, cap = values["reconnect_base_s"], values["reconnect_cap_s"]
        if _ok(base, cap) and base > cap:
            yield "reconnect_base_s", f"must not exceed reconnect_cap_s ({cap:g}), got {base:g}"
        if _ok(values["shards"]) and values["shards"] != 1:
            yield "shards", "must be 1: one process polls every whale (the Data API's rate limit is per client)"
        if _ok(values["shard"]) and values["shard"] not in (None, (1, 1)):
            yield "shard", "the polymarket feed is not sharded; leave it unset"
        sink, sinks = values["whales_sink"], values["sinks"]
        if _ok(sink, sinks) and sink and sink not in sinks:
            yield "whales_sink", f'"{sink}" is not one of this feed\'s sinks ({", ".join(sinks)})'
