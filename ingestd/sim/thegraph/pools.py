"""Deterministic Uniswap v3 pools for the simulated subgraph.

Each pool's state at a block is a pure function of (seed, pool, block): price, the liquidity
positions around it (a fixed set per pool plus a few that come and go with the block), and from
those the initialized ticks (liquidityNet) and the active liquidity, which are consistent with
each other exactly as on chain. Values are rendered the way the subgraph renders them: BigInt and
BigDecimal as JSON strings.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

DAY_S = 86_400
BLOCK_TIME_S = 12
FIRST_BLOCK = 21_000_000  # where the simulated chain starts


@dataclass(frozen=True)
class Token:
    id: str
    symbol: str
    decimals: int
    derived_eth: float  # price in ETH


WETH = Token("0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2", "WETH", 18, 1.0)
USDC = Token("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", "USDC", 6, 1 / 3200)
USDT = Token("0xdac17f958d2ee523a2206206994597c13d831ec7", "USDT", 6, 1 / 3200)
WBTC = Token("0x2260fac5e5542a773aa44fbcfedf7c193bc2c599", "WBTC", 8, 20.5)


@dataclass(frozen=True)
class PoolSpec:
    address: str
    token0: Token
    token1: Token
    fee_tier: int
    tick_spacing: int
    liquidity_scale: int  # typical L of one position
    tvl_usd: float

    @property
    def base_tick(self) -> int:
        """The tick of the pool's fair price (token1 per token0 in raw units)."""
        human = self.token0.derived_eth / self.token1.derived_eth
        raw = human * 10.0 ** (self.token1.decimals - self.token0.decimals)
        return math.floor(math.log(raw) / math.log(1.0001))


KNOWN_POOLS = (
    PoolSpec("0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640", USDC, WETH, 500, 10, 10**17, 3.1e8),
    PoolSpec("0xcbcdf9626bc03e24f779434178a73a0b4bad62ed", WBTC, WETH, 3000, 60, 10**15, 2.4e8),
    PoolSpec("0x4e68ccd3e89f51c3074ca5072bbac773960dfa36", WETH, USDT, 3000, 60, 10**16, 1.1e8),
)


def pool_specs(count: int) -> list[PoolSpec]:
    """The known pools first, then synthetic WETH/USDC-like pools with made-up addresses."""
    specs = list(KNOWN_POOLS[:count])
    for i in range(count - len(specs)):
        address = "0x" + f"{0xfeed0000 + i:08x}".rjust(40, "0")
        specs.append(PoolSpec(address, USDC, WETH, 3000, 60, 10**16, 5.0e6 * (i + 1)))
    return specs


@dataclass(frozen=True)
class PoolState:
    spec: PoolSpec
    block: int
    block_ts: int
    tick: int
    sqrt_price_x96: int
    liquidity: int
    nets: dict[int, int]  # initialized ticks: tickIdx -> liquidityNet
    tvl_usd: str
    eth_price_usd: str
    day_data: list[dict]  # newest first, as served

    def ticks_in(self, lo: int, hi: int) -> list[tuple[str, int, int]]:
        """(id, tickIdx, liquidityNet) of initialized ticks with lo <= tickIdx <= hi, by id."""
        rows = [(f"{self.spec.address}#{t}", t, n) for t, n in self.nets.items() if lo <= t <= hi and n != 0]
        return sorted(rows)

    def pool_json(self) -> dict:
        s = self.spec
        return {
            "id": s.address,
            "feeTier": str(s.fee_tier),
            "liquidity": str(self.liquidity),
            "sqrtPrice": str(self.sqrt_price_x96),
            "tick": str(self.tick),
            "totalValueLockedUSD": self.tvl_usd,
            "token0": _token_json(s.token0),
            "token1": _token_json(s.token1),
            "poolDayData": self.day_data,
        }


def _token_json(token: Token) -> dict:
    return {"id": token.id, "symbol": token.symbol, "decimals": str(token.decimals), "derivedETH": repr(token.derived_eth)}


class PoolUniverse:
    def __init__(self, specs: list[PoolSpec], seed: int) -> None:
        self.specs = {s.address: s for s in specs}
        self.seed = seed
        # A genesis time that depends on the seed, so day boundaries fall at different blocks.
        self.genesis_ts = 1_700_000_000 + random.Random(f"{seed}:genesis").randrange(DAY_S)

    def block_ts(self, block: int) -> int:
        return self.genesis_ts + (block - FIRST_BLOCK) * BLOCK_TIME_S

    def eth_price_usd(self, block: int) -> str:
        rng = random.Random(f"{self.seed}:eth:{block}")
        return f"{3200 * (1 + rng.uniform(-0.01, 0.01)):.8f}"

    def state(self, address: str, block: int) -> PoolState | None:
        spec = self.specs.get(address)
        if spec is None:
            return None
        rng = random.Random(f"{self.seed}:{address}:{block}")
        tick = spec.base_tick + rng.randint(-300, 300)
        sqrt_price_x96 = int(1.0001 ** ((tick + rng.uniform(0.1, 0.9)) / 2) * 2**96)
        positions = _positions(random.Random(f"{self.seed}:{address}:positions"), spec, 40)
        positions += _positions(rng, spec, 3, centre=tick)
        nets: dict[int, int] = {}
        liquidity = 0
        for lower, upper, amount in positions:
            nets[lower] = nets.get(lower, 0) + amount
            nets[upper] = nets.get(upper, 0) - amount
            if lower <= tick < upper:
                liquidity += amount
        ts = self.block_ts(block)
        today = ts - ts % DAY_S
        day_data = [
            {"date": day, "volumeUSD": f"{spec.tvl_usd * rng.uniform(0.05, 0.6):.6f}", "tvlUSD": f"{spec.tvl_usd:.2f}"}
            for day in (today, today - DAY_S)
        ]
        return PoolState(
            spec=spec, block=block, block_ts=ts, tick=tick, sqrt_price_x96=sqrt_price_x96, liquidity=liquidity,
            nets=nets, tvl_usd=f"{spec.tvl_usd * (1 + rng.uniform(-0.02, 0.02)):.6f}",
            eth_price_usd=self.eth_price_usd(block), day_data=day_data,
        )


def _positions(rng: random.Random, spec: PoolSpec, count: int, centre: int | None = None) -> list[tuple[int, int, int]]:
    """Liquidity positions (lower, upper, L) with ticks on the pool's spacing, mostly near its price."""
    spacing = spec.tick_spacing
    centre = spec.base_tick if centre is None else centre
    out = []
    for _ in range(count):
        lower = (centre + rng.randint(-700, 500)) // spacing * spacing
        upper = lower + spacing * rng.randint(1, max(2, 600 // spacing))
        out.append((lower, upper, rng.randint(1, 50) * spec.liquidity_scale + rng.randint(0, 10**9)))
    return out
