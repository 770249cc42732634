"""Binance REST request-weight accounting for one client IP (sans-I/O: the caller passes the time).

Weight is summed per fixed window aligned to the clock (Binance's X-MBX-USED-WEIGHT-1M resets at each
minute). A request that would go over the limit gets 429 with Retry-After = seconds to the window's
end; a client that keeps calling before that Retry-After has passed is banned: 418 with a Retry-After
of the ban length, for every request until the ban ends (rest-api.md, "LIMITS").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

OK, TOO_MANY_REQUESTS, IM_A_TEAPOT = 200, 429, 418


@dataclass(frozen=True)
class Admission:
    status: int  # OK, TOO_MANY_REQUESTS or IM_A_TEAPOT
    used_weight: int  # for the X-MBX-USED-WEIGHT-1M header
    retry_after_s: int | None = None
    banned_until: float | None = None


class RequestWeightLimiter:
    def __init__(self, limit: int, window_s: float = 60.0, ban_s: float = 120.0) -> None:
        if limit < 1 or window_s <= 0 or ban_s <= 0:
            raise ValueError("need limit >= 1, window_s > 0 and ban_s > 0")
        self.limit = limit
        self.window_s = window_s
        self.ban_s = ban_s
        self._window = -1
        self._used = 0
        self._backoff_until = 0.0  # set by a 429: calls before this time earn a ban
        self._banned_until = 0.0

    def used_weight(self, now: float) -> int:
        self._roll(now)
        return self._used

    def admit(self, weight: int, now: float) -> Admission:
        self._roll(now)
        if now < self._banned_until:
            return self._ban_admission(now)
        if now < self._backoff_until:
            self._banned_until = now + self.ban_s
            return self._ban_admission(now)
        if self._used + weight > self.limit:
            window_end = (self._window + 1) * self.window_s
            self._backoff_until = window_end
            return Admission(TOO_MANY_REQUESTS, self._used, max(1, math.ceil(window_end - now)))
        self._used += weight
        return Admission(OK, self._used)

    def _ban_admission(self, now: float) -> Admission:
        retry = max(1, math.ceil(self._banned_until - now))
        return Admission(IM_A_TEAPOT, self._used, retry, self._banned_until)

    def _roll(self, now: float) -> None:
        window = math.floor(now / self.window_s)
        if window != self._window:
            self._window = window
            self._used = 0
