"""ingestd.transport.ws against a real in-test WebSocket server over loopback TCP (and TLS).

The server is Trio TCP + the `websockets` sans-I/O ServerProtocol, scripted frame by frame from
the test body, so each test controls exactly which bytes arrive in which read. Timing tests use
pytest-trio's `autojump_clock` (virtual time), so the 2 s rate-limit test takes milliseconds.
"""

from __future__ import annotations

import collections
import random
import ssl
from contextlib import asynccontextmanager
from functools import partial

import pytest
import trio
import trio.testing
from websockets.frames import Close, Frame, Opcode
from websockets.server import ServerProtocol

from ingestd.stats import ConnectionStats
from ingestd.transport.ws import ConnectionClosed, HandshakeError, WsConnection, connect_ws

pytestmark = pytest.mark.trio


# --- the in-test server ------------------------------------------------------------------------


class Peer:
    """Server side of one connection, driven by the test."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.proto = ServerProtocol(max_size=None)
        self.request = None
        self.events: collections.deque = collections.deque()
        self.eof = False
        self.bytes_received = 0

    async def _read(self) -> None:
        try:
            data = await self.stream.receive_some(65536)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if data:
            self.bytes_received += len(data)
            self.proto.receive_data(data)
        else:
            self.eof = True
            self.proto.receive_eof()
        self.events.extend(self.proto.events_received())
        await self.flush()  # the protocol answers pings and close frames by itself

    async def flush(self) -> None:
        writes = self.proto.data_to_send()
        data = b"".join(writes)
        if data:
            try:
                await self.stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        if b"" in writes:  # the protocol says: close TCP now (server side of the closing handshake)
            await self.stream.aclose()

    async def read_request(self):
        while not self.events:
            await self._read()
            if self.eof:
                raise AssertionError("client went away before sending its request")
        self.request = self.events.popleft()
        return self.request

    async def handshake(self, *then: str | bytes) -> None:
        """Accept the upgrade; `then` are messages sent in the same write as the 101 response."""
        request = await self.read_request()
        self.proto.send_response(self.proto.accept(request))
        self._queue(then)
        await self.flush()

    def _queue(self, messages) -> None:
        for m in messages:
            if isinstance(m, str):
                self.proto.send_text(m.encode())
            else:
                self.proto.send_binary(m)

    async def send(self, *messages: str | bytes) -> None:
        """All messages leave in one send_all, so the client can read them in one read."""
        self._queue(messages)
        await self.flush()

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def next_frame(self) -> Frame | None:
        """Next frame from the client, or None at EOF."""
        while not self.events:
            if self.eof:
                return None
            await self._read()
        return self.events.popleft()

    async def wait_eof(self) -> None:
        """Read (and discard) until the client's socket is closed."""
        while not self.eof:
            await self._read()

    async def abort(self) -> None:
        """Drop TCP without a close frame."""
        await trio.aclose_forcefully(self.stream)


@asynccontextmanager
async def ws_server(*, ssl_context: ssl.SSLContext | None = None, handshake: bool = True):
    """Yields (url, peers): a receive channel producing one Peer per accepted connection."""
    send_peer, peers = trio.open_memory_channel(10)

    async def serve(stream: trio.abc.Stream) -> None:
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_side=True)
        peer = Peer(stream)
        if handshake:
            await peer.handshake()
        await send_peer.send(peer)
        await trio.sleep_forever()  # the test owns the peer; the nursery's cancel cleans up

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        scheme = "wss" if ssl_context is not None else "ws"
        yield f"{scheme}://127.0.0.1:{port}/stream?streams=btcusdt@trade", peers
        nursery.cancel_scope.cancel()


async def receive_n(conn: WsConnection, n: int) -> list:
    out: list = []
    while len(out) < n:
        out += await conn.receive_batch()
    return out


async def close(conn: WsConnection, peer: Peer) -> None:
    """aclose() while the server side is serviced, so the closing handshake completes at once."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer.wait_eof)
        await conn.aclose()


def socket_closed(conn: WsConnection) -> bool:
    """White-box leak check: has the client's own socket been closed?"""
    stream = conn._stream
    if isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    return stream.socket.fileno() == -1


