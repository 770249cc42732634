"""CoinGecko's REST API, sans-I/O: request paths and parameters out, Price records and pair lists in.

- `/coins/markets?vs_currency=usd&order=market_cap_desc&per_page=250&page=k[&ids=a,b]`: one row per
  coin (venues.md section 7) -> a `Price` stamped with the coin's `last_updated`, so polling a coin
  that has not changed stores nothing new (the natural key is source, coin_id, ts).
- `/coins/{id}/market_chart/range?vs_currency=usd&from=S&to=S`: `prices`, `market_caps` and
  `total_volumes` as [ms, value] pairs -> one `Price` per timestamp (backfill).
- Discovery: coins in market-cap order mapped to Binance pairs, symbol.upper() + "USDT".

Decoders return values or a `Problem`; none raises.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterable, Mapping

import msgspec

from ingestd.model import Price

SOURCE = "coingecko"
PER_PAGE = 250  # the API's largest page
MARKETS = "/coins/markets"
_BASE = re.compile(r"[A-Z0-9]{1,16}")
_COIN_ID = re.compile(r"[a-z0-9][a-z0-9.-]*")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class Problem(msgspec.Struct, frozen=True):
    """kind: malformed | error (an API error object)."""

    kind: str
    detail: str


@dataclass(frozen=True)
class Request:
    path: str
    params: dict[str, str]


def key_header(plan: str, key: str) -> dict[str, str]:
    """The API key header of a plan; none without a key (the public, keyless tier)."""
    if not key:
        return {}
    return {"x-cg-pro-api-key" if plan == "pro" else "x-cg-demo-api-key": key}


def markets_request(page: int, *, per_page: int = PER_PAGE, ids: Iterable[str] = ()) -> Request:
    params = {"vs_currency": "usd", "order": "market_cap_desc", "per_page": str(per_page), "page": str(page)}
    ids = list(ids)
    if ids:
        params["ids"] = ",".join(ids)
    return Request(MARKETS, params)


def range_request(coin_id: str, from_s: int, to_s: int) -> Request:
    return Request(f"/coins/{coin_id}/market_chart/range",
                   {"vs_currency": "usd", "from": str(from_s), "to": str(to_s)})


# --- /coins/markets -------------------------------------------------------------------------------


class MarketRow(msgspec.Struct):
    id: str
    symbol: str
    name: str | None = None
    current_price: float | None = None
    market_cap: float | None = None
    market_cap_rank: int | None = None
    total_volume: float | None = None
    high_24h: float | None = None
    low_24h: float | None = None
    price_change_24h: float | None = None
    price_change_percentage_24h: float | None = None
    circulating_supply: float | None = None
    last_updated: str | None = None


_markets_decoder = msgspec.json.Decoder(list[MarketRow])
_error_decoder = msgspec.json.Decoder(dict)


def decode_markets(body: bytes) -> list[MarketRow] | Problem:
    try:
        return _markets_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        return _problem(body, exc)


def _problem(body: bytes, exc: Exception) -> Problem:
    # CoinGecko reports some failures as a JSON object with HTTP 200 ({"status": {"error_message": ...}}).
    try:
        doc = _error_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return Problem("malformed", str(exc)[:200])
    status = doc.get("status") if isinstance(doc.get("status"), dict) else doc
    message = status.get("error_message") or status.get("error")
    if message:
        return Problem("error", str(message)[:200])
    return Problem("malformed", str(exc)[:200])


def parse_time_us(text: str) -> int | None:
    """ISO-8601 with a zone ("2024-11-14T17:30:00.123Z") -> µs since the epoch; None if it is not one."""
    try:
        moment = datetime.fromisoformat(text)
    except (ValueError, TypeError):
        return None
    if moment.tzinfo is None:
        return None
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def price_of(row: MarketRow, recv_us: int) -> Price | None:
    """The stored record of one markets row; None without a usable last_updated or id."""
    ts_us = parse_time_us(row.last_updated) if row.last_updated else None
    if ts_us is None or not _COIN_ID.fullmatch(row.id):
        return None
    return Price(
        source=SOURCE, coin_id=row.id, symbol=row.symbol.upper(), ts_us=ts_us, recv_us=recv_us,
        price_usd=row.current_price, market_cap=row.market_cap, market_cap_rank=row.market_cap_rank,
        total_volume=row.total_volume, high_24h=row.high_24h, low_24h=row.low_24h,
        price_change_24h=row.price_change_24h, price_change_pct_24h=row.price_change_percentage_24h,
        circulating_supply=row.circulating_supply,
    )


# --- /coins/{id}/market_chart/range ---------------------------------------------------------------


class _Chart(msgspec.Struct):
    prices: list[tuple[float, float | None]]
    market_caps: list[tuple[float, float | None]] = []
    total_volumes: list[tuple[float, float | None]] = []


_chart_decoder = msgspec.json.Decoder(_Chart)


def decode_range(body: bytes, coin_id: str, symbol: str, recv_us: int) -> list[Price] | Problem:
    """One Price per timestamp of `prices`, with the market cap and volume of the same timestamp."""
    try:
        chart = _chart_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        return _problem(body, exc)
    caps = {int(ms): v for ms, v in chart.market_caps if _valid_ms(ms)}
    volumes = {int(ms): v for ms, v in chart.total_volumes if _valid_ms(ms)}
    out: dict[int, Price] = {}
    for ms, price in chart.prices:
        if not _valid_ms(ms):
            continue
        ms = int(ms)
        out[ms] = Price(SOURCE, coin_id, symbol.upper(), ms * 1000, recv_us, price_usd=price,
                        market_cap=caps.get(ms), total_volume=volumes.get(ms))
    return list(out.values())


def _valid_ms(ms: float) -> bool:
    return math.isfinite(ms) and 0 < ms < 1e14  # until the year 5138


# --- discovery ------------------------------------------------------------------------------------


def candidate_pairs(rows: Iterable[MarketRow], *, quote: str, exclude: Iterable[str] = ()) -> list[str]:
    """Binance pairs for coins in the order given (market cap): symbol.upper() + quote, skipping the
    quote asset's own pair (USDTUSDT), excluded bases and symbols Binance could not list."""
    skip = {quote, *exclude}
    out: dict[str, None] = {}
    for row in rows:
        base = row.symbol.upper()
        if base in skip or not _BASE.fullmatch(base):
            continue
        out.setdefault(base + quote, None)
    return list(out)


def tradable(pairs: list[str], status: Mapping[str, str]) -> list[str]:
    return [p for p in pairs if status.get(p) == "TRADING"]


def pair_list(candidates: Iterable[str], fallback: Iterable[str], limit: int) -> list[str]:
    """Fallback pairs first (always included), then candidates, at most `limit` in all (never fewer
    than the fallback pairs)."""
    out = dict.fromkeys(fallback)
    for pair in candidates:
        if len(out) >= limit:
            break
        out.setdefault(pair, None)
    return list(out)
