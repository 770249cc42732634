"""`python -m ingestd.sim`: the simulator without the rest of the ingestd CLI."""

import argparse

from ingestd.sim import cli


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingestd.sim", description="Loopback Binance Spot simulator (WebSocket + REST)."
    )
    cli.add_arguments(parser)
    return cli.run(parser.parse_args())


raise SystemExit(main())
