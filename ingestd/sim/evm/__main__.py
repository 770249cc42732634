"""`python -m ingestd.sim.evm`: a simulated Ethereum JSON-RPC node whose chain grows blocks of
ERC-20 transfers, with reorgs, provider log limits and HTTP faults."""

from __future__ import annotations

import argparse
import logging
from functools import partial

import trio

from ingestd.sim.arguments import probability, positive, run_simulator
from ingestd.sim.evm.chain import KNOWN_WALLETS, TOKENS
from ingestd.sim.evm.server import LIMIT_STYLES, EvmSim, SimOptions
from ingestd.sim.http_server import write_ports_file

EPILOG = """\
the feed's config: rpc_url = <rpc_url>, chain = <chain>, tokens = <tokens> (all in the ports file)

control endpoints (on control_url, a port of their own):
  GET  /_sim/truth[?confirmations=N]   the canonical chain's transfers (up to head - N), the abandoned
                                       branches' transfers, reorg and fault counts
  POST /_sim/calm                      stop faults, reorgs and removed-log injection (limits stay)
  POST /_sim/pause, /_sim/resume       stop and restart block production
  POST /_sim/drop                      cut every open RPC connection now
  POST /_sim/reorg?depth=N             replace the newest N blocks by a new branch now
  POST /_sim/step                      produce one block now (also while paused)
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ingestd.sim.evm", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="JSON-RPC port; 0 picks a free one (default)")
    p.add_argument("--control-port", type=int, default=0, help="control port; 0 picks a free one (default)")
    p.add_argument("--ports-file", metavar="PATH",
                   help='once bound, write {"rpc_url", "control_url", "chain", "tokens", "labels", "first_block", '
                        '"pid"} here as JSON')
    p.add_argument("--seed", type=int, default=1, help="the same seed builds the same chain (default: 1)")
    p.add_argument("--chain", default="ethereum", help="chain name written to the ports file (default: ethereum)")
    p.add_argument("--chain-id", type=int, default=1, help="eth_chainId (default: 1)")
    p.add_argument("--first-block", type=int, default=19_000_000, help="number of the first block (default: 19000000)")
    p.add_argument("--initial-blocks", type=int, default=20, help="blocks that exist at start (default: 20)")
    p.add_argument("--block-interval", type=positive, default=1.0, metavar="SECONDS",
                   help="wall-clock seconds per new block (default: 1.0; mainnet: 12)")
    p.add_argument("--tokens", type=int, default=3, choices=range(1, len(TOKENS) + 1),
                   help=f"how many of {', '.join(t.symbol for t in TOKENS)} move (default: 3)")
    p.add_argument("--transfers-per-block", type=float, default=3.0,
                   help="mean transactions per block, most of them transfers (default: 3)")
    chain = p.add_argument_group("reorgs")
    chain.add_argument("--reorg-every", type=int, default=0, metavar="N",
                       help="every N new blocks, replace the newest blocks by a new branch (default: 0, never)")
    chain.add_argument("--reorg-depth", type=int, default=3, metavar="D", help="blocks a reorg replaces (default: 3)")
    limits = p.add_argument_group("provider limits (not faults: they stay after calm)")
    limits.add_argument("--max-logs", type=int, default=0, metavar="N",
                        help="refuse an eth_getLogs answer of more than N logs (default: 0, no limit)")
    limits.add_argument("--limit-style", choices=LIMIT_STYLES, default="infura",
                        help="infura: -32005 with a block range that fits; alchemy: -32602 'Log response size "
                             "exceeded' without one; both: alternate (default: infura)")
    faults = p.add_argument_group("faults (probability per request, all off by default)")
    faults.add_argument("--error-rate", type=probability, default=0.0, help='JSON-RPC error -32000 "header not found"')
    faults.add_argument("--rate-limit-rate", type=probability, default=0.0,
                        help="HTTP 429 with Retry-After, or HTTP 200 with Infura's -32005 rate-limit error")
    faults.add_argument("--retry-after", type=int, default=1, metavar="SECONDS", help="Retry-After of a 429 (default: 1)")
    faults.add_argument("--malformed-rate", type=probability, default=0.0,
                        help="a truncated body, an HTML 502 page, a wrong id, no result, or a log with a bad field")
    faults.add_argument("--drop-rate", type=probability, default=0.0, help="close the connection without answering")
    faults.add_argument("--removed-rate", type=probability, default=0.0,
                        help="eth_getLogs also returns abandoned blocks' logs in its range with removed: true")
    p.add_argument("--log-level", default="warning", help="log level (default: warning)")
    return p


def options_from(args: argparse.Namespace) -> SimOptions:
    return SimOptions(
        seed=args.seed, chain=args.chain, chain_id=args.chain_id, first_block=args.first_block,
        initial_blocks=args.initial_blocks, block_interval_s=args.block_interval, tokens=args.tokens,
        transfers_per_block=args.transfers_per_block, reorg_every=args.reorg_every, reorg_depth=args.reorg_depth,
        max_logs=args.max_logs, limit_style=args.limit_style, error_rate=args.error_rate,
        rate_limit_rate=args.rate_limit_rate, retry_after_s=args.retry_after, malformed_rate=args.malformed_rate,
        drop_rate=args.drop_rate, removed_rate=args.removed_rate,
    )


async def _main(args: argparse.Namespace) -> None:
    sim = EvmSim(options_from(args))
    async with trio.open_nursery() as nursery:
        rpc = await nursery.start(partial(sim.rpc_server.serve, args.host, args.port))
        control = await nursery.start(partial(sim.control_server.serve, args.host, args.control_port))
        nursery.start_soon(sim.run_blocks)
        rpc_port = rpc[0].socket.getsockname()[1]
        control_port = control[0].socket.getsockname()[1]
        write_ports_file(args.ports_file, {
            "rpc_url": f"http://{args.host}:{rpc_port}/v3/sim",
            "control_url": f"http://{args.host}:{control_port}",
            "chain": args.chain,
            "first_block": args.first_block,
            "tokens": [{"address": t.address, "symbol": t.symbol, "decimals": t.decimals} for t in sim.tokens],
            "labels": dict(KNOWN_WALLETS),
        })
        logging.getLogger("ingestd.sim.evm").info("serving JSON-RPC on port %d, control on %d", rpc_port, control_port)


def main() -> int:
    return run_simulator(_main, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
