"""Bad frames the simulator injects next to real ones, so the daemon's parser and validators are
exercised: invalid JSON, truncated JSON, an unknown event type, a non-numeric price, a negative
price and a missing field. They copy ids from the real event they shadow and never consume trade or
update ids; every one of them must be rejected by a correct consumer.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec

from ingestd.sim.ws_frames import combined_message

MALFORMED_KINDS = (
    "invalid_json",
    "truncated",
    "unknown_event",
    "non_numeric_price",
    "negative_price",
    "missing_field",
)

_encode = msgspec.json.encode


def malformed_messages(kind: str, stream: str, payload: dict[str, Any], rng: random.Random) -> tuple[bytes, bytes]:
    """(message for a raw-stream connection, message for a combined-stream connection)."""
    if kind == "invalid_json":
        raw = b'{"e":"' + payload["e"].encode() + b'","E":,,"s":}'
        return raw, combined_message(stream, raw)
    if kind == "truncated":
        raw = _encode(payload)
        combined = combined_message(stream, raw)
        return raw[: rng.randint(1, len(raw) - 1)], combined[: rng.randint(1, len(combined) - 1)]
    if kind == "unknown_event":
        bad = {"e": "mysteryEvent", "E": payload["E"], "s": payload["s"]}
    elif kind == "non_numeric_price":
        bad = _with_price(payload, "abc")
    elif kind == "negative_price":
        bad = _with_price(payload, "-1.00000000")
    elif kind == "missing_field":
        bad = dict(payload)
        del bad["u" if payload["e"] == "depthUpdate" else "p"]
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    raw = _encode(bad)
    return raw, combined_message(stream, raw)


def _with_price(payload: dict[str, Any], price: str) -> dict[str, Any]:
    bad = dict(payload)
    if payload["e"] != "depthUpdate":
        bad["p"] = price
        return bad
    side = "b" if payload["b"] else "a"
    levels = [list(level) for level in payload[side]] or [[price, "1.00000000"]]
    levels[0][0] = price
    bad[side] = levels
    return bad
