"""One realistic record of every kind, for tests that must cover them all (spool, sinks)."""

from __future__ import annotations

from ingestd.model import (
    Derivative,
    DexMetric,
    OnchainFlow,
    PredictionBook,
    PredictionTrade,
    Price,
    WhaleTrade,
)

T0 = 1_700_000_000_000_000  # µs


def derivative(i: int = 0) -> Derivative:
    return Derivative("bybit", "BTCUSDT", T0 + i, T0 + i + 900, funding_rate=0.0001, next_funding_us=T0 + 8 * 3600_000_000,
                      open_interest=51234.5, open_interest_value=3.4e9, mark_price=66000.5, index_price=65990.0,
                      basis=10.5)


def dex_metric(i: int = 0) -> DexMetric:
    return DexMetric("ethereum", "0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640", T0 + i, T0 + i + 1,
                     liquidity=str(2**127 + 12345), tvl_usd=3.1e8, volume_24h_usd=1.2e8, price=2501.25,
                     depth_2pct_usd=4.5e6)


def onchain_flow(i: int = 0) -> OnchainFlow:
    return OnchainFlow("ethereum", 19_000_000 + i, "0x" + f"{i:064x}", "0x" + f"{i + 7:064x}", 3, T0 + i, T0 + i + 5,
                       token="0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", from_addr="0x" + "1" * 40,
                       to_addr="0x" + "2" * 40, amount="115792089237316195423570985008687907853269984665640564039457.584007913129639935",
                       from_tag="binance-hot", to_tag=None)


def price(i: int = 0) -> Price:
    return Price("coingecko", "bitcoin", "BTC", T0 + i, T0 + i + 3, price_usd=66000.0, market_cap=1.3e12,
                 market_cap_rank=1, total_volume=2.5e10, high_24h=67000.0, low_24h=65000.0, price_change_24h=-120.5,
                 price_change_pct_24h=-0.18, circulating_supply=19_700_000.0)


def prediction_book(i: int = 0) -> PredictionBook:
    return PredictionBook("polymarket", "0x" + "ab" * 32, "7" * 77, T0 + i, T0 + i + 2, f"hash{i}", 0.52, 0.54,
                          bids=[(0.52, 1000.0), (0.51, 250.0)], asks=[(0.54, 800.0)])


def prediction_trade(i: int = 0) -> PredictionTrade:
    return PredictionTrade("polymarket", "0x" + "ab" * 32, "7" * 77, T0 + i, T0 + i + 2, 0.53, 120.0, "buy",
                           "0x" + f"{i:064x}", fee_rate_bps=0.0)


def whale_trade(i: int = 0) -> WhaleTrade:
    return WhaleTrade("0x" + f"{i:064x}", "0x1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf", "0x" + "ab" * 32, "7" * 77,
                      "BUY", 1000.0, 0.54, 540.0, T0 + i, T0 + i + 80_000, pseudonym="Whale-1",
                      title="Will it rain?", outcome="Yes")


def one_of_each_new_kind(i: int = 0) -> list:
    """Every kind beyond Binance's Trade/BookTop/Checkpoint."""
    return [derivative(i), dex_metric(i), onchain_flow(i), price(i), prediction_book(i), prediction_trade(i),
            whale_trade(i)]
