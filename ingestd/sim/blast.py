"""Blast mode: pre-generated trades, pre-encoded as server WebSocket frames, for benchmarks.

All trades are generated up front (so they are in the ground truth before any client connects) and
each is encoded once as a complete unmasked text frame, back to back in one buffer (combined-stream
frames at start-up, raw-stream frames on first use). A connection then streams slices of that buffer:
no JSON encoding and no per-frame Python work on the hot path. A connection subscribed to only some
of the symbols gets their frames gathered from the same buffer.

So that consumers can measure latency, the `E` and `T` fields carry the send time, not the generation
time: frames are encoded with a 13-digit placeholder (same width as an epoch-ms timestamp, so frame
lengths stay valid) that is replaced in each chunk just before the chunk is written. Every frame of a
chunk gets the same timestamp; chunks are small enough (512 frames) that this is well under 1 ms stale
when the socket keeps up. The ground truth (REST, /_sim/truth) keeps the generation time.

Trade ids in blast trades are at most 10 digits and prices/quantities contain a '.', so the placeholder
cannot occur anywhere else in a frame.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Collection, Iterable

import msgspec
import trio

from ingestd.sim.market import Market
from ingestd.sim.stream_names import TRADE, stream_name
from ingestd.sim.ws_frames import combined_message, text_frame

TIME_PLACEHOLDER = b"1111111111111"
_PLACEHOLDER_MS = int(TIME_PLACEHOLDER)
FRAMES_PER_CHUNK = 512

_encode = msgspec.json.encode


class FrameStore:
    """Frames back to back in one buffer; frame i is data[offsets[i]:offsets[i + 1]]."""

    def __init__(self, frames: Iterable[bytes]) -> None:
        data = bytearray()
        offsets = array("Q", [0])
        for frame in frames:
            data += frame
            offsets.append(len(data))
        self.data = data
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def frame(self, index: int) -> memoryview:
        return memoryview(self.data)[self.offsets[index] : self.offsets[index + 1]]


def _payload_of(frame: memoryview) -> memoryview:
    length_byte = frame[1] & 0x7F
    header = 2 if length_byte < 126 else 4 if length_byte == 126 else 10
    return frame[header:]


class BlastTape:
    def __init__(self, market: Market, count: int) -> None:
        """Generate `count` trades over the market's active symbols (this mutates the market).

        Frames are encoded up front for combined-stream connections (what a multi-symbol consumer
        uses); the raw-stream variant is derived from them on first use.
        """
        self.symbols: tuple[str, ...] = market.active_symbols
        streams = [stream_name(symbol, TRADE) for symbol in self.symbols]
        symbol_numbers = {symbol: number for number, symbol in enumerate(self.symbols)}
        self._symbol_of_frame = array("H")
        self._wrapper_prefix_lengths = [len(combined_message(stream, b"")) - 1 for stream in streams]
        generated_at = time.time_ns() // 1_000_000

        def generate() -> Iterable[bytes]:
            for _ in range(count):
                symbol = market.pick_symbol()
                assert symbol is not None
                payload = market.step_trade(symbol, generated_at)
                payload["E"] = payload["T"] = _PLACEHOLDER_MS
                number = symbol_numbers[symbol]
                self._symbol_of_frame.append(number)
                yield text_frame(combined_message(streams[number], _encode(payload)))

        self._combined = FrameStore(generate())
        self._raw: FrameStore | None = None
        self._raw_lock = trio.Lock()

    def __len__(self) -> int:
        return len(self._combined)

    async def frames(self, combined: bool) -> FrameStore:
        """The frame store for combined or raw connections; the raw one is built on first use."""
        if combined:
            return self._combined
        async with self._raw_lock:
            if self._raw is None:
                # Re-framing a million messages takes about a second: keep the event loop responsive.
                self._raw = await trio.to_thread.run_sync(self._build_raw)
            return self._raw

    def _build_raw(self) -> FrameStore:
        prefix_lengths = self._wrapper_prefix_lengths
        return FrameStore(
            text_frame(bytes(_payload_of(self._combined.frame(i))[prefix_lengths[self._symbol_of_frame[i]] : -1]))
            for i in range(len(self._combined))
        )

    def selection(self, symbols: Collection[str]) -> array | None:
        """Frame numbers for trades of `symbols`, in order; None means every frame."""
        wanted = {number for number, symbol in enumerate(self.symbols) if symbol in symbols}
        if len(wanted) == len(self.symbols):
            return None
        return array("Q", (i for i, number in enumerate(self._symbol_of_frame) if number in wanted))


class BlastCursor:
    """One connection's position in the tape; hands out chunks stamped with the send time."""

    def __init__(self, store: FrameStore, selection: array | None, frames_per_chunk: int = FRAMES_PER_CHUNK) -> None:
        self._store = store
        self._selection = selection
        self._frames_per_chunk = max(1, frames_per_chunk)
        self._total = len(store) if selection is None else len(selection)
        self.frames_sent = 0

    @property
    def done(self) -> bool:
        return self.frames_sent >= self._total

    def next_chunk(self, timestamp_ms: int) -> tuple[bytes | bytearray, int]:
        """(chunk bytes, number of frames in it); call only while not done."""
        start = self.frames_sent
        stop = min(self._total, start + self._frames_per_chunk)
        store = self._store
        if self._selection is None:
            chunk = store.data[store.offsets[start] : store.offsets[stop]]
        else:
            chunk = b"".join(store.frame(i) for i in self._selection[start:stop])
        self.frames_sent = stop
        return chunk.replace(TIME_PLACEHOLDER, b"%013d" % timestamp_ms), stop - start
