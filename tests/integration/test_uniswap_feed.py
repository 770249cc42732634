"""Acceptance for ingestd@uniswap through real processes: the simulated The Graph gateway with faults
(GraphQL errors with HTTP 200, 429 with Retry-After, malformed bodies, dropped connections) and
`ingestd run uniswap`; the SQLite store must hold exactly one row per complete pool read the
simulator served, each with the values recomputed from what was served, depth included."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
import math
from fractions import Fraction

import pytest

from ingestd.venues.uniswap import protocol
from tests.harness import start_daemon, start_venue_sim, stop_process, wait_for, write_family_config

pytestmark = pytest.mark.slow

API_KEY = "test-key-5d1c9a"


def stored_rows(db) -> list[tuple]:
    if not db.exists():
        return []
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return con.execute(
            "SELECT pool_address, CAST(liquidity AS TEXT), tvl_usd, volume_24h_usd, price, depth_2pct_usd, ts, chain "
            "FROM dex_metrics").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        con.close()


def expected_rows(truth: dict) -> Counter:
    """Each complete read the simulator served, turned into the stored values by the feed's own
    pure functions, once per time it was served complete."""
    out: Counter = Counter()
    for read in truth["reads"]:
        pool_read = protocol.decode_pool(json.dumps(read["response"]).encode(), read["pool"])
        assert isinstance(pool_read, protocol.PoolRead)
        assert len(read["ticks"]) == 1  # the tick window follows from the block's tick alone
        ticks = next(iter(read["ticks"].values()))
        metric = protocol.to_metric(pool_read, [tuple(t) for t in ticks], chain="ethereum", ts_us=0, recv_us=0)
        row = (metric.pool_address, metric.liquidity, metric.tvl_usd, metric.volume_24h_usd, metric.price,
               metric.depth_2pct_usd)
        out[row] += read["complete"]
    return out


def exact_depth(read: dict, ticks: list) -> float:
    """An independent check of the depth walk: rational arithmetic on the per-range liquidity
    (ranges between consecutive initialized ticks), summed over the ±2 % interval."""
    pool = read["response"]["data"]["pool"]
    eth = Fraction(read["response"]["data"]["bundle"]["ethPriceUSD"])
    usd0 = Fraction(pool["token0"]["derivedETH"]) * eth
    usd1 = Fraction(pool["token1"]["derivedETH"]) * eth
    d0, d1 = int(pool["token0"]["decimals"]), int(pool["token1"]["decimals"])
    tick, liquidity = int(pool["tick"]), int(pool["liquidity"])
    sqrt_p = Fraction(int(pool["sqrtPrice"]), 2**96)
    nets = dict((int(t), int(n)) for t, n in ticks)

    def liquidity_between(lo_tick: int) -> int:
        # active liquidity in the range starting at an initialized tick boundary lo_tick
        active = liquidity
        for t, n in nets.items():
            if tick < t <= lo_tick:
                active += n
            elif lo_tick < t <= tick:
                active -= n
        return active

    def sq(t):  # the float boundary, as rational
        return Fraction(1.0001 ** (t / 2))

    up_target, down_target = sqrt_p * Fraction(math.sqrt(1.02)), sqrt_p * Fraction(math.sqrt(0.98))
    bounds = sorted(nets)
    up = Fraction(0)
    points = [sqrt_p] + [sq(t) for t in bounds if t > tick and sq(t) < up_target] + [up_target]
    starts = [tick] + [t for t in bounds if t > tick and sq(t) < up_target]
    for (a, b), start in zip(zip(points, points[1:]), starts):
        up += liquidity_between(start) * (b - a)
    down = Fraction(0)
    lower = [t for t in sorted(bounds, reverse=True) if t <= tick and sq(t) > down_target]
    points = [sqrt_p] + [sq(t) for t in lower] + [down_target]
    starts = [tick] + [t - 1 for t in lower]
    for (a, b), start in zip(zip(points, points[1:]), starts):
        down += liquidity_between(start) * (1 / b - 1 / a)
    return float(up / 10**d1 * usd1 + down / 10**d0 * usd0)


def test_stored_metrics_equal_the_reads_served_through_faults(tmp_path):
    sim = start_venue_sim(tmp_path, "thegraph", "--seed", "7", "--pools", "3", "--block-interval", "0.5",
                          "--api-key", API_KEY, "--error-rate", "0.08", "--rate-limit-rate", "0.04",
                          "--retry-after", "1", "--malformed-rate", "0.04", "--drop-rate", "0.04")
    pools = sim.urls["pools"]
    config = write_family_config(tmp_path, "uniswap", {
        "gateway_url": sim.urls["gateway_url"],
        "subgraph_id": sim.urls["subgraph_id"],
        "pools": pools,
        "poll_interval_s": 1,
        "tick_page_size": 4,
        "request_timeout_s": 5,
    })
    daemon = start_daemon(tmp_path, config, instance="uniswap", env={"THEGRAPH_API_KEY": API_KEY})
    try:
        # Faults on for a while: every kind must have been served at least once.
        wait_for(lambda: all(v > 0 for v in sim.get("/_sim/truth")["faults"].values()), 30,
                 what="every fault kind served")
        sim.post("/_sim/calm")
        wait_for(lambda: len(stored_rows(daemon.db)) >= 3 * len(pools), 30, what="reads stored after calm")
    finally:
        assert stop_process(daemon.proc) == 0, daemon.log()
    truth = sim.get("/_sim/truth")
    stored = stored_rows(daemon.db)
    got = Counter(row[:6] for row in stored)
    assert got == expected_rows(truth)
    assert len({(r[0], r[6]) for r in stored}) == len(stored)  # natural keys unique
    assert {r[7] for r in stored} == {"ethereum"}
    # depth: the feed's float walk agrees with an independent rational computation
    for read in truth["reads"][:10]:
        pool_read = protocol.decode_pool(json.dumps(read["response"]).encode(), read["pool"])
        ticks = next(iter(read["ticks"].values()))
        metric = protocol.to_metric(pool_read, [tuple(t) for t in ticks], chain="ethereum", ts_us=0, recv_us=0)
        assert metric.depth_2pct_usd == pytest.approx(exact_depth(read, ticks), rel=1e-9)
        assert metric.depth_2pct_usd > 0
    log = daemon.log()
    assert API_KEY not in log and API_KEY not in sim.log_path.read_text()
    assert "pool read failed" in log
