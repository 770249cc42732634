"""Cron schedules for the price poller, in UTC, with croniter (the de-facto Python cron library:
day-of-month/day-of-week OR semantics, names, ranges and steps done right)."""

from __future__ import annotations

from datetime import datetime, timezone

from croniter import croniter


def is_valid(expression: str) -> bool:
    return croniter.is_valid(expression)


def next_fire(expression: str, after_s: float) -> float:
    """The first time (Unix seconds) strictly after `after_s` that matches `expression`."""
    start = datetime.fromtimestamp(after_s, tz=timezone.utc)
    return croniter(expression, start).get_next(float)
