"""Loopback Binance Spot venue simulator: real WebSocket and REST wire protocols, a deterministic
market model with ground truth, and fault injection for testing the ingestion daemon."""

from ingestd.sim.config import SimConfig
from ingestd.sim.market import Market, MarketEvent
from ingestd.sim.server import Simulator, serve

__all__ = ["Market", "MarketEvent", "SimConfig", "Simulator", "serve"]
