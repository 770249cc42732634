"""How many blocks to ask `eth_getLogs` for at once: shrink on a provider's limit, grow back slowly.

Providers refuse a getLogs whose result or span is too large (protocol.classify_error). The span
then shrinks to the range the provider suggests when it suggests one, else to half of what was
refused (bisection). After GROW_AFTER successes in a row it doubles again, up to the configured
maximum, so one dense stretch of blocks does not slow a whole backfill, and a span that keeps
failing is not retried at full size every other request.
"""

from __future__ import annotations

GROW_AFTER = 3


class SpanSizer:
    def __init__(self, max_span: int) -> None:
        if max_span < 1:
            raise ValueError("max_span must be at least 1")
        self.max_span = max_span
        self.span = max_span
        self._successes = 0

    def next_range(self, start: int, end: int) -> tuple[int, int]:
        """The next request's blocks: from `start`, at most `span` of them, not past `end`."""
        return start, min(end, start + self.span - 1)

    def on_success(self) -> None:
        self._successes += 1
        if self._successes >= GROW_AFTER and self.span < self.max_span:
            self.span = min(self.max_span, self.span * 2)
            self._successes = 0

    def on_too_large(self, asked: tuple[int, int], suggested: tuple[int, int] | None) -> int:
        """Shrink after a refusal of `asked`; returns the new span. A suggestion is honoured when it
        is narrower than what was refused (its start may differ: providers compute it for their
        own idea of the range, so only its width is used)."""
        self._successes = 0
        width = asked[1] - asked[0] + 1
        if suggested is not None:
            proposed = suggested[1] - suggested[0] + 1
            if 1 <= proposed < width:
                self.span = proposed
                return self.span
        self.span = max(1, width // 2)
        return self.span