async def until_pong(peer: Peer) -> Frame:
    while True:
        frame = await peer.next_frame()
        assert frame is not None, "EOF before pong"
        if frame.opcode is Opcode.PONG:
            return frame


# --- messages ----------------------------------------------------------------------------------


async def test_text_and_binary_messages():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        assert peer.request.path == "/stream?streams=btcusdt@trade"
        await peer.send('{"a":1}', b"\x00\xffbin", "ünïcødé")
        got = await receive_n(conn, 3)
        assert got == ['{"a":1}', b"\x00\xffbin", "ünïcødé"]
        assert type(got[0]) is str and type(got[1]) is bytes
        await close(conn, peer)


async def test_many_messages_in_one_read_come_back_in_one_batch():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        msgs = [f'{{"t":{i}}}' for i in range(500)]
        await peer.send(*msgs)  # ~6 KB in one write, already in the kernel before we read
        batch = await conn.receive_batch()
        assert batch == msgs
        await close(conn, peer)


async def test_messages_sent_right_behind_the_handshake_are_kept():
    async with ws_server(handshake=False) as (url, peers):
        accepted: list[Peer] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(_accept, peers, "hello", "world", into=accepted))
            conn = await connect_ws(url)
        assert await receive_n(conn, 2) == ["hello", "world"]
        await close(conn, accepted[0])


async def _accept(peers, *greeting: str, into: list | None = None) -> None:
    peer = await peers.receive()
    await peer.handshake(*greeting)
    if into is not None:
        into.append(peer)


async def test_fragmented_messages_are_reassembled_and_pings_between_fragments_answered():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        p = peer.proto
        p.send_text("héllo ".encode()[:2], fin=False)  # split inside a UTF-8 sequence on purpose
        p.send_continuation("héllo ".encode()[2:], fin=False)
        p.send_ping(b"mid")  # control frames may interleave with fragments (RFC 6455 5.4)
        p.send_continuation(b"world", fin=True)
        p.send_binary(b"\x01\x02", fin=False)
        p.send_continuation(b"\x03", fin=True)
        p.send_text(b"whole")
        await peer.flush()
        assert await receive_n(conn, 3) == ["héllo world", b"\x01\x02\x03", "whole"]
        pong = await until_pong(peer)
        assert pong.data == b"mid"
        await close(conn, peer)


async def test_fragments_split_across_reads():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        async with trio.open_nursery() as nursery:
            got: list = []

            async def reader():
                got.extend(await conn.receive_batch())

            nursery.start_soon(reader)
            peer.proto.send_text(b"par", fin=False)
            await peer.flush()
            await trio.sleep(0.05)
            assert got == []  # an incomplete message doesn't end the batch
            # And a frame cut in half on the wire:
            frame = Frame(Opcode.CONT, b"tial", fin=True).serialize(mask=False)
            await peer.send_raw(frame[:3])
            await trio.sleep(0.05)
            assert got == []
            await peer.send_raw(frame[3:])
        assert got == ["partial"]
        await close(conn, peer)


async def test_invalid_utf8_in_text_fails_with_1007():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        await peer.send_raw(Frame(Opcode.TEXT, b"\xff\xfe").serialize(mask=False))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.wait_eof)  # the server completes the closing handshake
            with pytest.raises(ConnectionClosed) as info:
                await conn.receive_batch()
        assert info.value.code == 1007
        frame = await peer.next_frame()
        assert frame.opcode is Opcode.CLOSE and Close.parse(frame.data).code == 1007


# --- control frames ----------------------------------------------------------------------------


async def test_server_ping_is_answered_with_pong_echoing_payload_even_without_data():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.receive_batch)  # blocked: no data message will come
            peer.proto.send_ping(b"1633998523963")
            await peer.flush()
            with trio.fail_after(2):
                pong = await until_pong(peer)
            assert pong.data == b"1633998523963"
            await peer.send("done")  # lets the reader return
        await close(conn, peer)


