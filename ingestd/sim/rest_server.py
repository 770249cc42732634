"""HTTP/1.1 server for the simulated REST API: h11 (sans-I/O) on Trio, keep-alive supported.

The API logic lives in rest_api.RestApi; this module only moves bytes and applies `slow_ms`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import h11
import trio

from ingestd.sim.rest_api import RestApi, RestResponse

if TYPE_CHECKING:
    from ingestd.sim.server import Simulator

MAX_READ = 64 * 1024
SERVER_HEADER = ("Server", "ingestd-sim")

log = logging.getLogger(__name__)


async def serve_rest(
    sim: Simulator, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on config.host:config.rest_port; reports the listeners once bound, then runs until cancelled."""

    async def handle(stream: trio.SocketStream) -> None:
        sim.counters.rest_connections += 1
        try:
            await serve_rest_connection(stream, sim.rest_api, sim.config.slow_ms)
        except Exception:
            log.exception("REST connection crashed")

    await trio.serve_tcp(handle, sim.config.rest_port, host=sim.config.host, task_status=task_status)


async def serve_rest_connection(stream: trio.SocketStream, api: RestApi, slow_ms: float) -> None:
    connection = h11.Connection(h11.SERVER)
    try:
        while True:
            request = await _next_request(connection, stream)
            if request is None:
                return
            response = api.handle(request.method.decode(), request.target.decode("latin-1"), time.time())
            if slow_ms:
                await trio.sleep(slow_ms / 1000)
            await _send(connection, stream, response)
            if connection.our_state is h11.MUST_CLOSE:
                return
            connection.start_next_cycle()
    except h11.RemoteProtocolError as exc:
        if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = f'{{"code":-1000,"msg":"Bad HTTP request: {exc}"}}'.encode()
            await _send(connection, stream, RestResponse(exc.error_status_hint, body, [("Connection", "close")]))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _next_event(connection: h11.Connection, stream: trio.SocketStream) -> object:
    while True:
        event = connection.next_event()
        if event is not h11.NEED_DATA:
            return event
        connection.receive_data(await stream.receive_some(MAX_READ))


async def _next_request(connection: h11.Connection, stream: trio.SocketStream) -> h11.Request | None:
    """The next complete request (its body read and ignored), or None when the client closed."""
    event = await _next_event(connection, stream)
    if not isinstance(event, h11.Request):
        return None
    while True:
        body_event = await _next_event(connection, stream)
        if isinstance(body_event, h11.EndOfMessage):
            return event
        if isinstance(body_event, h11.ConnectionClosed):
            return None


async def _send(connection: h11.Connection, stream: trio.SocketStream, response: RestResponse) -> None:
    headers = [SERVER_HEADER, *response.headers, ("Content-Length", str(len(response.body)))]
    data = connection.send(h11.Response(status_code=response.status, headers=headers))
    data += connection.send(h11.Data(data=response.body))
    data += connection.send(h11.EndOfMessage())
    await stream.send_all(data)
