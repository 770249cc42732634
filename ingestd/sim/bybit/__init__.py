"""Loopback Bybit v5 simulator: the public linear WebSocket (tickers, publicTrade) and the market
REST endpoints, with a deterministic market, ground truth and fault knobs.

Modules: market (the model, sans-I/O), session (one WebSocket client), server (fan-out, REST,
/_sim/* control), __main__ (`python -m ingestd.sim.bybit --help`).
"""
