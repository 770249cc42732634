"""ingestd: a market-data ingestion daemon (Trio, sans-I/O venue protocols, idempotent sinks)."""

__version__ = "0.1.0"
