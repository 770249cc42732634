"""A small HTTP/1.1 server for the polling venues' simulators (GraphQL, REST): h11 on Trio.

Unlike rest_server.py (the Binance REST API, GET only), a handler here sees the request body, and
may answer `DROP` to cut the TCP connection without a response (the "connection drop" fault).
`drop_all()` cuts every open connection (the /_sim/drop control endpoint).
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

import h11
import trio

from ingestd.sim.rest_server import SERVER_HEADER

MAX_READ = 64 * 1024
MAX_BODY = 1 << 20

log = logging.getLogger(__name__)


@dataclass
class HttpRequest:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, str]:
        """Query parameters, the last value of each."""
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.target).query, keep_blank_values=True).items()}


@dataclass
class HttpResponse:
    status: int
    body: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def json(cls, body: bytes, status: int = 200, headers: list[tuple[str, str]] | None = None) -> HttpResponse:
        return cls(status, body, [("Content-Type", "application/json"), *(headers or [])])


DROP = object()  # a handler's answer meaning: close the connection without responding

# The connection whose request is being handled (each Trio task has its own context), so that
# /_sim/drop can answer on its own connection while cutting all the others.
_current_stream: contextvars.ContextVar[trio.SocketStream | None] = contextvars.ContextVar("stream", default=None)

Handler = Callable[[HttpRequest], Awaitable["HttpResponse | object"]]


class HttpServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self._streams: set[trio.SocketStream] = set()
        self.connections = 0

    async def serve(self, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        await trio.serve_tcp(self._connection, port, host=host, task_status=task_status)

    def drop_all(self) -> int:
        """Cut every other open connection now, without a response."""
        n = 0
        for stream in list(self._streams):
            if stream is _current_stream.get():
                continue
            try:
                stream.socket.close()
                n += 1
            except OSError:
                pass
        return n

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self._streams.add(stream)
        _current_stream.set(stream)
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_BODY)
        try:
            while True:
                request = await _read_request(conn, stream)
                if request is None:
                    return
                answer = await self.handler(request)
                if answer is DROP:
                    return
                assert isinstance(answer, HttpResponse)
                await _send(conn, stream, answer)
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
        except h11.RemoteProtocolError as exc:
            if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                body = f'{{"error":"bad HTTP request: {exc}"}}'.encode()
                await _send(conn, stream, HttpResponse(exc.error_status_hint, body, [("Connection", "close")]))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:
            log.exception("HTTP connection crashed")
        finally:
            self._streams.discard(stream)
            await trio.aclose_forcefully(stream)


async def _next_event(conn: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        conn.receive_data(await stream.receive_some(MAX_READ))


async def _read_request(conn: h11.Connection, stream: trio.SocketStream) -> HttpRequest | None:
    event = await _next_event(conn, stream)
    if not isinstance(event, h11.Request):
        return None
    body = bytearray()
    while True:
        part = await _next_event(conn, stream)
        if isinstance(part, h11.Data):
            body += part.data
            if len(body) > MAX_BODY:
                raise h11.RemoteProtocolError("request body too large", error_status_hint=413)
        elif isinstance(part, h11.EndOfMessage):
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
            return HttpRequest(event.method.decode(), event.target.decode("latin-1"), headers, bytes(body))
        else:
            return None


async def _send(conn: h11.Connection, stream: trio.SocketStream, response: HttpResponse) -> None:
    headers = [SERVER_HEADER, *response.headers, ("Content-Length", str(len(response.body)))]
    data = conn.send(h11.Response(status_code=response.status, headers=headers))
    data += conn.send(h11.Data(data=response.body))
    data += conn.send(h11.EndOfMessage())
    await stream.send_all(data)


# --- shared by the polling simulators: fault dice, ports file, the process around a server -------

FAULTS = ("error", "rate_limit", "malformed", "drop")


class FaultDice:
    """Decides, per request, whether to answer with a fault instead of the real response. Seeded,
    so a run is repeatable; `calm()` stops every fault for the rest of the run."""

    def __init__(self, seed: int, **rates: float) -> None:
        unknown = set(rates) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}")
        self.rates = {name: rates.get(name, 0.0) for name in FAULTS}
        self._rng = random.Random(f"{seed}:faults")
        self.on = True
        self.counts = {name: 0 for name in FAULTS}

    def roll(self) -> str | None:
        if not self.on:
            return None
        x = self._rng.random()
        for name in FAULTS:
            x -= self.rates[name]
            if x < 0:
                self.counts[name] += 1
                return name
        return None

    def calm(self) -> None:
        self.on = False


def write_ports_file(path: str | None, info: dict) -> None:
    """Atomically, so a reader polling for the file never sees half of it."""
    if not path:
        return
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({**info, "pid": os.getpid()}, f)
    os.replace(tmp, path)
