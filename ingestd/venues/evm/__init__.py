"""ERC-20 Transfer logs over Ethereum JSON-RPC (ingestd@evm)."""
