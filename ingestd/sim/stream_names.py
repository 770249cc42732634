"""Binance Spot stream names the simulator serves: `<symbol>@trade`, `<symbol>@aggTrade`,
`<symbol>@depth` and `<symbol>@depth@100ms`, with the symbol in lowercase (as on Binance)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

TRADE = "trade"
AGG_TRADE = "aggTrade"
DEPTH_1000MS = "depth"
DEPTH_100MS = "depth@100ms"
STREAM_KINDS = (TRADE, AGG_TRADE, DEPTH_1000MS, DEPTH_100MS)

# How often each diff-depth stream flushes, in milliseconds.
DEPTH_INTERVAL_MS = {DEPTH_100MS: 100, DEPTH_1000MS: 1000}


@dataclass(frozen=True)
class StreamName:
    symbol: str  # upper case, as in payloads ("BTCUSDT")
    kind: str

    def __str__(self) -> str:
        return stream_name(self.symbol, self.kind)


def stream_name(symbol: str, kind: str) -> str:
    return f"{symbol.lower()}@{kind}"


def parse_stream_name(name: str, symbols: Collection[str]) -> StreamName | None:
    """The stream a name refers to, or None if it is not one this simulator serves."""
    lowered_symbol, at, kind = name.partition("@")
    if not at or kind not in STREAM_KINDS or lowered_symbol != lowered_symbol.lower():
        return None
    symbol = lowered_symbol.upper()
    if symbol not in symbols:
        return None
    return StreamName(symbol, kind)


class TargetError(ValueError):
    """A WebSocket request target the server refuses, with the HTTP status to refuse it with."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_ws_target(target: str, symbols: Collection[str], max_streams: int) -> tuple[bool, list[str]]:
    """(combined?, stream names) for `/stream?streams=a/b/...`, `/ws/<stream>`, or bare `/ws` / `/stream`.

    A bare path opens a connection with no streams, to be filled with SUBSCRIBE.
    """
    path, _, query = target.partition("?")
    if path.rstrip("/") == "/stream":
        combined = True
        names = [name for value in parse_qs(query).get("streams", []) for name in value.split("/") if name]
    elif path.rstrip("/") == "/ws":
        combined, names = False, []
    elif path.startswith("/ws/"):
        combined, names = False, [name for name in unquote(path[len("/ws/") :]).split("/") if name]
    else:
        raise TargetError(404, f"Unknown path {path!r}; use /ws/<stream> or /stream?streams=<a>/<b>")
    names = list(dict.fromkeys(names))
    unknown = [name for name in names if parse_stream_name(name, symbols) is None]
    if unknown:
        raise TargetError(400, f"Invalid stream name(s): {', '.join(unknown)}")
    if len(names) > max_streams:
        raise TargetError(400, f"Too many streams: {len(names)} > {max_streams} per connection")
    return combined, names
