"""The simulated Binance market-data WebSocket server: accept TCP connections on Trio and run one
WsSession (websockets' sans-I/O ServerProtocol plus Binance's rules) per connection."""

from __future__ import annotations

import itertools
import logging
import ssl
from typing import TYPE_CHECKING

import trio

from ingestd.sim.ws_session import WsSession

if TYPE_CHECKING:
    from ingestd.sim.server import Simulator

log = logging.getLogger(__name__)


async def serve_websocket(
    sim: Simulator, *, task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED
) -> None:
    """Listen on config.host:config.ws_port; reports the listeners once bound, then runs until cancelled."""
    session_ids = itertools.count(1)  # numbered in accept order, which seeds each one's drop RNG

    async def handle(stream: trio.abc.Stream) -> None:
        try:
            await WsSession(sim, stream, next(session_ids)).run()
        except Exception:
            # One broken connection must not take the simulator (and every test using it) down.
            log.exception("WebSocket connection crashed")

    config = sim.config
    listeners = await trio.open_tcp_listeners(config.ws_port, host=config.host)
    if config.tls_cert is None:
        await trio.serve_listeners(handle, listeners, task_status=task_status)
        return
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert, config.tls_key)
    secure = [trio.SSLListener(listener, context, https_compatible=True) for listener in listeners]
    # The TCP listeners are reported, since they carry the address; the scheme says wss.
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, secure)
        task_status.started(listeners)
