"""`[feeds.uniswap]`: Uniswap v3 pools polled from The Graph (ingestd@uniswap)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from ingestd.config import FeedConfig, Integer, ListOf, Number, Text, Url, _ok, feed_family, option
from ingestd.secrets import Secret

POOL_ADDRESS = Text("a pool address, 0x and 40 lowercase hex digits", r"0x[0-9a-f]{40}", accepts_secret=False)


@feed_family("uniswap")
@dataclass(frozen=True, kw_only=True)
class UniswapFeedConfig(FeedConfig):
    gateway_url: str | Secret = option(
        "https://gateway.thegraph.com", Url("http", "https"),
        "The Graph gateway; queries go to <gateway_url>/api/<api_key>/subgraphs/id/<subgraph_id>",
    )
    subgraph_id: str = option(
        "5zvR82QoaXYFyDEKLZ9t6v9adgnptxYpKpSbxtgVENFV",
        Text("a subgraph id", r"[A-Za-z0-9]+", accepts_secret=False),
        "the Uniswap v3 (Ethereum mainnet) subgraph",
    )
    api_key: str | Secret = option(
        "", Text("an API key", r".*"),
        'The Graph API key; give it as { credential = "thegraph-api-key" } or set $THEGRAPH_API_KEY. '
        "Empty: no /api/<key> path segment (a self-hosted graph-node)",
        env="THEGRAPH_API_KEY",
    )
    chain: str = option("ethereum", Text("a chain name", r"[a-z0-9-]+", accepts_secret=False),
                        "chain stored with every row; the dex_pools rows of this chain are polled")
    pools: tuple[str, ...] = option(
        ("0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640",), ListOf(POOL_ADDRESS, "pool addresses"),
        "pools always polled, besides the rows of the dex_pools table for `chain` (default: USDC/WETH 0.05 %)",
    )
    pools_sink: str = option(
        "", Text("a sink name", r"\S*", accepts_secret=False),
        'the sink whose database holds the dex_pools table; "" = the first sqlite or postgres sink in sinks',
    )
    pools_reload_s: float = option(300.0, Number(1, 86_400), "how often the dex_pools table is read again")
    poll_interval_s: float = option(300.0, Number(1, 86_400), "seconds between polls of every pool")
    tick_page_size: int = option(1000, Integer(1, 1000), "ticks per GraphQL page (The Graph allows at most 1000)")
    request_timeout_s: float = option(30.0, Number(0.5, 600), "give up on one GraphQL request after this long")
    max_retry_after_s: float = option(
        60.0, Number(0, 3600), "longest a 429's Retry-After makes the poller wait before its next request"
    )

    @classmethod
    def cross_check(cls, values: Mapping[str, Any], context: Any) -> Iterator[tuple[str, str]]:
        yield from super().cross_check(values, context)
        sink, sinks = values["pools_sink"], values["sinks"]
        if _ok(sink, sinks) and sink and sink not in sinks:
            yield "pools_sink", f'"{sink}" is not one of this feed\'s sinks ({", ".join(sinks)})'

