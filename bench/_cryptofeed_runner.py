"""Run the peer, cryptofeed 2.4, against the loopback simulator: Binance trades into one backend.

Runs with cryptofeed's own interpreter (its venv, made by bench/vs_cryptofeed.py), never ingestd's:

    <venv>/bin/python bench/_cryptofeed_runner.py --ws ws://127.0.0.1:P --rest http://127.0.0.1:Q \
        --symbols BTCUSDT,ETHUSDT --backend redis --redis redis://127.0.0.1:6379
    ... --backend postgres --pg-host 127.0.0.1 --pg-port 5432 --pg-db bench --pg-user postgres

Stock cryptofeed except for the two endpoint lists, which point the stock Binance class at the
simulator (cryptofeed hard-codes api.binance.com): its symbol loading (exchangeInfo), connection
splitting, parsing and backends are exactly what its users run. Its stock backends: `TradeStream`
(XADD per trade into `trades-BINANCE-<SYMBOL>`, pipelined per batch) and `TradePostgres` (one
multi-row INSERT per batch into its documented `trades` table).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from cryptofeed import FeedHandler
from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
from cryptofeed.defines import TRADES
from cryptofeed.exchanges import Binance

CRYPTOFEED_PG_TABLE = """
CREATE TABLE IF NOT EXISTS trades (
    id serial PRIMARY KEY, timestamp TIMESTAMP, receipt_timestamp TIMESTAMP, exchange VARCHAR(32),
    symbol VARCHAR(32), side VARCHAR(8), amount NUMERIC(64, 32), price NUMERIC(64, 32),
    trade_id VARCHAR(64), order_type VARCHAR(32))
"""


def simulated_binance(ws_url: str, rest_url: str) -> type:
    return type("SimulatedBinance", (Binance,), {
        "websocket_endpoints": [WebsocketEndpoint(ws_url)],
        "rest_endpoints": [RestEndpoint(rest_url, routes=Routes(
            "/api/v3/exchangeInfo", l2book="/api/v3/depth?symbol={}&limit={}"))],
    })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ws", required=True)
    parser.add_argument("--rest", required=True)
    parser.add_argument("--symbols", required=True, help="exchange symbols, comma-separated (BTCUSDT,...)")
    parser.add_argument("--backend", choices=["redis", "postgres"], required=True)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379")
    parser.add_argument("--pg-host", default="127.0.0.1")
    parser.add_argument("--pg-port", type=int, default=5432)
    parser.add_argument("--pg-db", default="postgres")
    parser.add_argument("--pg-user", default="postgres")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    feed_class = simulated_binance(args.ws, args.rest)
    by_exchange_symbol = {v: k for k, v in feed_class.symbol_mapping().items()}
    symbols = [by_exchange_symbol[s] for s in args.symbols.split(",")]
    if args.backend == "redis":
        from cryptofeed.backends.redis import TradeStream

        from urllib.parse import urlsplit

        url = urlsplit(args.redis)
        callback = TradeStream(host=url.hostname, port=url.port or 6379)
    else:
        import asyncpg
        from cryptofeed.backends.postgres import TradePostgres

        async def create_table() -> None:
            conn = await asyncpg.connect(host=args.pg_host, port=args.pg_port, database=args.pg_db, user=args.pg_user)
            await conn.execute(CRYPTOFEED_PG_TABLE)
            await conn.close()

        asyncio.run(create_table())
        callback = TradePostgres(host=args.pg_host, port=args.pg_port, db=args.pg_db, user=args.pg_user)
    handler = FeedHandler(config={"log": {"disabled": True}, "uvloop": True})
    handler.add_feed(feed_class(symbols=symbols, channels=[TRADES], callbacks={TRADES: callback}))
    # FeedHandler installs uvloop's policy, whose get_event_loop() no longer creates a loop on demand
    # (Python 3.12 semantics); cryptofeed 2.4 predates that, so give it one.
    asyncio.set_event_loop(asyncio.new_event_loop())
    handler.run()


if __name__ == "__main__":
    main()