async def test_client_ping():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        await conn.send_ping(b"hb")
        frame = await peer.next_frame()
        assert frame.opcode is Opcode.PING and frame.data == b"hb"
        # The server's pong is consumed silently by the reader.
        await peer.send("x")
        assert await conn.receive_batch() == ["x"]
        with pytest.raises(ValueError):
            await conn.send_ping(b"x" * 126)
        await close(conn, peer)


async def test_server_close_raises_with_code_after_delivering_earlier_messages():
    stats = ConnectionStats("c1")
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, stats=stats)
        peer = await peers.receive()
        peer.proto.send_text(b"last words")
        peer.proto.send_close(4001, "maintenance")
        await peer.flush()  # message and close frame in one write
        assert await conn.receive_batch() == ["last words"]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.wait_eof)  # reads our close echo, then closes TCP
            t0 = trio.current_time()
            with pytest.raises(ConnectionClosed) as info:
                await conn.receive_batch()
            assert trio.current_time() - t0 < 0.5  # no need to sit out the close timeout
        assert (info.value.code, info.value.reason) == (4001, "maintenance")
        # We completed the handshake: the server got our close echo.
        frame = await peer.next_frame()
        assert frame.opcode is Opcode.CLOSE and Close.parse(frame.data).code == 4001
        assert conn.closed
        with pytest.raises(ConnectionClosed) as info:  # and it stays closed
            await conn.receive_batch()
        assert info.value.code == 4001
        with pytest.raises(ConnectionClosed):
            await conn.send_text("too late")
        assert socket_closed(conn)  # without the caller calling aclose()
        assert stats.state == "closed" and "4001" in stats.last_error
        await conn.aclose()  # still fine


async def test_abrupt_eof_raises_1006():
    stats = ConnectionStats("c1")
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, stats=stats)
        peer = await peers.receive()
        await peer.send("a")
        await peer.abort()
        got: list = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                got += await conn.receive_batch()
        assert got == ["a"]
        assert info.value.code == 1006
        assert socket_closed(conn)
        assert stats.state == "closed" and stats.last_error
        await conn.aclose()


async def test_eof_in_the_middle_of_a_frame_raises_1006():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        await peer.send_raw(Frame(Opcode.TEXT, b"x" * 100).serialize(mask=False)[:50])
        await peer.abort()
        with pytest.raises(ConnectionClosed) as info:
            await conn.receive_batch()
        assert info.value.code == 1006


async def test_protocol_error_fails_with_1002():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        await peer.send_raw(b"\x8f\x00")  # reserved opcode 0xF
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.wait_eof)
            with pytest.raises(ConnectionClosed) as info:
                await conn.receive_batch()
        assert info.value.code == 1002


async def test_oversized_message_is_rejected_with_1009():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, max_message_size=1000)
        peer = await peers.receive()
        await peer.send("x" * 1000)  # exactly the limit: fine
        assert await conn.receive_batch() == ["x" * 1000]
        await peer.send("y" * 1001)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.wait_eof)
            with pytest.raises(ConnectionClosed) as info:
                await conn.receive_batch()
        assert info.value.code == 1009
        frame = await peer.next_frame()
        assert frame.opcode is Opcode.CLOSE and Close.parse(frame.data).code == 1009


async def test_oversized_fragmented_message_is_rejected_with_1009():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, max_message_size=1000)
        peer = await peers.receive()
        peer.proto.send_text(b"a" * 600, fin=False)
        peer.proto.send_continuation(b"b" * 600, fin=True)
        await peer.flush()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.wait_eof)
            with pytest.raises(ConnectionClosed) as info:
                await conn.receive_batch()
        assert info.value.code == 1009


# --- timing (virtual clock) --------------------------------------------------------------------


