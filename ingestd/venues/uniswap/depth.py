"""Uniswap v3 pool math: price, ±2 % depth from liquidity and initialized ticks, rolling 24 h volume.

Pure functions over numbers the subgraph returns; no I/O.

Price. A pool stores sqrtPriceX96 = √P · 2⁹⁶, where P is token1 per token0 in raw units (the
smallest units of each token). The human price, token1 per token0, is P · 10^(decimals0 − decimals1).

Depth within ±2 % (the method). Inside one tick range the active liquidity L is constant and the
reserves move along the curve of concentrated liquidity, so moving √P from √P_a to √P_b (a < b)
takes or gives

    Δx = L · (1/√P_a − 1/√P_b)   of token0        Δy = L · (√P_b − √P_a)   of token1

(Uniswap v3 whitepaper, eq. 6.14 and 6.16). To push the price up 2 %, a trader pays token1 and √P
rises from √P to √P·√1.02; to push it down 2 % they pay token0 and √P falls to √P·√0.98. We walk the
initialized ticks in the direction of the move, summing Δy (up) or Δx (down) over each range at its
liquidity, and cross each tick on the way: going up, crossing tick t adds its liquidityNet to L;
going down, it subtracts it (a tick at or below the pool's current tick has already been crossed
from below, which is why the downward walk starts at the current tick and the upward walk just above
it). The tick boundary is √P(t) = 1.0001^(t/2).

    depth_2pct_usd = Δy_up / 10^decimals1 · usd(token1) + Δx_down / 10^decimals0 · usd(token0)

that is, the US dollars it costs to move the price 2 % up plus 2 % down, where a token's USD price
is the subgraph's derivedETH · bundle.ethPriceUSD. Fees are ignored (they change the amount paid in
by the fee tier, 0.01–1 %, not the shape). Liquidity that would turn negative while walking means
the ticks are inconsistent with the pool's liquidity (a partial or mixed-block read), and the depth
is then unknown (None) rather than wrong.

Rolling 24 h volume. The subgraph keeps volume per UTC day (PoolDayData). At block time T the window
[T − 24 h, T] holds all of today's bucket (its volume is what happened since 00:00 UTC, all inside
the window) and the share of yesterday's bucket still inside the window, counted pro rata in time:
volume = today + yesterday · (1 − (T − today_start) / 86400). Older buckets fall outside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

Q96 = float(2**96)
TICK_BASE = 1.0001
DEPTH_FRACTION = 0.02  # ±2 %
DAY_S = 86_400


def sqrt_price_at_tick(tick: int) -> float:
    """√P at a tick boundary: 1.0001^(tick/2)."""
    return TICK_BASE ** (tick / 2)


def sqrt_price_from_x96(sqrt_price_x96: int) -> float:
    return sqrt_price_x96 / Q96


def human_price(sqrt_price_x96: int, decimals0: int, decimals1: int) -> float:
    """token1 per token0 in whole tokens."""
    sqrt_p = sqrt_price_from_x96(sqrt_price_x96)
    return sqrt_p * sqrt_p * 10.0 ** (decimals0 - decimals1)


def tick_window(current_tick: int, fraction: float = DEPTH_FRACTION) -> tuple[int, int]:
    """The tick indices a ±fraction walk can cross, with one tick of margin on each side."""
    down = math.floor(math.log(1 - fraction) / math.log(TICK_BASE)) - 1
    up = math.ceil(math.log(1 + fraction) / math.log(TICK_BASE)) + 1
    return current_tick + down, current_tick + up


@dataclass(frozen=True)
class DepthAmounts:
    token1_up: float  # raw token1 units paid in to move the price up by the fraction
    token0_down: float  # raw token0 units paid in to move it down by the fraction


def depth_amounts(
    sqrt_price_x96: int,
    current_tick: int,
    liquidity: int,
    ticks: Iterable[tuple[int, int]],
    fraction: float = DEPTH_FRACTION,
) -> DepthAmounts | None:
    """Amounts to move the price by ±fraction, walking (tickIdx, liquidityNet) pairs. None when the
    ticks contradict the pool's liquidity (it would go negative)."""
    nets: dict[int, int] = {}
    for idx, net in ticks:
        nets[idx] = nets.get(idx, 0) + net
    sqrt_p = sqrt_price_from_x96(sqrt_price_x96)
    above = sorted(t for t in nets if t > current_tick)
    below = sorted((t for t in nets if t <= current_tick), reverse=True)

    # Up: token1 in, √P rises to √P·√(1+f); crossing t upwards adds liquidityNet.
    target = sqrt_p * math.sqrt(1 + fraction)
    active, at, up = liquidity, sqrt_p, 0.0
    for t in above:
        boundary = sqrt_price_at_tick(t)
        if boundary >= target:
            break
        up += active * max(0.0, boundary - at)
        at = boundary
        active += nets[t]
        if active < 0:
            return None
    up += active * max(0.0, target - at)

    # Down: token0 in, √P falls to √P·√(1−f); crossing t downwards subtracts liquidityNet.
    target = sqrt_p * math.sqrt(1 - fraction)
    active, at, down = liquidity, sqrt_p, 0.0
    for t in below:
        boundary = sqrt_price_at_tick(t)
        if boundary <= target:
            break
        down += active * max(0.0, 1 / boundary - 1 / at)
        at = boundary
        active -= nets[t]
        if active < 0:
            return None
    down += active * max(0.0, 1 / target - 1 / at)
    return DepthAmounts(up, down)


def depth_usd(amounts: DepthAmounts, decimals0: int, decimals1: int, usd0: float, usd1: float) -> float:
    return amounts.token1_up / 10.0**decimals1 * usd1 + amounts.token0_down / 10.0**decimals0 * usd0


def rolling_volume_24h(day_buckets: Sequence[tuple[int, float]], now_s: int) -> float | None:
    """(day start in Unix seconds, volume USD) buckets, any order -> volume over [now − 24 h, now];
    None when there are no buckets at all."""
    if not day_buckets:
        return None
    today = now_s - now_s % DAY_S
    total = 0.0
    for start, volume in day_buckets:
        if start == today:
            total += volume
        elif start == today - DAY_S:
            total += volume * (1 - (now_s - today) / DAY_S)
    return total
