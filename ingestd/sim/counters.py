"""What the simulator did, for GET /_sim/stats and for tests that check the faults really happened."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class SimCounters:
    frames_sent: int = 0  # real data frames queued to connections (live fan-out)
    frames_dropped: int = 0  # data frames skipped on purpose (drop_rate)
    dropped_tails_released: int = 0  # dropped last-frames-of-a-stream sent late at a pause
    malformed_sent: int = 0  # bad frames queued to connections (malformed_rate)
    blast_frames_sent: int = 0  # pre-encoded trade frames written in blast mode
    connections_opened: int = 0  # completed WebSocket handshakes
    handshakes_rejected: int = 0
    drops: int = 0  # connections cut by drop_every_s or POST /_sim/drop
    shutdowns: int = 0  # serverShutdown notices sent
    max_age_closes: int = 0
    slow_consumer_closes: int = 0  # outgoing buffer overflowed
    rate_limit_closes: int = 0  # more than max_incoming_per_s incoming messages
    pong_timeouts: int = 0
    rest_connections: int = 0
    rest_requests: int = 0
    http_429: int = 0
    http_418: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)
