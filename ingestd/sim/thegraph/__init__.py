"""Loopback simulator of The Graph's gateway serving the Uniswap v3 subgraph (`python -m ingestd.sim.thegraph`)."""
