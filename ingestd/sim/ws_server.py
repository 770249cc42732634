"""The simulated Binance market-data WebSocket server: accept TCP connections on Trio and run one
WsSession (websockets' sans-I/O ServerProtocol plus Binance's rules) per connection."""

from __future__ import annotations

import itertools
import logging
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

    async def handle(stream: trio.SocketStream) -> None:
        try:
            await WsSession(sim, stream, next(session_ids)).run()
        except Exception:
            # One broken connection must not take the simulator (and every test using it) down.
            log.exception("WebSocket connection crashed")

    await trio.serve_tcp(handle, sim.config.ws_port, host=sim.config.host, task_status=task_status)
