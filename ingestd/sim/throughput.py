"""Measure how fast blast mode delivers trades to one connection.

    python -m ingestd.sim.throughput                      # 1,000,000 trades, bare consumer
    python -m ingestd.sim.throughput -n 500000 --consumer decode

The simulator runs in its own process (as `python -m ingestd.sim --blast-trades N`), so sender and
receiver do not share an interpreter. The consumer here is a blocking socket:

- `bare` only counts messages in the received bytes (C-speed `bytes.count`), so the figure is what
  the simulator can push, i.e. the ceiling any real consumer could reach.
- `decode` also parses every frame with websockets' sans-I/O protocol and decodes every message with
  msgspec, roughly what a feed does per message.

It prints messages/s, MB/s, and the age of the last message's `E` on arrival (send-time stamping).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
from websockets.client import ClientProtocol
from websockets.frames import Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

MESSAGE_END = b'"M":true}'


def start_simulator(trades: int, symbols: int, ports_file: Path) -> subprocess.Popen:
    command = [
        sys.executable, "-m", "ingestd.sim", "--blast-trades", str(trades), "--symbols", str(symbols),
        "--rate", "0", "--ports-file", str(ports_file), "--log-level", "WARNING",
    ]  # fmt: skip
    return subprocess.Popen(command)


def wait_for_ports(ports_file: Path, process: subprocess.Popen, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while not ports_file.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("the simulator did not start")
        time.sleep(0.05)
    return json.loads(ports_file.read_text())


def open_websocket(url: str) -> tuple[socket.socket, ClientProtocol, bytes]:
    uri = parse_uri(url)
    protocol = ClientProtocol(uri, max_size=None)
    sock = socket.create_connection((uri.host, uri.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    protocol.send_request(protocol.connect())
    sock.sendall(b"".join(protocol.data_to_send()))
    while True:
        protocol.receive_data(sock.recv(65536))
        events = protocol.events_received()
        if events and isinstance(events[0], Response):
            if events[0].status_code != 101:
                raise RuntimeError(f"handshake refused: {events[0].status_code}")
            # Frames that arrived with the handshake response are already parsed into events.
            leftover = b"".join(e.data for e in events[1:] if getattr(e, "opcode", None) is Opcode.TEXT)
            return sock, protocol, leftover


def consume_bare(sock: socket.socket, expected: int, already: bytes) -> tuple[int, int, bytes]:
    """Count messages by their closing bytes; a marker split across two reads is counted once."""
    count, total, tail = already.count(MESSAGE_END), len(already), b""
    last = already
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    while count < expected:
        size = sock.recv_into(buffer)
        if not size:
            break
        chunk = bytes(view[:size])
        joined = tail + chunk
        count += joined.count(MESSAGE_END) - tail.count(MESSAGE_END)
        tail = joined[-(len(MESSAGE_END) - 1) :]
        total += size
        last = joined
    return count, total, last


def consume_decoded(
    sock: socket.socket, protocol: ClientProtocol, expected: int, already: bytes
) -> tuple[int, int, bytes]:
    decode = msgspec.json.decode
    count, total, last = 0, len(already), already
    if already:
        decode(already)
        count += 1
    while count < expected:
        data = sock.recv(1 << 20)
        if not data:
            break
        total += len(data)
        protocol.receive_data(data)
        for event in protocol.events_received():
            if event.opcode is Opcode.TEXT:
                decode(event.data)
                last = event.data
                count += 1
    return count, total, last


def last_event_time(data: bytes) -> int | None:
    start = data.rfind(b'"E":')
    if start < 0 or len(data) < start + 17:
        return None
    return int(data[start + 4 : start + 17])


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m ingestd.sim.throughput", description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--trades", type=int, default=1_000_000, help="trades to blast (default: %(default)s)")
    parser.add_argument("--symbols", type=int, default=5, help="symbols to spread them over (default: %(default)s)")
    parser.add_argument(
        "--consumer", choices=("bare", "decode"), default="bare", help="what the receiving side does (default: bare)"
    )
    parser.add_argument("--raw", action="store_true", help="use /ws/<stream> instead of a combined stream")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        ports_file = Path(tmp) / "ports.json"
        started = time.monotonic()
        process = start_simulator(args.trades, args.symbols, ports_file)
        try:
            ports = wait_for_ports(ports_file, process)
            print(f"simulator ready in {time.monotonic() - started:.1f} s (pid {ports['pid']})", file=sys.stderr)
            from ingestd.sim.instruments import default_symbols

            streams = [f"{symbol.lower()}@trade" for symbol in default_symbols(args.symbols)]
            path = f"/ws/{streams[0]}" if args.raw and args.symbols == 1 else "/stream?streams=" + "/".join(streams)
            sock, protocol, leftover = open_websocket(ports["ws_url"] + path)
            begin = time.perf_counter()
            if args.consumer == "bare":
                count, total, last = consume_bare(sock, args.trades, leftover)
            else:
                count, total, last = consume_decoded(sock, protocol, args.trades, leftover)
            elapsed = time.perf_counter() - begin
            arrival_ms = time.time() * 1000
            sock.close()
        finally:
            process.terminate()
            process.wait(10)
    stamped = last_event_time(last)
    age = f"{arrival_ms - stamped:.1f} ms" if stamped else "n/a"
    print(
        f"{count} messages in {elapsed:.3f} s: {count / elapsed:,.0f} msgs/s, {total / elapsed / 1e6:,.1f} MB/s "
        f"(consumer={args.consumer}, cpus={os.cpu_count()}); last message's E was {age} old on arrival"
    )
    return 0 if count >= args.trades else 1


if __name__ == "__main__":
    raise SystemExit(main())
