"""`[feeds.bybit]`: Bybit v5 public linear tickers (derivatives) and, optionally, trades (ingestd@bybit)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from ingestd.config import Boolean, FeedConfig, Integer, ListOf, Number, Text, Url, feed_family, option
from ingestd.secrets import Secret

# Perpetuals ("BTCUSDT", "1000PEPEUSDT", "BTCPERP") and dated futures ("BTC-26DEC25", "BTCUSDT-26DEC25").
BYBIT_SYMBOL = Text(
    'a Bybit linear symbol (like "BTCUSDT" or "BTC-26DEC25")',
    r"[A-Z0-9]{2,25}(?:-[0-9]{1,2}[A-Z]{3}[0-9]{2})?",
    accepts_secret=False,
)


@feed_family("bybit")
@dataclass(frozen=True, kw_only=True)
class BybitFeedConfig(FeedConfig):
    ws_url: str | Secret = option(
        "wss://stream.bybit.com/v5/public/linear", Url("ws", "wss"), "public linear WebSocket endpoint"
    )
    rest_url: str | Secret = option(
        "https://api.bybit.com", Url("http", "https"),
        "REST base URL (/v5/market/tickers to check symbols, /v5/market/recent-trade for catch-up)",
    )
    symbols: tuple[str, ...] = option((), ListOf(BYBIT_SYMBOL, "symbols"), "contracts to follow, besides fallback_pairs")
    fallback_pairs: tuple[str, ...] = option(
        ("BTCUSDT", "ETHUSDT", "SOLUSDT"), ListOf(BYBIT_SYMBOL, "symbols"),
        "contracts always followed, whatever symbols says",
    )
    validate_symbols: bool = option(
        True, Boolean(), "check symbols against /v5/market/tickers?category=linear at start and skip unknown ones"
    )
    sample_interval_ms: int = option(
        60_000, Integer(0, 86_400_000),
        "also store each contract's state at every multiple of this interval of venue time; 0: only on change",
    )
    on_change: bool = option(True, Boolean(), "store a row whenever funding, open interest, mark, index or basis change")
    sample_grace_ms: int = option(
        2_000, Integer(0, 600_000),
        "a quiet contract's sample at time T is stored once its connection has carried venue time T + this",
    )
    trades: bool = option(False, Boolean(), "also store every trade (publicTrade) in ticks")
    trade_catchup: bool = option(
        True, Boolean(), "after a gap (reconnect, bad frame, restart) fetch missed trades from /v5/market/recent-trade"
    )
    catchup_limit: int = option(1000, Integer(1, 1000), "trades per recent-trade request (Bybit allows 1000 for linear)")
    ping_interval_s: float = option(20.0, Number(1, 300), 'send {"op":"ping"} this often; Bybit asks for every 20 s')
    max_args_chars: int = option(
        21_000, Integer(100, 21_000),
        "topic characters subscribed per connection; Bybit allows 21000, more symbols open more connections",
    )
    args_per_request: int = option(10, Integer(1, 10), "topics per subscribe request (Bybit spot allows 10)")
    max_outgoing_per_s: float = option(10.0, Number(0.1, 100), "requests sent per second per connection")
    reconnect_base_s: float = option(0.5, Number(0.01, 60), "first reconnect delay ceiling (full-jitter backoff)")
    reconnect_cap_s: float = option(30.0, Number(0.1, 3600), "largest reconnect delay ceiling")
    max_retry_after_s: float = option(60.0, Number(0, 3600), "longest a REST 429's Retry-After is honoured")

    @classmethod
    def cross_check(cls, values: Mapping[str, Any], context: Any) -> Iterator[tuple[str, str]]:
        yield from super().cross_check(values, context)
        base, cap = values["reconnect_base_s"], values["reconnect_cap_s"]
        if isinstance(base, float) and isinstance(cap, float) and base > cap:
            yield "reconnect_base_s", f"must not exceed reconnect_cap_s ({cap:g}), got {base:g}"
        if values["on_change"] is False and values["sample_interval_ms"] == 0:
            yield "sample_interval_ms", "is 0 and on_change is false, so nothing would be stored; set one of them"
