"""Simulated Ethereum JSON-RPC node for the EVM feed (`python -m ingestd.sim.evm`)."""
