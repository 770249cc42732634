"""`python -m ingestd.sim.bybit`: a simulated Bybit v5 public linear WebSocket and market REST API."""

from __future__ import annotations

import argparse
import logging
from functools import partial

import trio

from ingestd.sim.arguments import probability, positive, run_simulator
from ingestd.sim.bybit.server import PATH, SimOptions, serve
from ingestd.sim.http_server import write_ports_file

EPILOG = f"""\
the feed's config: ws_url = <ws_url>, rest_url = <rest_url> (both in the ports file)

WebSocket: ws://HOST:PORT{PATH}, topics tickers.<SYMBOL> (snapshot, then deltas) and
publicTrade.<SYMBOL>; ops subscribe, unsubscribe, ping.
REST: GET /v5/market/tickers?category=linear, GET /v5/market/recent-trade?category=linear&symbol=S&limit=N

control endpoints (REST port):
  GET  /_sim/truth    every ticker state published (derivative fields after each message) and every trade
  GET  /_sim/stats    counters: connections, subscriptions, faults injected
  POST /_sim/calm     stop every fault for the rest of the run (answers the venue time "ts")
  POST /_sim/pause    the market stands still (answers "ts", the last message's time); /_sim/resume
  POST /_sim/drop     cut every WebSocket connection now
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ingestd.sim.bybit", description=__doc__, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    p.add_argument("--ws-port", type=int, default=0, help="WebSocket port; 0 picks a free one (default)")
    p.add_argument("--rest-port", type=int, default=0, help="REST and control port; 0 picks a free one (default)")
    p.add_argument("--ports-file", metavar="PATH",
                   help='once bound, write {"ws_url", "rest_url", "control_url", "symbols", "pid"} here as JSON')
    p.add_argument("--seed", type=int, default=1, help="the same seed makes the same market moves (default: 1)")
    p.add_argument("--symbols", type=int, default=3, metavar="N",
                   help="perpetual contracts: BTCUSDT, ETHUSDT, SOLUSDT, ... (default: 3)")
    p.add_argument("--futures", type=int, default=0, metavar="N",
                   help="dated futures (BTC-26DEC25, ...), which send basis and no funding (default: 0)")
    p.add_argument("--tick-ms", type=int, default=100, help="milliseconds between ticker pushes (default: 100)")
    p.add_argument("--trade-rate", type=float, default=20.0, help="trades per second per contract (default: 20)")
    p.add_argument("--quiet-rate", type=probability, default=0.2,
                   help="chance a contract publishes nothing in a tick (default: 0.2)")
    p.add_argument("--repeat-rate", type=probability, default=0.1,
                   help="chance a delta repeats an unchanged derivative field (default: 0.1)")
    p.add_argument("--funding-interval-s", type=positive, default=8 * 3600,
                   help="funding interval; nextFundingTime rolls over at its multiples (default: 28800)")
    limits = p.add_argument_group("venue limits")
    limits.add_argument("--idle-timeout", type=float, default=60.0, metavar="SECONDS",
                        help="cut a connection that sent no request (ping) for this long; 0: never (default: 60)")
    limits.add_argument("--max-args-chars", type=int, default=21_000,
                        help="topic characters one connection may subscribe (default: 21000)")
    limits.add_argument("--max-args-per-request", type=int, default=10,
                        help="topics per subscribe request; 0: no limit (default: 10)")
    faults = p.add_argument_group("faults (all off by default; POST /_sim/calm stops them)")
    faults.add_argument("--drop-every", type=positive, metavar="SECONDS", help="cut every WebSocket this often")
    faults.add_argument("--malformed-rate", type=probability, default=0.0,
                        help="chance a data frame is replaced by a malformed one (the real one is lost)")
    faults.add_argument("--resnapshot-every", type=positive, metavar="SECONDS",
                        help="send every subscriber an unsolicited ticker snapshot this often")
    faults.add_argument("--http-429-rate", type=probability, default=0.0, help="REST: HTTP 429 with Retry-After")
    faults.add_argument("--retry-after", type=int, default=1, metavar="SECONDS", help="Retry-After of a 429 (default: 1)")
    faults.add_argument("--rest-malformed-rate", type=probability, default=0.0, help="REST: a truncated JSON body")
    faults.add_argument("--rest-drop-rate", type=probability, default=0.0, help="REST: close without answering")
    p.add_argument("--log-level", default="warning", help="log level (default: warning)")
    return p


def options_from(args: argparse.Namespace) -> SimOptions:
    return SimOptions(
        seed=args.seed, perpetuals=args.symbols, futures=args.futures, tick_ms=args.tick_ms,
        trade_rate=args.trade_rate, quiet_rate=args.quiet_rate, repeat_rate=args.repeat_rate,
        funding_interval_s=args.funding_interval_s, drop_every_s=args.drop_every,
        malformed_rate=args.malformed_rate, http_429_rate=args.http_429_rate, retry_after_s=args.retry_after,
        rest_malformed_rate=args.rest_malformed_rate, rest_drop_rate=args.rest_drop_rate,
        resnapshot_every_s=args.resnapshot_every, idle_timeout_s=args.idle_timeout,
        max_args_chars=args.max_args_chars, max_args_per_request=args.max_args_per_request,
    )


async def _main(args: argparse.Namespace) -> None:
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(partial(serve, options_from(args), args.host, ws_port=args.ws_port,
                                          rest_port=args.rest_port))
        write_ports_file(args.ports_file, {"ws_url": sim.ws_url, "rest_url": sim.rest_url,
                                           "control_url": sim.rest_url, "symbols": list(sim.market.symbols)})
        logging.getLogger("ingestd.sim.bybit").info("serving %s and %s", sim.ws_url, sim.rest_url)


def main() -> int:
    return run_simulator(_main, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
