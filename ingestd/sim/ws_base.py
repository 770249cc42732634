"""The server side of one simulated WebSocket connection, whatever the venue.

The WebSocket protocol itself (handshake, frame parsing, ping/pong, close handshake) is websockets'
sans-I/O `ServerProtocol`; `WsServerSession` is the Trio plumbing around it that every venue
simulator needs: read the upgrade request, read frames, drain one outbox, close or abort. A venue
session subclasses it and keeps only its own rules: which upgrade requests it accepts
(`_answer_upgrade`), what it makes of each frame (`_on_frame`), what it sends, and which faults it
injects.

A single writer task owns the socket, so frames are never interleaved mid-write; everything else
only appends to the outbox and wakes the writer.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable

import trio
from websockets.frames import Frame
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

HANDSHAKE_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 2.0  # after our close frame, how long the client gets to answer before we cut TCP
MAX_READ = 64 * 1024


class WsServerSession:
    def __init__(
        self,
        stream: trio.abc.Stream,
        session_id: int,
        *,
        max_message_bytes: int,
        log: logging.Logger,
        protocol_log: logging.Logger,
    ) -> None:
        self.id = session_id
        self.end_reason = "client went away"
        self._log = log
        self._stream = stream
        self._protocol = ServerProtocol(max_size=max_message_bytes, logger=protocol_log)
        self._outbox: list[bytes] = []
        # What the queued frames cost against the venue's send buffer (each venue counts its own way).
        self._outbox_bytes = 0
        self._eof_queued = False
        self._writer_wakeup = trio.Event()
        self._cancel_scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None  # set once the handshake succeeded
        self._closing = False
        # Venues that cut off a silent client move this forward on whatever counts as a sign of life.
        self._client_heard_at = trio.current_time()

    # ----- what a venue session provides ---------------------------------------------------------

    def _answer_upgrade(self, request: Request) -> Response:
        """Accept or reject the upgrade request (`self._protocol.accept` / `.reject`), counting it."""
        raise NotImplementedError

    def _on_open(self, nursery: trio.Nursery) -> None:
        """The handshake succeeded: join the simulator and start the venue's own tasks."""

    def _on_frame(self, frame: Frame) -> None:
        """A data or control frame from the client (websockets has already answered its pings)."""
        raise NotImplementedError

    def _detach(self) -> None:
        """Leave the simulator's connection set and subscriptions; called more than once."""

    def _paced_send_due_at(self) -> float:
        """When `_paced_send` next has something to write past the outbox (never, unless overridden)."""
        return math.inf

    async def _paced_send(self) -> None:
        raise NotImplementedError

    def _writer_finished(self) -> bool:
        """The outbox is empty: has the protocol asked for TCP to be closed?"""
        return self._eof_queued

    # ----- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            with self._cancel_scope:
                if not await self._handshake():
                    return
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        nursery.start_soon(self._end_session_after, self._read_loop)
                        nursery.start_soon(self._end_session_after, self._write_loop)
                        self._on_open(nursery)
                finally:
                    self._detach()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; nothing to clean up beyond closing the socket
        finally:
            await trio.aclose_forcefully(self._stream)
            if self._nursery is not None:
                self._log.info("ws#%d closed: %s", self.id, self.end_reason)

    async def _end_session_after(self, task: Callable[[], Awaitable[None]]) -> None:
        """Run the reader or the writer; when either stops, for whatever reason, the session is over."""
        try:
            await task()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away mid-read or mid-write
        finally:
            self._cancel_scope.cancel()

    def abort(self, reason: str) -> None:
        """Cut the TCP connection now, without a close frame (a network failure, as seen by the client)."""
        if not self._closing:
            self.end_reason = reason
        self._closing = True
        self._detach()  # at once, so the session stops counting as open before its task unwinds
        self._cancel_scope.cancel()

    def close(self, code: int, reason: str) -> None:
        """Start the WebSocket closing handshake; the TCP connection goes when it completes or times out."""
        if self._closing:
            return
        self._closing = True
        self.end_reason = f"closed by the server ({code} {reason})"
        if self._protocol.state is State.OPEN:
            self._protocol.send_close(code, reason)
            self._pump_protocol()
        self._cancel_scope.deadline = min(self._cancel_scope.deadline, trio.current_time() + CLOSE_TIMEOUT_S)

    async def _wait_for_silence(self, timeout_s: float) -> None:
        """Return once nothing has moved `_client_heard_at` for `timeout_s`."""
        while True:
            await trio.sleep_until(self._client_heard_at + timeout_s)
            if trio.current_time() >= self._client_heard_at + timeout_s:
                return

    # ----- handshake ------------------------------------------------------------------------------

    async def _handshake(self) -> bool:
        request = None
        with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
            while request is None:
                data = await self._stream.receive_some(MAX_READ)
                if not data:
                    return False
                self._protocol.receive_data(data)
                for event in self._protocol.events_received():
                    if isinstance(event, Request):
                        request = event
                if request is None and self._protocol.handshake_exc is not None:
                    await self._flush_handshake()
                    return False
        if request is None:
            return False
        response = self._answer_upgrade(request)
        self._protocol.send_response(response)
        await self._flush_handshake()
        return response.status_code == 101

    async def _flush_handshake(self) -> None:
        # The writer task does not exist yet, so the handshake writes to the socket itself.
        data = b"".join(self._protocol.data_to_send())
        if data:
            await self._stream.send_all(data)

    # ----- reading --------------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            data = await self._stream.receive_some(MAX_READ)
            if not data:
                self._protocol.receive_eof()
                return
            self._protocol.receive_data(data)
            for event in self._protocol.events_received():
                if isinstance(event, Frame):
                    self._on_frame(event)
            self._pump_protocol()
            if self._protocol.state is State.CLOSED:
                return

    # ----- writing --------------------------------------------------------------------------------

    def _queue(self, frame: bytes, buffer_charge: int | None = None) -> bool:
        """Queue a frame for the writer, unless the connection is on its way out.

        `buffer_charge` is what the frame costs against the venue's send buffer (its length unless
        the venue says otherwise); the venue decides what an overfull buffer means.
        """
        if self._closing or self._protocol.state is not State.OPEN:
            return False
        self._outbox.append(frame)
        self._outbox_bytes += len(frame) if buffer_charge is None else buffer_charge
        self._writer_wakeup.set()
        return True

    def _pump_protocol(self) -> None:
        """Move whatever the protocol wants to send (pongs, pings, close frames, EOF) to the outbox."""
        for data in self._protocol.data_to_send():
            if data:
                self._outbox.append(data)
            else:
                self._eof_queued = True
        self._writer_wakeup.set()

    def wake_writer(self) -> None:
        self._writer_wakeup.set()

    async def _write_loop(self) -> None:
        while True:
            if self._outbox:
                pending, self._outbox, self._outbox_bytes = self._outbox, [], 0
                await self._stream.send_all(pending[0] if len(pending) == 1 else b"".join(pending))
                continue
            if self._writer_finished():
                return  # the protocol finished the closing handshake: close TCP
            wake_at = self._paced_send_due_at()
            if wake_at <= trio.current_time():
                await self._paced_send()
                continue
            with trio.move_on_at(wake_at):
                await self._writer_wakeup.wait()
            self._writer_wakeup = trio.Event()
