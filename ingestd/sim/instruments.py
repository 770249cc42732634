"""Static description of the symbols the simulator lists.

Real-looking symbols come first (so demos and logs read naturally), with roughly realistic price
levels and tick sizes; beyond those, synthetic names SYM000USDT, SYM001USDT, ... fill any requested count.
"""

from __future__ import annotations

from dataclasses import dataclass

QTY_DECIMALS = 5  # lot step 0.00001 for every symbol: small enough for BTC, harmless elsewhere
KNOWN_QUOTES = ("USDT", "FDUSD", "USDC", "BTC", "ETH", "BNB", "EUR", "TRY")


@dataclass(frozen=True)
class Instrument:
    symbol: str
    base_asset: str
    quote_asset: str
    price_decimals: int
    start_price: int  # in ticks of 10**-price_decimals
    qty_decimals: int = QTY_DECIMALS


# (symbol, price decimals, starting price as a decimal string)
_REAL_LOOKING: tuple[tuple[str, int, str], ...] = (
    ("BTCUSDT", 2, "65000.00"),
    ("ETHUSDT", 2, "3200.00"),
    ("SOLUSDT", 2, "150.00"),
    ("BNBUSDT", 2, "580.00"),
    ("XRPUSDT", 4, "0.5200"),
    ("DOGEUSDT", 5, "0.12000"),
    ("ADAUSDT", 4, "0.4500"),
    ("AVAXUSDT", 2, "35.00"),
    ("LINKUSDT", 2, "14.00"),
    ("DOTUSDT", 3, "6.500"),
    ("LTCUSDT", 2, "80.00"),
    ("TRXUSDT", 4, "0.1200"),
    ("ETHBTC", 5, "0.05000"),
)
REAL_LOOKING_SYMBOLS: tuple[str, ...] = tuple(name for name, _, _ in _REAL_LOOKING)


def _ticks(price: str, decimals: int) -> int:
    whole, _, frac = price.partition(".")
    return int(whole) * 10**decimals + int(frac.ljust(decimals, "0")[:decimals] or 0)


def default_symbols(count: int) -> list[str]:
    """The first `count` symbols: the real-looking ones, then SYM000USDT, SYM001USDT, ..."""
    if count < 0:
        raise ValueError("symbol count must be >= 0")
    names = list(REAL_LOOKING_SYMBOLS[:count])
    names += [f"SYM{i:03d}USDT" for i in range(count - len(names))]
    return names


def instrument_for(symbol: str) -> Instrument:
    """Describe any symbol: the table for known ones, a deterministic default for the rest."""
    for name, decimals, price in _REAL_LOOKING:
        if name == symbol:
            base, quote = _split(symbol)
            return Instrument(symbol, base, quote, decimals, _ticks(price, decimals))
    base, quote = _split(symbol)
    # Spread synthetic symbols over 1..~100 so they do not all look alike, without needing the seed.
    start = 1_000 + (sum(map(ord, symbol)) * 7919) % 99_000
    return Instrument(symbol, base, quote, 3, start)


def _split(symbol: str) -> tuple[str, str]:
    for quote in KNOWN_QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol, ""
