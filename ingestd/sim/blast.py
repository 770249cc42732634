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

Connections on `@aggTrade` streams get the same tape as aggregate-trade frames (each trade its own
aggregate, as in live mode), re-encoded from the trade frames on first use.

Trade ids in blast trades are at most 10 digits and prices/quantities contain a '.', so the placeholder
cannot occur anywhere else in a frame.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Collection, Iterable

import msgspec
import trio

from ingestd.sim.market import Market, agg_trade_from_trade
from ingestd.sim.stream_names import AGG_TRADE, TRADE, stream_name
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
        # (combined, kind) -> frames; variants other than combined @trade are built on first use
        self._stores: dict[tuple[bool, str], FrameStore] = {(True, TRADE): self._combined}
        self._build_lock = trio.Lock()

    def __len__(self) -> int:
        return len(self._combined)

    async def frames(self, combined: bool, kind: str = TRADE) -> FrameStore:
        """The frame store for combined or raw connections on `@trade` or `@aggTrade` streams."""
        async with self._build_lock:
            store = self._stores.get((combined, kind))
            if store is None:
                # Re-framing a million messages takes seconds: keep the event loop responsive.
                store = self._stores[(combined, kind)] = await trio.to_thread.run_sync(self._build, combined, kind)
            return store

    def _trade_payload(self, i: int) -> bytes:
        """Frame i's raw `@trade` payload, without the combined-stream wrapper."""
        prefix = self._wrapper_prefix_lengths[self._symbol_of_frame[i]]
        return bytes(_payload_of(self._combined.frame(i))[prefix:-1])

    def _build(self, combined: bool, kind: str) -> FrameStore:
        count = len(self._combined)
        if kind == TRADE:
            return FrameStore(text_frame(self._trade_payload(i)) for i in range(count))
        decode = msgspec.json.Decoder(dict).decode
        agg_streams = [stream_name(symbol, AGG_TRADE) for symbol in self.symbols]

        def frames() -> Iterable[bytes]:
            for i in range(count):
                payload = _encode(agg_trade_from_trade(decode(self._trade_payload(i))))
                yield text_frame(combined_message(agg_streams[self._symbol_of_frame[i]], payload) if combined else payload)

        return FrameStore(frames())

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
