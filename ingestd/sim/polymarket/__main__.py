"""`python -m ingestd.sim.polymarket`: the loopback Polymarket simulator (market channel + Data API)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
from pathlib import Path

import trio

from ingestd.sim.arguments import non_negative, probability
from ingestd.sim.polymarket.server import PolySimConfig, serve

log = logging.getLogger("ingestd.sim.polymarket")

EPILOG = """\
endpoints
  ws_url                  the CLOB market channel: {"assets_ids":[..],"type":"market"} subscribes
                          (answered with a book dump), {"assets_ids":[..],"operation":"subscribe"|
                          "unsubscribe"} changes it, PING -> PONG
  data_api_url/trades     ?user= | ?market= , limit, offset, start, end, side, takerOnly
  data_api_url/book       ?token_id= (the CLOB REST book)

control endpoints (on control_url, not part of Polymarket)
  GET  /_sim/truth        markets, whales, every trade, every whale trade, the current books,
                          and when each token's book was sent for a subscribe
  GET  /_sim/stats        counters
  POST /_sim/calm         stop every fault (drops, malformed frames and bodies, random 429s)
  POST /_sim/pause        stop the market (no more events); /_sim/resume starts it again
  POST /_sim/drop         cut every WebSocket connection now

example: a hostile venue
  python -m ingestd.sim.polymarket --ports-file /tmp/pm.json --rate 50 --drop-every 5 \\
      --malformed-rate 0.02 --data-429-rate 0.1 --data-malformed-rate 0.05 --ping-timeout 30
"""


def build_parser() -> argparse.ArgumentParser:
    d = PolySimConfig()
    p = argparse.ArgumentParser(prog="python -m ingestd.sim.polymarket", epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Loopback Polymarket simulator: CLOB market channel WebSocket and Data API.")
    p.add_argument("--ports-file", type=Path, metavar="PATH",
                   help='once bound, write {"ws_url", "data_api_url", "clob_url", "control_url", "pid"} here as JSON')
    p.add_argument("--host", default=d.host, help="address to bind (default: %(default)s)")
    p.add_argument("--ws-port", type=non_negative(int), default=0, help="WebSocket port; 0 picks a free one")
    p.add_argument("--http-port", type=non_negative(int), default=0, help="HTTP port; 0 picks a free one")
    m = p.add_argument_group("market")
    m.add_argument("--seed", type=int, default=d.seed, help="the same seed makes the same markets, whales, trades")
    m.add_argument("--markets", type=non_negative(int), default=d.markets, help="binary markets (2 tokens each)")
    m.add_argument("--whales", type=non_negative(int), default=d.whales, help="whale wallets")
    m.add_argument("--whale-share", type=probability, default=d.whale_share, help="share of trades whales take")
    m.add_argument("--rate", type=non_negative(float), default=d.rate, help="events per second over all markets")
    m.add_argument("--trade-ratio", type=probability, default=d.trade_ratio, help="share of events that are trades")
    f = p.add_argument_group("faults (off by default; POST /_sim/calm stops them)")
    f.add_argument("--drop-every", type=float, metavar="SECONDS", help="cut every WebSocket connection this often")
    f.add_argument("--malformed-rate", type=probability, default=0.0, help="share of events preceded by a bad frame")
    f.add_argument("--book-dump", choices=("array", "objects"), default=d.book_dump,
                   help="the books answering a subscribe: one JSON array (as the venue does), or a frame each")
    f.add_argument("--ping-timeout", type=non_negative(float), default=0.0, metavar="SECONDS",
                   help="cut clients that send no PING this long (0: never)")
    f.add_argument("--data-limit", type=int, default=d.data_limit, help="Data API requests per window before 429")
    f.add_argument("--data-window", type=float, default=d.data_window_s, metavar="SECONDS", help="its window")
    f.add_argument("--data-429-rate", type=probability, default=0.0, help="share of Data API requests refused (429)")
    f.add_argument("--data-malformed-rate", type=probability, default=0.0,
                   help="share of Data API answers with a malformed body")
    f.add_argument("--data-lag-ms", type=non_negative(int), default=0, help="a trade appears in the Data API this late")
    p.add_argument("--duration", type=float, metavar="SECONDS", help="exit after this long")
    p.add_argument("--log-level", default="INFO")
    return p


def config_from_args(args: argparse.Namespace) -> PolySimConfig:
    return PolySimConfig(
        seed=args.seed, markets=args.markets, whales=args.whales, whale_share=args.whale_share, rate=args.rate,
        trade_ratio=args.trade_ratio, host=args.host, ws_port=args.ws_port, http_port=args.http_port,
        book_dump=args.book_dump, ping_timeout_s=args.ping_timeout, drop_every_s=args.drop_every,
        malformed_rate=args.malformed_rate, data_limit=args.data_limit, data_window_s=args.data_window,
        data_429_rate=args.data_429_rate, data_malformed_rate=args.data_malformed_rate, data_lag_ms=args.data_lag_ms,
    )


async def _main(config: PolySimConfig, ports_file: Path | None, duration: float | None) -> None:
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, config)
        log.info("polymarket simulator up: ws_url=%s http_url=%s markets=%d whales=%d", sim.ws_url, sim.http_url,
                 config.markets, config.whales)
        if ports_file is not None:
            ports = {"ws_url": sim.ws_url, "data_api_url": sim.http_url, "clob_url": sim.http_url,
                     "control_url": sim.http_url, "pid": os.getpid()}
            tmp = ports_file.with_name(ports_file.name + ".tmp")
            tmp.write_text(json.dumps(ports))
            tmp.replace(ports_file)  # readers poll for the file: never let them see half of it
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        if duration is not None:
            nursery.cancel_scope.deadline = trio.current_time() + duration
    log.info("polymarket simulator stopped: %s", json.dumps(sim.stats()))


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            scope.cancel()
            return


def main() -> int:
    args = build_parser().parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"ingestd.sim.polymarket: {error}")
        return 2
    trio.run(_main, config, args.ports_file, args.duration)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
