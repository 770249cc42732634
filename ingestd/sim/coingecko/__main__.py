"""`python -m ingestd.sim.coingecko`: a simulated CoinGecko API (markets, market_chart/range)."""

from __future__ import annotations

import argparse
from functools import partial

import trio

from ingestd.sim.arguments import probability, run_simulator
from ingestd.sim.coingecko.server import COINS, CoinGeckoSim, SimOptions
from ingestd.sim.http_server import write_ports_file

EPILOG = """\
the feed's config: api_url = <api_url> (in the ports file)

control endpoints (same port):
  GET  /_sim/truth      every price row and chart point served (rows tagged "ids" or "top")
  POST /_sim/ranking    body {"order": ["solana", ...]}: these coins lead the market-cap ranking
  POST /_sim/calm       stop every fault for the rest of the run
  POST /_sim/pause      freeze market data (no new epochs); /_sim/resume carries on
  POST /_sim/drop       cut every open HTTP connection now
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ingestd.sim.coingecko", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    p.add_argument("--ports-file", metavar="PATH",
                   help='once bound, write {"api_url", "control_url", "pid"} here as JSON')
    p.add_argument("--seed", type=int, default=1, help="the same seed serves the same market (default: 1)")
    p.add_argument("--coins", type=int, default=len(COINS),
                   help=f"number of coins: {len(COINS)} real ones, then synthetic (default: {len(COINS)})")
    p.add_argument("--update-interval", type=float, default=60.0, metavar="SECONDS",
                   help="how often each coin's market data changes (default: 60)")
    p.add_argument("--api-key", default="", help="require this key in the plan's header (default: none needed)")
    p.add_argument("--plan", choices=("demo", "pro"), default="demo",
                   help="header checked: x-cg-demo-api-key or x-cg-pro-api-key")
    faults = p.add_argument_group("faults (probability per request, all off by default)")
    faults.add_argument("--rate-limit-rate", type=probability, default=0.0, help="HTTP 429 with Retry-After")
    faults.add_argument("--retry-after", type=int, default=1, metavar="SECONDS", help="Retry-After of a 429 (default: 1)")
    faults.add_argument("--error-rate", type=probability, default=0.0, help="HTTP 503")
    faults.add_argument("--malformed-rate", type=probability, default=0.0, help="a truncated JSON body with HTTP 200")
    faults.add_argument("--drop-rate", type=probability, default=0.0, help="close the connection without answering")
    p.add_argument("--log-level", default="warning", help="log level (default: warning)")
    return p


async def _main(args: argparse.Namespace) -> None:
    options = SimOptions(seed=args.seed, coins=args.coins, update_interval_s=args.update_interval,
                         api_key=args.api_key, plan=args.plan, error_rate=args.error_rate,
                         rate_limit_rate=args.rate_limit_rate, retry_after_s=args.retry_after,
                         malformed_rate=args.malformed_rate, drop_rate=args.drop_rate)
    sim = CoinGeckoSim(options)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(sim.server.serve, args.host, args.port))
        port = listeners[0].socket.getsockname()[1]
        url = f"http://{args.host}:{port}"
        write_ports_file(args.ports_file, {"url": url, "api_url": f"{url}/api/v3", "control_url": url})


def main() -> int:
    return run_simulator(_main, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
