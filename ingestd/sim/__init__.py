"""Loopback Binance Spot venue simulator: real WebSocket and REST wire protocols on 127.0.0.1, a
deterministic market model with ground truth, and fault injection for testing the ingestion daemon.

In-process (tests):

    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, SimConfig(symbols=3, rate=500, drop_rate=0.01))
        sim.ws_url     # "ws://127.0.0.1:PORT": /ws/<stream> or /stream?streams=a/b
        sim.rest_url   # "http://127.0.0.1:PORT": /api/v3/..., plus /_sim/ controls
        sim.truth()    # every trade id made, per symbol; sim.pause() / sim.resume(); sim.stats()
        nursery.cancel_scope.cancel()

As a process: `ingestd sim --help` or `python -m ingestd.sim --help` (`--ports-file` reports the URLs).

Modules: market (the model, sans-I/O) with order_book, trade_log, instruments, fixed_point;
depth_coalescer, stream_names, ws_control, ws_frames, malformed, sliding_window, request_weight
(sans-I/O protocol pieces); fanout, live_events, blast (event delivery); ws_base (the WebSocket
session every venue simulator builds on), ws_session, ws_server, rest_api, rest_server (the
servers); server (Simulator, serve); cli; throughput (blast benchmark). The other venues'
simulators are the subpackages bybit, polymarket, evm, thegraph and coingecko.
"""

from ingestd.sim.config import SimConfig
from ingestd.sim.market import Market, MarketEvent
from ingestd.sim.server import Simulator, serve

__all__ = ["Market", "MarketEvent", "SimConfig", "Simulator", "serve"]
