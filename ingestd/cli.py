"""The `ingestd` command: check-config, run, demo, sim.

Modules that start Trio, sockets or the simulator are imported only inside the command that
needs them, so `--help` and `check-config` stay fast and keep working when one of those
modules is broken (a config check must not depend on the feed code importing cleanly).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

from ingestd import __version__
from ingestd.config import CONFIG_PATH_ENV, DEFAULT_CONFIG_PATH, Config, ConfigError, default_config_path, load_config
from ingestd.logs import LOG_LEVELS, setup_logging
from ingestd.secrets import reveal

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2  # also argparse's usage-error status; systemd units can RestartPreventExitStatus=2
EXIT_INTERRUPTED = 130

DEMO_STATE_DIR = "ingestd-demo"

DESCRIPTION = """\
ingestd ingests crypto market data (trades and order-book tops) into durable stores without
gaps: it resumes from checkpoints kept next to the data, and backfills over REST what it missed
while disconnected. One process runs one feed family; under systemd that is one instance of the
ingestd@.service template per family (ingestd@binance), all reading one config file."""

EPILOG = f"""\
examples:
  ingestd demo --duration 20                       watch it work offline: simulated exchange -> SQLite
  ingestd check-config --config etc/ingestd.toml   validate a config file, listing every problem
  ingestd run binance                              run the [feeds.binance] feed in the foreground
  systemctl start ingestd@binance                  the same as a systemd service
  sudo ingestd pause binance                       pause a running instance (later: ingestd resume binance)

The config file is --config PATH, else ${CONFIG_PATH_ENV}, else {DEFAULT_CONFIG_PATH}; etc/ingestd.toml
in the source tree documents every key. `ingestd COMMAND --help` explains each command.

