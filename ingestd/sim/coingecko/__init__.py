"""Loopback simulator of the CoinGecko API (`python -m ingestd.sim.coingecko`)."""
