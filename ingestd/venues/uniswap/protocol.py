"""The Uniswap v3 subgraph over GraphQL, sans-I/O: request bodies out, typed pool reads in.

One pool read is two kinds of query:

1. `pool_request`: the pool, its tokens' ETH prices, the ETH/USD price (bundle "1"), its two
   latest PoolDayData buckets, and `_meta.block`: the block all of that was read at.
2. `ticks_request`: the initialized ticks inside the ±2 % window, `first` per page, ordered by id
   and paged with `id_gt` (The Graph's recommended pagination; `skip` gets slow and is capped), all
   pinned to the same block with `block: {number: B}` so pages of one read never mix blocks.

The subgraph sends BigInt and BigDecimal values as JSON strings, and GraphQL errors with HTTP 200
and an `errors` array. Every decoder returns a value or a `Problem`; none raises.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from ingestd.model import DexMetric
from ingestd.venues.uniswap import depth

POOL_QUERY = """query Pool($pool: ID!) {
  _meta { block { number timestamp } }
  bundle(id: "1") { ethPriceUSD }
  pool(id: $pool) {
    id feeTier liquidity sqrtPrice tick totalValueLockedUSD
    token0 { id symbol decimals derivedETH }
    token1 { id symbol decimals derivedETH }
    poolDayData(first: 2, orderBy: date, orderDirection: desc) { date volumeUSD tvlUSD }
  }
}"""

TICKS_QUERY = """query Ticks($pool: String!, $lo: BigInt!, $hi: BigInt!, $after: String!, $block: Int!, $first: Int!) {
  ticks(first: $first, orderBy: id, orderDirection: asc, block: {number: $block},
        where: {pool: $pool, tickIdx_gte: $lo, tickIdx_lte: $hi, id_gt: $after}) {
    id tickIdx liquidityNet
  }
}"""

MAX_PAGE = 1000  # The Graph caps `first` at 1000
MAX_TICK = 887272  # TickMath.MAX_TICK: the price range a v3 pool can reach


class Problem(msgspec.Struct, frozen=True):
    """A response that was not a usable read. kind: graphql_errors | malformed | pool_not_found |
    bad_value."""

    kind: str
    detail: str


def endpoint(gateway_url: str, subgraph_id: str, api_key: str) -> str:
    """The gateway puts the key in the path (/api/<key>/subgraphs/id/<id>); a self-hosted
    graph-node serves /subgraphs/id/<id> without one."""
    base = gateway_url.rstrip("/")
    if api_key:
        return f"{base}/api/{api_key}/subgraphs/id/{subgraph_id}"
    return f"{base}/subgraphs/id/{subgraph_id}"


def pool_request(pool_id: str) -> bytes:
    return msgspec.json.encode({"query": POOL_QUERY, "variables": {"pool": pool_id}})


def ticks_request(pool_id: str, lo: int, hi: int, after: str, block: int, first: int) -> bytes:
    variables = {"pool": pool_id, "lo": str(lo), "hi": str(hi), "after": after, "block": block, "first": first}
    return msgspec.json.encode({"query": TICKS_QUERY, "variables": variables})


# --- wire shapes ----------------------------------------------------------------------------------


class _Error(msgspec.Struct):
    message: str = ""


class _Block(msgspec.Struct):
    number: int
    timestamp: int | None = None


class _Meta(msgspec.Struct):
    block: _Block


class _Bundle(msgspec.Struct):
    ethPriceUSD: str


class _Token(msgspec.Struct):
    id: str
    decimals: str | int
    derivedETH: str
    symbol: str = ""


class _Day(msgspec.Struct):
    date: int
    volumeUSD: str
    tvlUSD: str | None = None


class _Pool(msgspec.Struct):
    id: str
    liquidity: str
    sqrtPrice: str
    tick: str | int | None
    totalValueLockedUSD: str
    token0: _Token
    token1: _Token
    poolDayData: list[_Day] = []
    feeTier: str | int | None = None


class _PoolData(msgspec.Struct):
    meta: _Meta = msgspec.field(name="_meta")
    bundle: _Bundle | None = None
    pool: _Pool | None = None


class _PoolResponse(msgspec.Struct):
    data: _PoolData | None = None
    errors: list[_Error] | None = None


class _Tick(msgspec.Struct):
    id: str
    tickIdx: str | int
    liquidityNet: str | int


class _TicksData(msgspec.Struct):
    ticks: list[_Tick]


class _TicksResponse(msgspec.Struct):
    data: _TicksData | None = None
    errors: list[_Error] | None = None


_pool_decoder = msgspec.json.Decoder(_PoolResponse)
_ticks_decoder = msgspec.json.Decoder(_TicksResponse)


# --- decoded values -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoolRead:
    """One pool as the subgraph reported it at `block`."""

    pool_id: str
    block: int
    block_ts: int | None  # Unix seconds
    liquidity: int
    sqrt_price_x96: int
    tick: int
    tvl_usd: float
    decimals0: int
    decimals1: int
    usd0: float | None  # token prices in USD (None without a bundle)
    usd1: float | None
    day_volumes: tuple[tuple[int, float], ...]  # (day start, volume USD), newest first


@dataclass(frozen=True)
class TicksPage:
    ticks: tuple[tuple[int, int], ...]  # (tickIdx, liquidityNet)
    last_id: str  # id_gt of the next page
    full: bool  # `first` items came back: there may be more


def _errors(errors: list[_Error] | None) -> Problem | None:
    if errors:
        return Problem("graphql_errors", "; ".join(e.message for e in errors)[:300])
    return None


def decode_pool(body: bytes, pool_id: str) -> PoolRead | Problem:
    try:
        resp = _pool_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        return Problem("malformed", str(exc)[:200])
    problem = _errors(resp.errors)
    if problem is not None:
        return problem
    data = resp.data
    if data is None:
        return Problem("malformed", "neither data nor errors")
    pool = data.pool
    if pool is None:
        return Problem("pool_not_found", f"the subgraph has no pool {pool_id}")
    try:
        if pool.tick is None:
            return Problem("bad_value", f"pool {pool_id} is not initialized (tick is null)")
        eth_usd = float(data.bundle.ethPriceUSD) if data.bundle is not None else None
        usd0 = float(pool.token0.derivedETH) * eth_usd if eth_usd is not None else None
        usd1 = float(pool.token1.derivedETH) * eth_usd if eth_usd is not None else None
        read = PoolRead(
            pool_id=pool.id.lower(),
            block=data.meta.block.number,
            block_ts=data.meta.block.timestamp,
            liquidity=int(pool.liquidity),
            sqrt_price_x96=int(pool.sqrtPrice),
            tick=int(pool.tick),
            tvl_usd=float(pool.totalValueLockedUSD),
            decimals0=int(pool.token0.decimals),
            decimals1=int(pool.token1.decimals),
            usd0=usd0,
            usd1=usd1,
            day_volumes=tuple((d.date, float(d.volumeUSD)) for d in pool.poolDayData),
        )
    except (ValueError, OverflowError) as exc:
        return Problem("bad_value", f"pool {pool_id}: {exc}"[:200])
    in_range = (
        0 <= read.liquidity < 2**128
        and 0 < read.sqrt_price_x96 < 2**160
        and -MAX_TICK <= read.tick <= MAX_TICK
        and 0 <= read.decimals0 <= 255
        and 0 <= read.decimals1 <= 255
    )
    if not in_range:
        return Problem("bad_value", f"pool {pool_id}: liquidity, sqrtPrice, tick or decimals out of range")
    return read


def decode_ticks(body: bytes, first: int) -> TicksPage | Problem:
    try:
        resp = _ticks_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
        return Problem("malformed", str(exc)[:200])
    problem = _errors(resp.errors)
    if problem is not None:
        return problem
    if resp.data is None:
        return Problem("malformed", "neither data nor errors")
    ticks = resp.data.ticks
    try:
        pairs = tuple((int(t.tickIdx), int(t.liquidityNet)) for t in ticks)
    except ValueError as exc:
        return Problem("bad_value", str(exc)[:200])
    if any(not -MAX_TICK <= idx <= MAX_TICK or not -(2**127) <= net < 2**127 for idx, net in pairs):
        return Problem("bad_value", "tickIdx or liquidityNet out of range")
    last_id = ticks[-1].id if ticks else ""
    return TicksPage(pairs, last_id, len(ticks) >= first)


def to_metric(read: PoolRead, ticks: list[tuple[int, int]], *, chain: str, ts_us: int, recv_us: int) -> DexMetric:
    """The stored record of one complete read (pool + every tick in its window)."""
    amounts = depth.depth_amounts(read.sqrt_price_x96, read.tick, read.liquidity, ticks)
    depth_2pct = None
    if amounts is not None and read.usd0 is not None and read.usd1 is not None:
        depth_2pct = depth.depth_usd(amounts, read.decimals0, read.decimals1, read.usd0, read.usd1)
    volume = depth.rolling_volume_24h(read.day_volumes, read.block_ts) if read.block_ts is not None else None
    return DexMetric(
        chain=chain,
        pool_address=read.pool_id,
        ts_us=ts_us,
        recv_us=recv_us,
        liquidity=str(read.liquidity),
        tvl_usd=read.tvl_usd,
        volume_24h_usd=volume,
        price=depth.human_price(read.sqrt_price_x96, read.decimals0, read.decimals1),
        depth_2pct_usd=depth_2pct,
    )