async def test_idle_timeout(autojump_clock):
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, idle_timeout=5)
        peer = await peers.receive()
        start = trio.current_time()
        # Pings alone keep the connection alive: any frame resets the idle timer.
        async with trio.open_nursery() as nursery:

            async def pinger():
                for _ in range(4):
                    await trio.sleep(3)
                    peer.proto.send_ping(b"")
                    await peer.flush()

            nursery.start_soon(pinger)
            with pytest.raises(ConnectionClosed) as info:
                await conn.receive_batch()
        elapsed = trio.current_time() - start
        assert info.value.code == 1006 and "idle" in info.value.reason
        assert socket_closed(conn)
        assert 12 + 5 <= elapsed < 12 + 5 + 0.5
        await peer.wait_eof()  # the dead connection's socket was closed


async def test_send_rate_limit(autojump_clock):
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, max_outgoing_per_s=5)
        peer = await peers.receive()
        start = trio.current_time()
        for i in range(10):
            await conn.send_text(f'{{"id":{i}}}')
        elapsed = trio.current_time() - start
        assert 1.8 - 1e-6 <= elapsed < 1.9  # burst of 1, then one every 0.2 s
        got = []
        while len(got) < 10:
            frame = await peer.next_frame()
            got.append(frame.data.decode())
        assert got == [f'{{"id":{i}}}' for i in range(10)]
        await close(conn, peer)


async def test_concurrent_senders_share_the_limit(autojump_clock):
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, max_outgoing_per_s=5)
        peer = await peers.receive()
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(conn.send_text, "s")
                nursery.start_soon(conn.send_ping, b"p")
        assert 1.0 - 1e-6 <= trio.current_time() - start < 1.1  # 6 messages: 5 gaps of 0.2 s
        await close(conn, peer)


async def test_pong_bypasses_limiter_but_counts(autojump_clock):
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, max_outgoing_per_s=5)
        peer = await peers.receive()
        peer.proto.send_ping(b"p")
        peer.proto.send_text(b"x")
        await peer.flush()
        t0 = trio.current_time()
        assert await conn.receive_batch() == ["x"]
        assert trio.current_time() - t0 < 0.01  # the pong didn't wait
        await conn.send_text("after pong")  # but took the slot: this one waits
        assert trio.current_time() - t0 >= 0.2 - 1e-6
        await close(conn, peer)


async def test_aclose_gives_up_on_a_silent_peer_after_one_second(autojump_clock):
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()  # never reads, never answers our close
        t0 = trio.current_time()
        await conn.aclose()
        assert 1.0 - 1e-6 <= trio.current_time() - t0 < 1.1
        assert conn.closed
        await peer.wait_eof()


async def test_open_timeout(autojump_clock):
    stats = ConnectionStats("c1")
    async with ws_server(handshake=False) as (url, peers):
        t0 = trio.current_time()
        with pytest.raises(HandshakeError) as info:
            await connect_ws(url, open_timeout=3, stats=stats)
        assert "timed out" in info.value.reason and 3 <= trio.current_time() - t0 < 3.1
        assert stats.state == "closed" and "timed out" in stats.last_error
        peer = await peers.receive()
        await peer.wait_eof()  # the half-open attempt was closed


# --- closing and cancellation ------------------------------------------------------------------


async def test_aclose_performs_closing_handshake_and_is_idempotent():
    stats = ConnectionStats("c1")
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, stats=stats)
        peer = await peers.receive()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.wait_eof)  # the server answers the close and closes TCP
            t0 = trio.current_time()
            await conn.aclose(4000, "bye")
            assert trio.current_time() - t0 < 0.5  # didn't sit out the 1 s close timeout
        assert peer.proto.close_rcvd.code == 4000 and peer.proto.close_rcvd.reason == "bye"
        assert conn.closed and stats.state == "closed" and stats.last_error == ""
        await conn.aclose()
        await conn.aclose(1001)
        with pytest.raises(ConnectionClosed):
            await conn.send_text("x")
        with pytest.raises(ConnectionClosed):
            await conn.receive_batch()


async def test_aclose_never_raises_on_bad_arguments_or_dead_peer():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        await conn.aclose(1006, "x" * 500)  # invalid code and reason: still closes the socket
        await peer.wait_eof()

        conn = await connect_ws(url)
        peer = await peers.receive()
        await peer.abort()
        await conn.aclose()


