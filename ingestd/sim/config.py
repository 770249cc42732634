"""Every knob of the Binance simulator in one place. Fault injection is off by default."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ingestd.sim.instruments import default_symbols

# exchangeInfo symbol statuses other than TRADING (binance-spot-api-docs enums.md).
NON_TRADING_STATUSES = ("END_OF_DAY", "HALT", "BREAK", "CANCEL_ONLY")
DEFAULT_HALT_STATUS = "HALT"


@dataclass
class SimConfig:
    # What is listed. `symbols` may be given as a count: 3 -> BTCUSDT, ETHUSDT, SOLUSDT; beyond the
    # real-looking names come SYM000USDT, SYM001USDT, ... After construction it is always a list.
    symbols: Sequence[str] | int = 5
    seed: int = 1
    # Symbols reported non-TRADING in exchangeInfo, mapped to their status. A plain list of symbols
    # means status "HALT". Halted symbols generate no events.
    halted: Mapping[str, str] | Sequence[str] = field(default_factory=dict)

    # Where to listen. Port 0 picks a free port; read the result from Simulator.ws_url / rest_url.
    host: str = "127.0.0.1"
    ws_port: int = 0
    rest_port: int = 0

    # Live event generation: events per second over all symbols, and the share that are depth diffs.
    rate: float = 200.0
    depth_ratio: float = 0.5
    min_book_levels: int = 20
    max_book_levels: int = 100  # per side; a depth snapshot with limit >= 100 is the whole book

    # WebSocket faults.
    drop_every_s: float | None = None  # abruptly close every connection's TCP stream this often
    drop_rate: float = 0.0  # per connection and data frame: probability the frame is skipped
    malformed_rate: float = 0.0  # per published frame: probability of an extra bad frame before it
    shutdown_every_s: float | None = None  # connection age at which serverShutdown is announced
    shutdown_grace_s: float = 3.0  # then the connection is closed this much later
    max_connection_age_s: float | None = None  # Binance closes connections at 24 h

    # WebSocket limits and keepalive, Binance's values by default. Pongs count as incoming messages,
    # so a ping_interval_s under 1/max_incoming_per_s gets well-behaved clients disconnected.
    ping_interval_s: float = 20.0
    pong_timeout_s: float = 60.0
    max_incoming_per_s: int = 5
    max_streams_per_connection: int = 1024
    send_buffer_bytes: int = 8 * 1024 * 1024  # a slower consumer is disconnected

    # REST.
    slow_ms: float = 0.0  # delay before every REST response
    weight_limit: int = 6000  # REQUEST_WEIGHT per window
    weight_window_s: float = 60.0  # the header is still X-MBX-USED-WEIGHT-1M; shorten for tests
    ban_s: float = 120.0  # Retry-After of a 418

    # Blast mode (benchmarks): pre-generate this many trades and stream them to every connection that
    # subscribes to @trade streams, as fast as the socket takes them or at blast_rate messages/s.
    blast_trades: int = 0
    blast_rate: float | None = None

    # TLS on the WebSocket (ws_url becomes wss://): for peers that refuse plain ws://, in benchmarks.
    tls_cert: str | os.PathLike | None = None  # PEM certificate chain
    tls_key: str | os.PathLike | None = None  # PEM private key, if not in tls_cert

    def __post_init__(self) -> None:
        if isinstance(self.symbols, int):
            self.symbols = default_symbols(self.symbols)
        elif isinstance(self.symbols, str):  # "BTCUSDT,ETHUSDT", not a sequence of letters
            self.symbols = [s.strip().upper() for s in self.symbols.split(",") if s.strip()]
        else:
            self.symbols = [s.upper() for s in self.symbols]
        if not self.symbols:
            raise ValueError("at least one symbol is required")
        if isinstance(self.halted, Mapping):
            self.halted = {s.upper(): status for s, status in self.halted.items()}
        else:
            self.halted = {s.upper(): DEFAULT_HALT_STATUS for s in self.halted}
        unknown = set(self.halted) - set(self.symbols)
        if unknown:
            raise ValueError(f"halted symbols are not listed: {sorted(unknown)}")
        bad_status = {s for s in self.halted.values() if s not in NON_TRADING_STATUSES}
        if bad_status:
            raise ValueError(f"halt statuses must be among {NON_TRADING_STATUSES}, got {sorted(bad_status)}")
        for name in ("drop_rate", "malformed_rate", "depth_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        for name in ("drop_every_s", "shutdown_every_s", "max_connection_age_s", "blast_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None to disable)")
        if self.rate < 0 or self.slow_ms < 0 or self.blast_trades < 0:
            raise ValueError("rate, slow_ms and blast_trades must be >= 0")
        if self.ping_interval_s <= 0 or self.pong_timeout_s <= 0 or self.shutdown_grace_s < 0:
            raise ValueError("ping_interval_s and pong_timeout_s must be > 0, shutdown_grace_s >= 0")
