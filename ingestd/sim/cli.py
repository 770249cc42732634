"""`ingestd sim` / `python -m ingestd.sim`: run the loopback Binance simulator from the command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

import trio

from ingestd.digits import is_ascii_digits
from ingestd.sim.arguments import non_negative, probability
from ingestd.sim.config import NON_TRADING_STATUSES, SimConfig
from ingestd.sim.server import Simulator, serve

log = logging.getLogger("ingestd.sim")

EPILOG = """\
control endpoints (on the REST port, not part of Binance):
  GET  /_sim/truth[?symbol=S]   every trade id ever made, per symbol
  GET  /_sim/book?symbol=S      the full reference order book
  GET  /_sim/stats              counters: trades made, frames sent/dropped, malformed, drops, 429s, ...
  POST /_sim/pause, /_sim/resume  stop/restart event generation (pings keep flowing)
  POST /_sim/drop               cut every WebSocket connection now
  POST /_sim/shutdown           send serverShutdown on every connection now

example: a hostile venue for a resilience drill
  ingestd sim --symbols 20 --rate 2000 --drop-every 30 --drop-rate 0.001 \\
              --malformed-rate 0.001 --shutdown-every 45 --weight-limit 300
"""


def _symbols(text: str) -> list[str] | int:
    if is_ascii_digits(text):
        return int(text)
    symbols = [s.strip().upper() for s in text.split(",") if s.strip()]
    if not symbols:
        raise argparse.ArgumentTypeError("expected a count or a comma-separated list of symbols")
    return symbols


def _halted(text: str) -> dict[str, str]:
    halted = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        symbol, _, status = item.partition(":")
        status = status.upper() or "HALT"
        if status not in NON_TRADING_STATUSES:
            raise argparse.ArgumentTypeError(f"status must be one of {', '.join(NON_TRADING_STATUSES)}")
        halted[symbol.upper()] = status
    return halted


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    defaults = SimConfig()
    nonneg_float, nonneg_int = non_negative(float), non_negative(int)

    where = parser.add_argument_group("where to listen")
    where.add_argument("--host", default=defaults.host, help="address to bind both servers to (default: %(default)s)")
    where.add_argument("--ws-port", type=nonneg_int, default=0, help="WebSocket port; 0 picks a free one (default)")
    where.add_argument("--rest-port", type=nonneg_int, default=0, help="REST port; 0 picks a free one (default)")
    where.add_argument(
        "--ports-file",
        type=Path,
        metavar="PATH",
        help='once bound, write {"ws_url":..,"rest_url":..,"pid":..} here as JSON, so test fixtures can find the sim',
    )

    market = parser.add_argument_group("market")
    market.add_argument(
        "--symbols",
        type=_symbols,
        default=5,
        metavar="N|A,B,C",
        help="a count (BTCUSDT, ETHUSDT, ... then SYM000USDT, ...) or an explicit list (default: 5)",
    )
    market.add_argument("--seed", type=int, default=defaults.seed, help="seed; the same seed replays the same market")
    market.add_argument(
        "--rate",
        type=nonneg_float,
        default=defaults.rate,
        help="market events per second over all symbols (default: %(default)s)",
    )
    market.add_argument(
        "--depth-ratio",
        type=probability,
        default=defaults.depth_ratio,
        help="share of events that are order-book changes rather than trades (default: %(default)s)",
    )
    market.add_argument(
        "--halted",
        type=_halted,
        default={},
        metavar="SYM[:STATUS],...",
        help="symbols exchangeInfo reports as not trading (status HALT unless given: "
        + ", ".join(NON_TRADING_STATUSES)
        + "); they generate no events",
    )

    faults = parser.add_argument_group("WebSocket faults (all off by default)")
    faults.add_argument(
        "--drop-every",
        type=float,
        metavar="SECONDS",
        help="cut every connection's TCP stream this often, without a close frame",
    )
    faults.add_argument(
        "--drop-rate",
        type=probability,
        default=0.0,
        help="probability a connection silently skips a data frame (causes trade-id and depth gaps)",
    )
    faults.add_argument(
        "--malformed-rate",
        type=probability,
        default=0.0,
        help="probability of an extra bad frame (bad JSON, bad price, missing field, ...) before a real one",
    )
    faults.add_argument(
        "--shutdown-every",
        type=float,
        metavar="SECONDS",
        help="send serverShutdown on each connection when it reaches this age, then close it after --shutdown-grace",
    )
    faults.add_argument(
        "--shutdown-grace",
        type=nonneg_float,
        default=defaults.shutdown_grace_s,
        metavar="SECONDS",
        help="time between serverShutdown and the close (default: %(default)s)",
    )
    faults.add_argument(
        "--max-connection-age",
        type=float,
        metavar="SECONDS",
        help="close connections older than this (Binance: 24 h)",
    )
    faults.add_argument(
        "--ping-interval",
        type=float,
        default=defaults.ping_interval_s,
        metavar="SECONDS",
        help="server ping period; pongs count towards the 5 messages/s limit (default: %(default)s)",
    )
    faults.add_argument(
        "--pong-timeout",
        type=float,
        default=defaults.pong_timeout_s,
        metavar="SECONDS",
        help="drop a client that has not answered a ping within this (default: %(default)s)",
    )

    rest = parser.add_argument_group("REST")
    rest.add_argument("--slow-ms", type=nonneg_float, default=0.0, help="delay every REST response by this many ms")
    rest.add_argument(
        "--weight-limit",
        type=int,
        default=defaults.weight_limit,
        help="request weight allowed per window before 429/418 (default: %(default)s)",
    )
    rest.add_argument(
        "--weight-window",
        type=float,
        default=defaults.weight_window_s,
        metavar="SECONDS",
        help="length of the weight window (default: %(default)s; Binance: 60)",
    )
    rest.add_argument(
        "--ban",
        type=float,
        default=defaults.ban_s,
        metavar="SECONDS",
        help="Retry-After of a 418 ban (default: %(default)s)",
    )

    bench = parser.add_argument_group("benchmarks")
    bench.add_argument(
        "--blast-trades",
        type=nonneg_int,
        default=0,
        metavar="N",
        help="pre-generate N trades and stream them, pre-encoded, to every connection subscribing to @trade or "
        "@aggTrade streams",
    )
    bench.add_argument(
        "--blast-rate",
        type=float,
        metavar="MSGS_PER_S",
        help="offered rate for --blast-trades per connection (default: as fast as the socket takes them)",
    )

    tls = parser.add_argument_group("TLS (for clients that insist on wss://)")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve the WebSocket over TLS with this certificate chain")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key (default: in the --tls-cert file)")

    run_for = parser.add_argument_group("run")
    run_for.add_argument(
        "--duration", type=float, metavar="SECONDS", help="exit after this long (default: until SIGINT/SIGTERM)"
    )
    run_for.add_argument("--log-level", default="INFO", help="logging level (default: %(default)s)")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    return SimConfig(
        symbols=args.symbols,
        seed=args.seed,
        halted=args.halted,
        host=args.host,
        ws_port=args.ws_port,
        rest_port=args.rest_port,
        rate=args.rate,
        depth_ratio=args.depth_ratio,
        drop_every_s=args.drop_every,
        drop_rate=args.drop_rate,
        malformed_rate=args.malformed_rate,
        shutdown_every_s=args.shutdown_every,
        shutdown_grace_s=args.shutdown_grace,
        max_connection_age_s=args.max_connection_age,
        ping_interval_s=args.ping_interval,
        pong_timeout_s=args.pong_timeout,
        slow_ms=args.slow_ms,
        weight_limit=args.weight_limit,
        weight_window_s=args.weight_window,
        ban_s=args.ban,
        blast_trades=args.blast_trades,
        blast_rate=args.blast_rate,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=getattr(args, "log_level", "INFO").upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"ingestd sim: {error}", file=sys.stderr)
        return 2
    trio.run(_main, config, args.ports_file, args.duration)
    return 0


async def _main(config: SimConfig, ports_file: Path | None, duration: float | None) -> None:
    async with trio.open_nursery() as nursery:
        sim: Simulator = await nursery.start(serve, config)
        log.info(
            "simulator up: ws_url=%s rest_url=%s symbols=%d rate=%s blast_trades=%d",
            sim.ws_url,
            sim.rest_url,
            len(sim.symbols),
            config.rate,
            config.blast_trades,
        )
        if ports_file is not None:
            ports = {"ws_url": sim.ws_url, "rest_url": sim.rest_url, "pid": os.getpid()}
            _write_atomically(ports_file, json.dumps(ports))
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        if duration is not None:
            nursery.cancel_scope.deadline = trio.current_time() + duration
    log.info("simulator stopped: %s", json.dumps(sim.stats()))


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.info("received %s, stopping", signal.Signals(signum).name)
            scope.cancel()
            return


def _write_atomically(path: Path, text: str) -> None:
    # Readers poll for the file; a rename means they never see it half written.
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)