exit status: 0 ok, 1 runtime failure, 2 invalid configuration or usage, 130 interrupted"""


# --- commands ----------------------------------------------------------------------------------


def _print_problems(error: ConfigError) -> None:
    for problem in error.problems:
        print(f"{error.source}: {problem}", file=sys.stderr)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def check_config(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as error:
        _print_problems(error)
        return EXIT_CONFIG
    print(f"OK: {args.config} ({_plural(len(config.feeds), 'feed')}, {_plural(len(config.sinks), 'sink')})")
    return EXIT_OK


def resolve_state_dir(flag: str | None, config: Config, environ: Mapping[str, str] | None = None) -> Path:
    """--state-dir, else $STATE_DIRECTORY (systemd StateDirectory=), else daemon.state_dir."""
    environ = os.environ if environ is None else environ
    if flag:
        return Path(flag)
    # With several StateDirectory= entries systemd joins their paths with ":"; ours is the first.
    from_systemd = environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(from_systemd or reveal(config.daemon.state_dir))


def run(args: argparse.Namespace) -> int:
    # Everything that can be wrong with the config is found before anything starts: a unit that
    # fails here exits 2 at once instead of half-starting and crashing later in a restart loop.
    try:
        config = load_config(args.config)
        config.feed_for_instance(args.instance)
    except ConfigError as error:
        _print_problems(error)
        print(f"ingestd: not starting {args.instance}: the configuration has problems", file=sys.stderr)
        return EXIT_CONFIG
    state_dir = resolve_state_dir(args.state_dir, config)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"ingestd: cannot create the state dir {state_dir}: {error.strerror}", file=sys.stderr)
        return EXIT_FAILURE
    # One truth for the state dir: code reading config.daemon.state_dir sees the resolved one.
    # Feeds that keep files there (the CoinGecko pair list) find it as under systemd's StateDirectory=.
    os.environ["STATE_DIRECTORY"] = str(state_dir)
    config = dataclasses.replace(config, daemon=dataclasses.replace(config.daemon, state_dir=str(state_dir)))
    setup_logging(args.log_level or config.daemon.log_level)
    from ingestd.supervisor import run_instance

    return run_instance(config, args.instance, state_dir=state_dir)


def demo(args: argparse.Namespace) -> int:
    setup_logging(args.log_level or "info")
    from ingestd.demo import run_demo

    return run_demo(
        duration=args.duration, state_dir=Path(args.state_dir), symbols=args.symbols, rate=args.rate, seed=args.seed
    )


def tail(args: argparse.Namespace) -> int:
    from ingestd.tail import run_tail

    return run_tail(args)


def backfill(args: argparse.Namespace) -> int:
    # Each family that can replay the past has ingestd/venues/<family>/backfill.py:run_backfill.
    import importlib

    name = f"ingestd.venues.{args.family}.backfill"
    if not args.family.isidentifier():
        print(f"ingestd: no backfill for {args.family!r} in this version", file=sys.stderr)
        return EXIT_CONFIG
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if not f"{name}.".startswith(f"{error.name}."):  # a missing dependency, not a missing backfill
            raise
        print(f"ingestd: no backfill for {args.family!r} in this version", file=sys.stderr)
        return EXIT_CONFIG
    return module.run_backfill(args)


def db_migrate(args: argparse.Namespace) -> int:
    from ingestd.db.cli import run_migrate

    return run_migrate(args)


# --- argument parsing --------------------------------------------------------------------------


def _positive(kind: Callable[[str], float]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value <= 0:
            noun = "integer" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"expected a positive {noun}, got {text!r}")
        return value

    return convert


def _add_global_options(parser: argparse.ArgumentParser, *, in_command: bool, config: bool = True) -> None:
    # Accepted before and after the command. Inside a command the default is SUPPRESS so that
    # not repeating the option there keeps the value given before the command.
    default = argparse.SUPPRESS if in_command else None
    group = parser.add_argument_group("global options")
    if config:
        group.add_argument(
            "--config",
            metavar="PATH",
            default=default,
            help=f"config file (default: ${CONFIG_PATH_ENV}, else {DEFAULT_CONFIG_PATH})",
        )
    group.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=default,
        help="least severe level logged (default: info; for `run`, daemon.log_level from the config)",
    )


def _add_command(
    commands: Any, name: str, summary: str, description: str, *, config: bool = True, global_options: bool = True
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name, help=summary, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if global_options:
        _add_global_options(parser, in_command=True, config=config)
    return parser


def build_parser(sim_cli: Any = None) -> argparse.ArgumentParser:
    """The full parser. `sim_cli` (ingestd.sim.cli) is passed only when the `sim` command runs."""
    parser = argparse.ArgumentParser(
        prog="ingestd",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # `_command_in` must recognize option names exactly
    )
    parser.add_argument(
        "--version", action="version", version=f"ingestd {__version__}", help="print the version and exit"
    )
    _add_global_options(parser, in_command=False)
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    check = _add_command(
        commands,
        "check-config",
        "validate the config file and list every problem in it",
        "Load and validate the config file. Prints `OK: PATH (N feeds, M sinks)` and exits 0,\n"
        "or prints every problem, one per line as `PATH: key.path: what is wrong`, and exits 2.\n"
        "Run it after each edit, and before restarting units (ExecStartPre= works too).",
    )
    check.set_defaults(handler=check_config)

    run_parser = _add_command(
        commands,
        "run",
        "run one feed instance in the foreground (what ingestd@INSTANCE.service runs)",
        "Run one feed instance until SIGTERM or Ctrl-C, then flush what it has and exit.\n\n"
        'INSTANCE is a feed family from the config ("binance" runs [feeds.binance]) or, when that\n'
        'feed has shards = N, one shard of it ("binance-2" is shard 2 of N).\n\n'
        "The config is validated first: if anything is wrong, every problem is printed and\n"
        "nothing starts (exit 2).",
    )
    run_parser.add_argument(
        "instance", metavar="INSTANCE", help='feed family, or FAMILY-i for shard i (e.g. "binance-2")'
    )
    run_parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where the SQLite store and spool live, created if missing (default: $STATE_DIRECTORY, "
        "which systemd's StateDirectory= sets, else daemon.state_dir from the config)",
    )
    run_parser.set_defaults(handler=run)

    demo_parser = _add_command(
        commands,
        "demo",
        "see ingestd work offline: simulated exchange -> Binance feed -> local SQLite",
        "Start the loopback exchange simulator, which speaks Binance's WebSocket and REST protocols\n"
        "on 127.0.0.1, and run the real Binance feed against it into the embedded SQLite store,\n"
        "printing a summary line a second and, at the end, a table checking what was stored against\n"
        "what the simulator sent. No network access, no config file, no database server needed.",
        config=False,
    )
    demo_parser.add_argument(
        "--duration",
        type=_positive(float),
        default=None,
        metavar="SECONDS",
        help="stop after this long and print what was stored (default: run until Ctrl-C)",
    )
    demo_parser.add_argument(
        "--state-dir",
        default=DEMO_STATE_DIR,
        metavar="DIR",
        help=f"where the demo's SQLite store goes (default: ./{DEMO_STATE_DIR})",
    )
    demo_parser.add_argument(
        "--symbols", type=_positive(int), default=10, metavar="N", help="number of simulated symbols (default: 10)"
    )
    demo_parser.add_argument(
        "--rate",
        type=_positive(float),
        default=500.0,
        metavar="EVENTS_PER_S",
        help="market events per second the simulator generates, over all symbols (default: 500)",
    )
    demo_parser.add_argument(
        "--seed",
        type=int,
        default=1,
        metavar="N",
        help="random seed; the same seed replays the same market (default: 1)",
    )
    demo_parser.set_defaults(handler=demo)

    tail_parser = _add_command(
        commands,
        "tail",
        "print the trades stored in a Redis stream, and follow new ones",
        "Print the last N trades of a pair's Redis stream, oldest first, one line each:\n"
        "  2024-11-14T17:30:00.123456  buy         0.123 @ 45123.5      #12345678\n"
        "then, with --follow, every new one until Ctrl-C. --list shows every stream the sink writes with its\n"
        "length; any of them can be named instead of a pair. The server is --url, else $REDIS_URL, else the first redis sink in the config, else\n"
        "redis://localhost:6379/0; the stream is that sink's trades_stream (default trades:{symbol}).\n\n"
        "examples:\n"
        "  ingestd tail BTCUSDT              the last 10 trades\n"
        "  ingestd tail BTCUSDT -n 0 -f      only new trades, as they are stored\n"
        "  ingestd tail --list               every stream and its length\n"
        "  ingestd tail derivatives:bybit:BTCUSDT -f   another kind's stream, by its key",
    )
    tail_parser.add_argument("pair", metavar="PAIR", nargs="?", help="the pair, as in the stream name (BTCUSDT), or a stream key from --list")
    tail_parser.add_argument(
        "-n", dest="count", type=int, default=10, metavar="N", help="print the last N trades first (default: 10)"
    )
    tail_parser.add_argument("-f", "--follow", action="store_true", help="then wait for new trades until Ctrl-C")
    tail_parser.add_argument("--list", action="store_true", help="list the streams and their lengths")
    tail_parser.add_argument("--url", metavar="URL", help="Redis server, e.g. redis://host:6379/0")
    tail_parser.add_argument(
        "--venue", default="binance", help="fills {venue} in a stream template that has one (default: binance)"
    )
    tail_parser.set_defaults(handler=tail)

    backfill_parser = _add_command(
        commands,
        "backfill",
        "replay a lookback window of a feed family into its sinks",
        "Fetch the past --days of a family's data from the venue's history API and write it to the\n"
        "sinks of [feeds.FAMILY] through the normal pipeline (idempotent: nothing is stored twice), with\n"
        "a progress bar on stderr (plain progress lines when stderr is not a terminal).\n\n"
        "example:\n"
        "  ingestd backfill coingecko --days 30     hourly prices of the priced coins, last 30 days",
    )
    backfill_parser.add_argument("family", metavar="FAMILY", help='feed family, e.g. "coingecko"')
    backfill_parser.add_argument("--days", type=_positive(float), required=True, metavar="N",
                                 help="how far back to replay, in days")
    backfill_parser.add_argument("--state-dir", metavar="DIR",
                                 help="where the SQLite store and spools live (as for `run`)")
    backfill_parser.set_defaults(handler=backfill)

    db_parser = _add_command(commands, "db", "database maintenance for the postgres sinks", "Database commands.")
    db_commands = db_parser.add_subparsers(dest="db_command", title="commands", metavar="COMMAND", required=True)
    migrate_parser = _add_command(
        db_commands,
        "migrate",
        "create or upgrade the schema of the postgres sinks",
        "Apply the pending schema migrations to every [sinks.NAME] with type = \"postgres\" (or only\n"
        "--sink NAME), printing what was applied, or \"up to date\". Safe to run again, and beside a\n"
        "running daemon (migrations take a lock). The daemon also migrates when it starts.\n\n"
        "exit status: 0 done, 1 a server could not be reached or a migration failed, 2 config problem",
    )
    migrate_parser.add_argument("--sink", metavar="NAME", help="only this sink (default: every postgres sink)")
    migrate_parser.set_defaults(handler=db_migrate)

    from ingestd import ctl  # pause, resume, reconnect, flush, trigger: the stats socket's control verbs

    ctl.add_commands(commands, _add_command)

    from ingestd.venues.polymarket import whales_cli  # argparse only; the stores load when it runs

    whales_cli.add_command(commands, _add_command)

    sim_parser = _add_command(
        commands,
        "sim",
        "run the loopback Binance simulator alone (for tests, benchmarks, fault drills)",
        "Run the exchange simulator on its own, serving Binance-compatible WebSocket and REST\n"
        "endpoints that `ingestd run` can be pointed at (ws_url / rest_url in the config).",
        global_options=False,  # the simulator owns its options; ours could clash with its own
    )
    if sim_cli is not None:
        sim_cli.add_arguments(sim_parser)
        sim_parser.set_defaults(handler=sim_cli.run)
    return parser


def _command_in(argv: list[str]) -> str | None:
    """The command word in argv, found without parsing (so `sim` can be mounted lazily)."""
    takes_value = {"--config", "--log-level"}
    skip_next = False
    for arg in argv:
        if skip_next:
            skip_next = False
        elif arg in takes_value:
            skip_next = True
        elif not arg.startswith("-"):
            return arg
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    sim_cli = None
    if _command_in(argv) == "sim":
        try:
            from ingestd.sim import cli as sim_cli
        except ImportError as error:
            print(f"ingestd: the simulator is not available in this build: {error}", file=sys.stderr)
            return EXIT_FAILURE
    parser = build_parser(sim_cli)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_CONFIG
    args.config = args.config or default_config_path()
    try:
        return int(args.handler(args) or EXIT_OK)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
