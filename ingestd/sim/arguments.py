"""Argument types and the entry point shared by every simulator's command line."""

from __future__ import annotations

import argparse
import logging
from typing import Any, Awaitable, Callable

import trio


def probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError("expected a probability from 0 to 1")
    return value


def positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("expected a positive number")
    return value


def non_negative(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str):
        value = kind(text)
        if value < 0:
            raise argparse.ArgumentTypeError("must be >= 0")
        return value

    return parse


def run_simulator(main: Callable[[argparse.Namespace], Awaitable[None]], parser: argparse.ArgumentParser) -> int:
    """Parse, log at --log-level, run `main(args)` under Trio until it returns or Ctrl-C (130);
    a ValueError from the simulator's own option checks exits 2 with its message."""
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        trio.run(main, args)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    return 0
