"""`[feeds.coingecko]`: pair discovery for the Binance instances, and prices on a cron schedule
(ingestd@coingecko). The environment variables of the service this replaces still work:
COINGECKO_API_KEY, PAIRS_LIMIT, FALLBACK_PAIRS, DISCOVERY_REFRESH_SEC."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from ingestd.config import (
    Boolean, Check, Choice, FeedConfig, Integer, Invalid, ListOf, Number, Symbol, Text, Url, feed_family, option,
)
from ingestd.secrets import Secret

COIN_ID = Text('a CoinGecko coin id (like "bitcoin")', r"[a-z0-9][a-z0-9.-]*", accepts_secret=False)
ASSET = Text('an asset ticker of 1 to 20 characters A-Z, 0-9 (like "USDC")', r"[A-Z0-9]{1,20}", accepts_secret=False)


class Cron(Check):
    """A cron expression in UTC: minute hour day-of-month month day-of-week, optionally followed by
    croniter's sixth field, seconds (`* * * * * */10`: every 10 s)."""

    expected = 'a cron expression (like "*/5 * * * *"), or "" for no price polling'
    accepts_secret = False

    def parse(self, raw: Any) -> str:
        if not isinstance(raw, str):
            raise Invalid
        if raw.strip() == "":
            return ""
        from ingestd.venues.coingecko.schedule import is_valid

        if len(raw.split()) in (5, 6) and is_valid(raw):
            return raw.strip()
        raise Invalid


@feed_family("coingecko")
@dataclass(frozen=True, kw_only=True)
class CoinGeckoFeedConfig(FeedConfig):
    api_url: str | Secret = option(
        "https://api.coingecko.com/api/v3", Url("http", "https"),
        "API base URL; the pro plan uses https://pro-api.coingecko.com/api/v3",
    )
    api_plan: str = option(
        "demo", Choice("demo", "pro"), "which key header to send: x-cg-demo-api-key or x-cg-pro-api-key"
    )
    api_key: str | Secret = option(
        "", Text("an API key", r".*"),
        'API key; give it as { credential = "coingecko-api-key" } or set $COINGECKO_API_KEY. Empty: no key header',
        env="COINGECKO_API_KEY",
    )
    request_timeout_s: float = option(30.0, Number(0.5, 600), "give up on one request after this long")
    max_attempts: int = option(
        5, Integer(1, 100), "tries per request on 429 (waiting Retry-After), 5xx and transport errors"
    )
    max_retry_after_s: float = option(120.0, Number(0, 3600), "longest wait a 429's Retry-After is honoured for")

    # --- discovery: top coins by market cap -> Binance pairs -> pairs_file ---------------------
    discovery: bool = option(True, Boolean(), "discover pairs and write pairs_file for the Binance instances")
    pairs_limit: int = option(200, Integer(1, 5000), "most pairs in the list, fallback pairs included",
                              env="PAIRS_LIMIT")
    fallback_pairs: tuple[str, ...] = option(
        ("BTCUSDT", "ETHUSDT", "SOLUSDT"), ListOf(Symbol(), "symbols"),
        "pairs always in the list, first; the whole list when discovery has never succeeded",
        env="FALLBACK_PAIRS",
    )
    discovery_refresh_s: float = option(3600.0, Number(1, 7 * 86400), "seconds between discoveries",
                                        env="DISCOVERY_REFRESH_SEC")
    quote_asset: str = option("USDT", ASSET, "quote asset of the pairs: symbol.upper() + quote_asset")
    exclude_bases: tuple[str, ...] = option(
        (), ListOf(ASSET, "asset tickers"), "coins never turned into pairs (the quote asset itself always is)"
    )
    discovery_max_pages: int = option(
        4, Integer(1, 40), "most /coins/markets pages of 250 coins read per discovery (calls count against the plan)"
    )
    pairs_file: str = option(
        "", Text("a path", r".*", accepts_secret=False),
        "where the pair list is written (atomically) as JSON; empty: <state dir>/pairs.json. Point the Binance "
        "instance's pairs_file here",
    )
    validate_pairs: bool = option(
        True, Boolean(), "keep only pairs Binance's exchangeInfo lists as TRADING (when it can be read)"
    )
    binance_rest_url: str | Secret = option(
        "https://api.binance.com", Url("http", "https"), "where validate_pairs reads /api/v3/exchangeInfo"
    )

    # --- prices ---------------------------------------------------------------------------------
    prices_cron: str = option("*/5 * * * *", Cron(), "when to poll prices (UTC); empty: no price polling")
    coins: tuple[str, ...] = option(
        (), ListOf(COIN_ID, "CoinGecko coin ids"), "coins to price; empty: the top prices_top_n by market cap"
    )
    prices_top_n: int = option(100, Integer(1, 5000), "coins priced when `coins` is empty")

    @classmethod
    def cross_check(cls, values: Mapping[str, Any], context: Any) -> Iterator[tuple[str, str]]:
        yield from super().cross_check(values, context)
        limit, fallback = values["pairs_limit"], values["fallback_pairs"]
        if isinstance(limit, int) and isinstance(fallback, tuple) and len(fallback) > limit:
            yield "pairs_limit", f"must be at least the number of fallback_pairs ({len(fallback)}), got {limit}"
