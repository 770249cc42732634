"""Loopback Polymarket simulator: the CLOB market channel WebSocket and the Data API on 127.0.0.1,
a deterministic market of binary outcome tokens traded by a crowd and a few whales, ground truth,
and faults. `python -m ingestd.sim.polymarket --help`.

Modules: market (the model, sans-I/O), ws (market channel sessions), http_api (Data API, CLOB
/book, /_sim controls), server (PolySim, serve), __main__ (the command line)."""