async def test_aclose_while_another_task_is_receiving():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        result = {}

        async def reader():
            try:
                while True:
                    await conn.receive_batch()
            except ConnectionClosed as exc:
                result["code"] = exc.code

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            nursery.start_soon(peer.wait_eof)
            await trio.sleep(0.05)
            with trio.fail_after(2):
                await conn.aclose()
        assert result["code"] == 1000


async def test_cancelled_receive_loses_nothing_and_connection_stays_usable():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        with trio.move_on_after(0.05) as scope:
            await conn.receive_batch()
        assert scope.cancelled_caught and not conn.closed
        await peer.send("after cancel")
        assert await conn.receive_batch() == ["after cancel"]
        await close(conn, peer)


async def test_cancellation_storm_loses_no_message_and_answers_every_ping():
    """Cancel receive_batch at random points while the server streams messages and pings."""
    rng = random.Random(7)
    n_msgs, n_pings = 20_000, 200
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, max_outgoing_per_s=0)
        peer = await peers.receive()
        got: list = []
        pongs: list = []

        async def server():
            for i in range(0, n_msgs, 100):
                peer._queue([f"{j}" for j in range(i, i + 100)])
                if (i // 100) % (n_msgs // 100 // n_pings) == 0:
                    peer.proto.send_ping(str(i).encode())
                await peer.flush()
                await trio.sleep(0)
            while len(pongs) < n_pings:
                frame = await peer.next_frame()
                if frame.opcode is Opcode.PONG:
                    pongs.append(frame.data)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(server)
            while len(got) < n_msgs:
                with trio.move_on_after(rng.choice([0, 0, 1e-6, 1e-5, 1e-4, 1e-3])):
                    got += await conn.receive_batch()
        assert got == [str(i) for i in range(n_msgs)]
        assert len(pongs) == n_pings and not conn.closed
        await close(conn, peer)


async def test_cancelled_send_sends_nothing_and_keeps_the_connection(autojump_clock):
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, max_outgoing_per_s=5)
        peer = await peers.receive()
        await conn.send_text("first")
        with trio.move_on_after(0.1):  # the next slot is 0.2 s away
            await conn.send_text("never")
        assert not conn.closed
        await conn.send_text("second")
        assert (await peer.next_frame()).data == b"first"
        assert (await peer.next_frame()).data == b"second"
        await close(conn, peer)


async def test_write_stalled_by_a_peer_that_stopped_reading_closes_the_connection(autojump_clock):
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        await peers.receive()  # ...and never read from it
        t0 = trio.current_time()
        with pytest.raises(ConnectionClosed) as info:
            await conn.send_text("x" * 32 * 2**20)  # more than both kernel buffers hold
        assert "stalled" in info.value.reason and trio.current_time() - t0 >= 2
        assert conn.closed and socket_closed(conn)


async def test_aclose_in_a_cancelled_scope_still_closes_the_socket():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        with trio.CancelScope() as scope:
            scope.cancel()
            await conn.aclose()
        assert socket_closed(conn) and conn.closed
        await peer.wait_eof()


async def test_cancelling_the_owner_task_closes_the_socket():
    async with ws_server() as (url, peers):
        async with trio.open_nursery() as nursery:

            async def feed():
                async with await connect_ws(url) as conn:
                    while True:
                        await conn.receive_batch()

            nursery.start_soon(feed)
            peer = await peers.receive()
            await peer.send("a")
            await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        with trio.fail_after(2):
            await peer.wait_eof()


async def test_cancelled_connect_closes_the_socket():
    async with ws_server(handshake=False) as (url, peers):
        with trio.move_on_after(0.2) as scope:
            await connect_ws(url)
        assert scope.cancelled_caught
        peer = await peers.receive()
        with trio.fail_after(2):
            await peer.wait_eof()


async def test_second_concurrent_receiver_is_refused():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url)
        peer = await peers.receive()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.receive_batch)
            await trio.sleep(0.01)
            with pytest.raises(trio.BusyResourceError):
                await conn.receive_batch()
            nursery.cancel_scope.cancel()
        await close(conn, peer)


