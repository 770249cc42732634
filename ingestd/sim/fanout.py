"""Route published stream messages to the connections subscribed to them.

Each message is encoded once per style (raw or combined) and the same frame bytes are queued to every
subscriber. Faults are applied here: drop_rate is decided per connection with the connection's own
RNG (two connections lose different frames), malformed_rate once per published message (every
subscriber gets the same bad frame, just before the real one).

A dropped frame is detectable only through the next frame on its stream (a jump in trade ids or
update ids). When the market pauses, a stream whose latest frame was dropped would never get that
next frame, so `release_dropped_tails` sends those last frames late: at a quiescent point every
loss has become visible, and a consumer that repairs gaps can converge on the ground truth.
"""

from __future__ import annotations

import random
from typing import Any, Protocol

import msgspec

from ingestd.sim.counters import SimCounters
from ingestd.sim.malformed import MALFORMED_KINDS, malformed_messages
from ingestd.sim.ws_frames import combined_message, text_frame

_encode = msgspec.json.encode


class Subscriber(Protocol):
    combined: bool
    drop_rng: random.Random

    def send_data(self, frame: bytes) -> bool:
        """Queue a data frame; False if the connection is closing and did not take it."""
        ...


class FanOut:
    def __init__(self, counters: SimCounters, *, drop_rate: float, malformed_rate: float, seed: int) -> None:
        self._counters = counters
        self._drop_rate = drop_rate
        self._malformed_rate = malformed_rate
        self._fault_rng = random.Random(f"{seed}/malformed")
        self._subscribers: dict[str, set[Subscriber]] = {}
        # (subscriber, stream) -> the stream's latest frame, when that frame was dropped for them.
        self._dropped_tails: dict[tuple[Subscriber, str], bytes] = {}

    def stop_faults(self) -> None:
        """From now on, deliver every frame and inject no bad ones."""
        self._drop_rate = 0.0
        self._malformed_rate = 0.0

    def subscribe(self, subscriber: Subscriber, stream: str) -> None:
        self._subscribers.setdefault(stream, set()).add(subscriber)

    def unsubscribe(self, subscriber: Subscriber, stream: str) -> None:
        self._dropped_tails.pop((subscriber, stream), None)
        subscribers = self._subscribers.get(stream)
        if subscribers is not None:
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[stream]

    def has_subscribers(self, stream: str) -> bool:
        return stream in self._subscribers

    def publish(self, stream: str, payload: dict[str, Any]) -> None:
        subscribers = self._subscribers.get(stream)
        if not subscribers:
            return
        # A tuple, because queueing to a slow connection may abort it and it then unsubscribes.
        subscribers_now = tuple(subscribers)
        if self._malformed_rate and self._fault_rng.random() < self._malformed_rate:
            kind = self._fault_rng.choice(MALFORMED_KINDS)
            raw_bad, combined_bad = malformed_messages(kind, stream, payload, self._fault_rng)
            frames = (text_frame(raw_bad), text_frame(combined_bad))
            for subscriber in subscribers_now:
                self._counters.malformed_sent += subscriber.send_data(frames[subscriber.combined])
        raw = _encode(payload)
        raw_frame = combined_frame = None
        drop_rate = self._drop_rate
        for subscriber in subscribers_now:
            if subscriber.combined:
                if combined_frame is None:
                    combined_frame = text_frame(combined_message(stream, raw))
                frame = combined_frame
            else:
                if raw_frame is None:
                    raw_frame = text_frame(raw)
                frame = raw_frame
            if drop_rate:
                if subscriber.drop_rng.random() < drop_rate:
                    self._counters.frames_dropped += 1
                    self._dropped_tails[(subscriber, stream)] = frame
                    continue
                self._dropped_tails.pop((subscriber, stream), None)
            self._counters.frames_sent += subscriber.send_data(frame)

    def release_dropped_tails(self) -> int:
        """Send every stream's latest frame to the subscribers it was dropped for; returns how many."""
        tails, self._dropped_tails = self._dropped_tails, {}
        released = sum(subscriber.send_data(frame) for (subscriber, _), frame in tails.items())
        self._counters.dropped_tails_released += released
        return released
