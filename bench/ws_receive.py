"""Receive + decode throughput of ingestd.transport.ws over loopback.

A server process (plain blocking sockets + the `websockets` sans-I/O ServerProtocol for the
handshake) blasts pre-framed Binance combined-stream trade messages as fast as the kernel takes
them, then sends a close frame. The client receives with `connect_ws()/receive_batch()` and
decodes every message with msgspec.json, typed (what a feed does) or to dicts.

    .venv/bin/python bench/ws_receive.py                    # 2,000,000 messages, typed decode
    .venv/bin/python bench/ws_receive.py --decode dict -n 1000000
    .venv/bin/python bench/ws_receive.py --tls              # wss:// (needs trustme)

The server runs in its own process so the two sides don't share an interpreter; on a 2-core box
each gets a core, as in production where the sender is the exchange.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import msgspec  # noqa: E402
import trio  # noqa: E402
from websockets.frames import Frame, Opcode  # noqa: E402
from websockets.server import ServerProtocol  # noqa: E402

from ingestd.stats import ConnectionStats  # noqa: E402
from ingestd.transport import ws  # noqa: E402
from ingestd.transport.ws import ConnectionClosed, connect_ws  # noqa: E402


class Trade(msgspec.Struct):
    e: str
    E: int
    s: str
    t: int
    p: str
    q: str
    T: int
    m: bool
    M: bool


class Envelope(msgspec.Struct):
    stream: str
    data: Trade


def make_blob(n_distinct: int) -> tuple[bytes, int]:
    """n_distinct server-side (unmasked) text frames, concatenated; returns (blob, payload bytes)."""
    parts = []
    payload = 0
    for i in range(n_distinct):
        t = 1633998523963 + i
        msg = (
            '{"stream":"btcusdt@trade","data":{"e":"trade","E":%d,"s":"BTCUSDT","t":%d,'
            '"p":"%d.%08d","q":"%d.00000000","T":%d,"m":%s,"M":true}}'
            % (t, 12345 + i, 60000 + i % 500, i * 7919 % 10**8, 1 + i % 97, t, "true" if i % 2 else "false")
        ).encode()
        payload += len(msg)
        parts.append(Frame(Opcode.TEXT, msg).serialize(mask=False))
    return b"".join(parts), payload


def server_main(port_q: mp.Queue, total: int, n_distinct: int, tls_files: tuple[str, str] | None) -> None:
    blob, _ = make_blob(n_distinct)
    lsock = socket.create_server(("127.0.0.1", 0))
    port_q.put(lsock.getsockname()[1])
    sock, _ = lsock.accept()
    if tls_files is not None:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*tls_files)
        sock = ctx.wrap_socket(sock, server_side=True)
    proto = ServerProtocol()
    while True:
        proto.receive_data(sock.recv(65536))
        events = proto.events_received()
        if events:
            break
    proto.send_response(proto.accept(events[0]))
    sock.sendall(b"".join(proto.data_to_send()))
    sent = 0
    view = memoryview(blob)
    while sent + n_distinct <= total:
        sock.sendall(view)
        sent += n_distinct
    proto.send_close(1000, "done")
    sock.sendall(b"".join(proto.data_to_send()))
    # Wait for the client's close echo, then close TCP (the server's job in RFC 6455).
    sock.settimeout(5)
    try:
        while sock.recv(65536):
            pass
    except OSError:
        pass
    sock.close()


async def client_main(url: str, decode: str, ssl_context) -> tuple[int, int, float, ConnectionStats]:
    stats = ConnectionStats("bench")
    dec = msgspec.json.Decoder(Envelope) if decode == "struct" else msgspec.json.Decoder()
    n = 0
    batches = 0
    conn = await connect_ws(url, stats=stats, ssl_context=ssl_context, idle_timeout=10)
    t0 = None
    async with conn:
        try:
            while True:
                batch = await conn.receive_batch()
                if t0 is None:
                    t0 = time.perf_counter()
                batches += 1
                if decode == "none":
                    n += len(batch)
                    continue
                decode_one = dec.decode
                for msg in batch:
                    decode_one(msg)
                n += len(batch)
        except ConnectionClosed as exc:
            if exc.code != 1000:
                raise
    return n, batches, time.perf_counter() - t0, stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", "--messages", type=int, default=2_000_000)
    ap.add_argument("--decode", choices=["struct", "dict", "none"], default="struct")
    ap.add_argument("--read-size", type=int, default=ws.READ_SIZE)
    ap.add_argument("--tls", action="store_true")
    args = ap.parse_args()
    ws.READ_SIZE = args.read_size

    n_distinct = 1000
    _, payload = make_blob(n_distinct)
    ssl_context = tls_files = None
    if args.tls:
        import tempfile

        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        d = tempfile.mkdtemp()
        cert_path, key_path = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        cert.cert_chain_pems[0].write_to_path(cert_path)
        cert.private_key_pem.write_to_path(key_path)
        tls_files = (cert_path, key_path)
        import ssl

        ssl_context = ssl.create_default_context()
        ca.configure_trust(ssl_context)

    port_q: mp.Queue = mp.Queue()
    srv = mp.Process(target=server_main, args=(port_q, args.messages, n_distinct, tls_files), daemon=True)
    srv.start()
    port = port_q.get(timeout=10)
    scheme = "wss" if args.tls else "ws"
    n, batches, dt, stats = trio.run(client_main, f"{scheme}://127.0.0.1:{port}/stream", args.decode, ssl_context)
    srv.join(10)
    print(
        f"{n} msgs ({payload / n_distinct:.0f} B payload each) in {dt:.3f} s: {n / dt:,.0f} msg/s "
        f"receive+decode[{args.decode}]{' over TLS' if args.tls else ''}; "
        f"{batches} batches, {n / batches:.0f} msgs/batch, read size {ws.READ_SIZE}; "
        f"stats messages={stats.messages} bytes={stats.bytes} state={stats.state}"
    )


if __name__ == "__main__":
    main()