# --- handshake ---------------------------------------------------------------------------------


async def test_extra_headers_and_user_agent():
    async with ws_server() as (url, peers):
        conn = await connect_ws(url, extra_headers=[("X-MBX-APIKEY", "k")])
        peer = await peers.receive()
        assert peer.request.headers["X-MBX-APIKEY"] == "k"
        assert peer.request.headers["User-Agent"].startswith("ingestd/")
        await close(conn, peer)


async def test_http_rejection_reports_status():
    stats = ConnectionStats("c1")
    async with ws_server(handshake=False) as (url, peers):
        async with trio.open_nursery() as nursery:

            async def reject():
                peer = await peers.receive()
                await peer.read_request()
                peer.proto.send_response(peer.proto.reject(429, "Too many requests\n"))
                await peer.flush()

            nursery.start_soon(reject)
            with pytest.raises(HandshakeError) as info:
                await connect_ws(url, stats=stats)
        assert info.value.status == 429 and info.value.code == 1006
        assert isinstance(info.value, ConnectionClosed)
        assert "429" in stats.last_error and stats.state == "closed"


async def test_connection_refused_and_bad_url():
    with trio.socket.socket() as s:  # a port with nobody listening
        await s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HandshakeError) as info:
        await connect_ws(f"ws://127.0.0.1:{port}/")
    assert info.value.status is None and isinstance(info.value.__cause__, OSError)
    with pytest.raises(ValueError):
        await connect_ws("http://example.com/")


# --- stats -------------------------------------------------------------------------------------


async def test_stats_lifecycle():
    stats = ConnectionStats("binance-0")
    async with ws_server(handshake=False) as (url, peers):
        async with trio.open_nursery() as nursery:
            seen = {}

            async def accept():
                peer = await peers.receive()
                await peer.read_request()
                seen["state_during_handshake"] = stats.state
                peer.proto.send_response(peer.proto.accept(peer.request))
                await peer.flush()
                seen["peer"] = peer

            nursery.start_soon(accept)
            conn = await connect_ws(url, stats=stats)
        peer = seen["peer"]
        assert seen["state_during_handshake"] == "connecting"
        assert stats.state == "up" and stats.connects == 1 and stats.url == url
        assert stats.connected_since_us > 0
        bytes_after_handshake = stats.bytes
        await peer.send("a" * 10, "b" * 20, b"c" * 30)
        got = await receive_n(conn, 3)
        assert len(got) == 3 and stats.messages == 3
        assert stats.bytes - bytes_after_handshake == 3 * 2 + 60  # wire bytes: 2-byte headers
        assert stats.last_message_us >= stats.connected_since_us
        await close(conn, peer)
        assert stats.state == "closed"

        # A reconnect with the same stats object accumulates.
        accepted: list[Peer] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(partial(_accept, peers, into=accepted))
            conn = await connect_ws(url, stats=stats)
        assert stats.state == "up" and stats.connects == 2
        await close(conn, accepted[0])


# --- TLS ---------------------------------------------------------------------------------------


async def test_wss_with_trustme_ca():
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async with ws_server(ssl_context=server_ctx) as (url, peers):
        assert url.startswith("wss://")
        conn = await connect_ws(url, ssl_context=client_ctx)
        peer = await peers.receive()
        await peer.send(*[f"m{i}" for i in range(100)])
        assert await receive_n(conn, 100) == [f"m{i}" for i in range(100)]
        peer.proto.send_ping(b"tls")
        await peer.flush()
        await peer.send("x")
        assert await conn.receive_batch() == ["x"]
        assert (await until_pong(peer)).data == b"tls"
        await conn.send_text("hi")
        frame = await peer.next_frame()
        assert frame.data == b"hi"
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer.wait_eof)
            await conn.aclose()
        assert peer.proto.close_rcvd.code == 1000

        # A client that doesn't trust the CA refuses the server.
        with pytest.raises(HandshakeError) as info:
            await connect_ws(url, ssl_context=ssl.create_default_context())
        assert "certificate" in info.value.reason.lower()
