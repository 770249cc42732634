"""Uniswap v3 depth, price and volume math against values worked out by hand."""

from __future__ import annotations

import pytest

from ingestd.venues.uniswap import depth
from ingestd.venues.uniswap.depth import DepthAmounts, depth_amounts, depth_usd, human_price, rolling_volume_24h

Q96 = 2**96


def test_one_range_no_ticks():
    # P = 1, L = 1000: up Δy = L(√1.02 − 1) = 1000 × 0.0099504938 ; down Δx = L(1/√0.98 − 1) = 1000 × 0.0101525446
    amounts = depth_amounts(Q96, 0, 1000, [])
    assert amounts.token1_up == pytest.approx(9.9504938362, rel=1e-10)
    assert amounts.token0_down == pytest.approx(10.1525445522, rel=1e-10)
    assert depth_usd(amounts, 0, 0, 1.0, 1.0) == pytest.approx(20.1030383884, rel=1e-10)


def test_crossing_ticks_changes_the_liquidity_on_the_way():
    # Positions give liquidityNet +300 at tick -100 and +500 at tick 100; L at tick 0 is 1000.
    # Up: 1000 × (1.0001^50 − 1) + 1500 × (√1.02 − 1.0001^50) = 5.0122696 + 7.4073363
    # Down: 1000 × (1.0001^50 − 1) + 700 × (1/√0.98 − 1.0001^50)  [1/1.0001^-50 = 1.0001^50]
    #     = 5.0122696 + 3.5981929
    amounts = depth_amounts(Q96, 0, 1000, [(100, 500), (-100, 300)])
    assert amounts.token1_up == pytest.approx(12.4196059428, rel=1e-10)
    assert amounts.token0_down == pytest.approx(8.6104620735, rel=1e-10)


def test_ticks_beyond_two_percent_do_not_count():
    far = [(199 * 2, 10**6), (-203 * 2, 10**6)]  # ~±4 %: outside the walk
    assert depth_amounts(Q96, 0, 1000, far) == depth_amounts(Q96, 0, 1000, [])


def test_a_tick_at_the_current_tick_is_already_crossed():
    # tick == current tick: crossed from below, so it only matters going down (subtracted there).
    amounts = depth_amounts(Q96, 0, 1000, [(0, 400)])
    assert amounts.token1_up == pytest.approx(9.9504938362, rel=1e-10)
    assert amounts.token0_down == pytest.approx(600 * 10.1525445522 / 1000, rel=1e-10)


def test_inconsistent_ticks_give_no_depth():
    assert depth_amounts(Q96, 0, 1000, [(50, -2000)]) is None
    assert depth_amounts(Q96, 0, 1000, [(-50, 2000)]) is None


def test_usd_uses_decimals_and_token_prices():
    amounts = DepthAmounts(token1_up=3 * 10**18, token0_down=5_000 * 10**6)  # 3 WETH up, 5000 USDC down
    assert depth_usd(amounts, 6, 18, usd0=1.0, usd1=3200.0) == pytest.approx(3 * 3200 + 5000)


def test_human_price_from_sqrt_price():
    # USDC (6) / WETH (18): raw P = (sqrtPriceX96 / 2^96)^2, human = P × 10^(6 − 18)
    sqrt_x96 = 1387973228153220445631032690999296
    assert human_price(sqrt_x96, 6, 18) == pytest.approx((sqrt_x96 / Q96) ** 2 / 1e12, rel=1e-12)
    assert human_price(Q96, 18, 18) == 1.0
    assert human_price(2 * Q96, 0, 0) == 4.0


def test_tick_window_covers_two_percent_both_ways():
    lo, hi = depth.tick_window(1000)
    assert (lo, hi) == (1000 - 203 - 1, 1000 + 199 + 1)
    assert 1.0001 ** (hi - 1000) > 1.02 and 1.0001 ** (lo - 1000) < 0.98


def test_rolling_volume_counts_today_and_the_share_of_yesterday_in_the_window():
    today = 1_700_006_400  # a UTC midnight
    now = today + 6 * 3600  # 06:00: the window holds 18 h of yesterday
    assert rolling_volume_24h([(today, 100.0), (today - 86_400, 400.0)], now) == pytest.approx(100 + 400 * 0.75)
    assert rolling_volume_24h([(today - 86_400, 400.0), (today - 2 * 86_400, 999.0)], now) == pytest.approx(300)
    assert rolling_volume_24h([], now) is None
