"""`python -m ingestd.sim.thegraph`: a simulated The Graph gateway with the Uniswap v3 subgraph."""

from __future__ import annotations

import argparse
import logging
from functools import partial

import trio

from ingestd.sim.arguments import probability, run_simulator
from ingestd.sim.http_server import write_ports_file
from ingestd.sim.thegraph.server import DEFAULT_SUBGRAPH_ID, GraphSim, SimOptions

EPILOG = """\
the feed's config: gateway_url = <url>, subgraph_id = <subgraph_id> (both in the ports file)

control endpoints (same port):
  GET  /_sim/truth    every complete pool read served: block, the pool JSON, the ticks of its window
  POST /_sim/calm     stop every fault for the rest of the run
  POST /_sim/pause    freeze the block number; /_sim/resume carries on from it
  POST /_sim/drop     cut every open HTTP connection now
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ingestd.sim.thegraph", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port; 0 picks a free one (default)")
    p.add_argument("--ports-file", metavar="PATH",
                   help='once bound, write {"url", "gateway_url", "subgraph_id", "control_url", "pid"} here as JSON')
    p.add_argument("--seed", type=int, default=1, help="the same seed serves the same pools and ticks (default: 1)")
    p.add_argument("--pools", type=int, default=3, help="number of pools: 3 real addresses, then synthetic ones")
    p.add_argument("--block-interval", type=float, default=1.0, metavar="SECONDS",
                   help="wall-clock seconds per block (default: 1.0; mainnet: 12)")
    p.add_argument("--api-key", default="", help="require this key in the path /api/<key>/... (default: any or none)")
    p.add_argument("--subgraph-id", default=DEFAULT_SUBGRAPH_ID, help="the subgraph id served")
    faults = p.add_argument_group("faults (probability per request, all off by default)")
    faults.add_argument("--error-rate", type=probability, default=0.0, help="GraphQL `errors` with HTTP 200")
    faults.add_argument("--rate-limit-rate", type=probability, default=0.0, help="HTTP 429 with Retry-After")
    faults.add_argument("--retry-after", type=int, default=1, metavar="SECONDS", help="Retry-After of a 429 (default: 1)")
    faults.add_argument("--malformed-rate", type=probability, default=0.0, help="a truncated JSON body with HTTP 200")
    faults.add_argument("--drop-rate", type=probability, default=0.0, help="close the connection without answering")
    p.add_argument("--log-level", default="warning", help="log level (default: warning)")
    return p


async def _main(args: argparse.Namespace) -> None:
    options = SimOptions(seed=args.seed, pools=args.pools, block_interval_s=args.block_interval, api_key=args.api_key,
                         subgraph_id=args.subgraph_id, error_rate=args.error_rate, rate_limit_rate=args.rate_limit_rate,
                         retry_after_s=args.retry_after, malformed_rate=args.malformed_rate, drop_rate=args.drop_rate)
    sim = GraphSim(options)
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(sim.server.serve, args.host, args.port))
        port = listeners[0].socket.getsockname()[1]
        url = f"http://{args.host}:{port}"
        write_ports_file(args.ports_file, {"url": url, "gateway_url": url, "subgraph_id": options.subgraph_id,
                                           "control_url": url, "pools": list(sim.universe.specs)})
        logging.getLogger("ingestd.sim.thegraph").info("serving on %s", url)


def main() -> int:
    return run_simulator(_main, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
