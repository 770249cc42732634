"""Build WebSocket text frames as a server sends them (RFC 6455 §5.2).

Server-to-client frames are never masked, so a frame's bytes depend only on its payload: the fan-out
encodes each message once and hands the same bytes to every subscriber, and blast mode pre-builds
whole runs of frames. Payloads must be valid UTF-8 (every payload here is ASCII JSON or ASCII junk).
"""

from __future__ import annotations

import struct

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    length = len(payload)
    if length < 126:
        return bytes((_FIN_TEXT, length)) + payload
    if length < 1 << 16:
        return struct.pack("!BBH", _FIN_TEXT, 126, length) + payload
    return struct.pack("!BBQ", _FIN_TEXT, 127, length) + payload


def combined_message(stream: str, payload: bytes) -> bytes:
    """Wrap a raw payload for a combined-stream connection: {"stream":..,"data":..}."""
    return b'{"stream":"' + stream.encode() + b'","data":' + payload + b"}"
