"""Render integer fixed-point amounts as Binance-style decimal strings.

The model keeps every price and quantity as an integer count of its smallest step (price ticks, lot
steps), so book keys are exact and a random walk never accumulates float error. Binance Spot renders
every amount with 8 decimals ("0.35280000"), whatever the symbol's tick size, so that is what we emit.
"""

from __future__ import annotations

WIRE_DECIMALS = 8


def render(units: int, decimals: int) -> str:
    """`units` counts steps of 10**-decimals; render it with exactly WIRE_DECIMALS decimals."""
    if units < 0:
        return "-" + render(-units, decimals)
    if decimals > WIRE_DECIMALS:
        # Binance never shows more than 8 decimals; extra precision is truncated, not rounded.
        units //= 10 ** (decimals - WIRE_DECIMALS)
        decimals = WIRE_DECIMALS
    scale = 10**decimals
    whole, frac = divmod(units, scale)
    if decimals == 0:
        return f"{whole}.{'0' * WIRE_DECIMALS}"
    return f"{whole}.{frac:0{decimals}d}{'0' * (WIRE_DECIMALS - decimals)}"


def step_text(decimals: int) -> str:
    """The smallest step as a wire string, e.g. 2 -> "0.01000000" (exchangeInfo tickSize/stepSize)."""
    return render(1, decimals)
