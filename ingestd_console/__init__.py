"""ingestd-console: watch every ingestd instance's stats socket, live (Textual, asyncio)."""
