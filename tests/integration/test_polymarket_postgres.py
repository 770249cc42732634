"""The whales table in PostgreSQL (migration 0005): the store, `ingestd whales` against a postgres
sink, and a feed that reads its whales from the postgres sink it writes whale trades to."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import pytest
import trio

from ingestd.config import parse_config
from ingestd.pipeline import Router, SinkRunner
from ingestd.sim.polymarket.server import PolySimConfig, serve
from ingestd.sinks.postgres import PostgresSink
from ingestd.stats import StatsRegistry
from ingestd.venues.polymarket.feed import PolymarketFeed
from ingestd.venues.polymarket.whales import PostgresWhaleStore, Whale
from tests.harness import REPO
from tests.integration.test_postgres_sink import config
from tests.pg_server import Database, pg_database, pg_server  # noqa: F401  (fixtures)

A = "0x1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf"
B = "0x" + "b" * 40


def test_store_migrates_and_keeps_the_seed_fields(pg_database: Database):
    store = PostgresWhaleStore(config(pg_database))
    store.ensure_schema()
    store.ensure_schema()  # idempotent
    store.upsert([Whale(address=A, pseudonym="Theo", tier="MEGA", notes="n", cluster_name="c", is_famous=True,
                        estimated_pnl=4.8e7, primary_category="politics", win_rate=65.0, total_volume=2e6,
                        is_confirmed=True, is_copying_enabled=True), Whale(address=B)])
    a, b = store.load(enabled_only=False)
    assert (a.address, a.pseudonym, a.tier, a.notes, a.cluster_name, a.is_famous, a.estimated_pnl, a.primary_category,
            a.win_rate, a.total_volume, a.is_confirmed, a.is_copying_enabled) == (
        A, "Theo", "MEGA", "n", "c", True, 4.8e7, "politics", 65.0, 2e6, True, True)
    assert a.created_at.endswith("Z") and b.is_copying_enabled is False
    assert [w.address for w in store.load(enabled_only=True)] == [A]
    assert store.set_enabled([A, "0x" + "c" * 40], False) == [A]
    assert store.load(enabled_only=True) == []
    with pytest.raises(psycopg.errors.CheckViolation):
        store.upsert([Whale(address="0xABC")])


def test_cli_against_a_postgres_sink(pg_database: Database, tmp_path):
    path = tmp_path / "ingestd.toml"
    db = pg_database
    path.write_text(f'[sinks.pg]\ntype = "postgres"\nhost = "{db.host}"\nport = {db.port}\ndbname = "{db.dbname}"\n'
                    f'user = "{db.user}"\n[feeds.polymarket]\nsinks = ["pg"]\n')

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "ingestd", "--config", str(path), "whales", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "added" in cli("add", A, "--pseudonym", "Theo", "--enable")  # migrates an empty database first
    assert "1 whale watched in postgres:" in cli("list", "--enabled")
    cli("disable", A)
    with psycopg.connect(db.conninfo) as conn:
        assert conn.execute("SELECT pseudonym, is_copying_enabled FROM whales").fetchall() == [("Theo", False)]


@pytest.mark.trio
async def test_feed_reads_whales_from_its_postgres_sink_and_stores_their_trades(pg_database: Database):
    async with trio.open_nursery() as nursery:
        sim = await nursery.start(serve, PolySimConfig(seed=5, markets=2, whales=2, rate=40, whale_share=0.5))
        watched, other = (w.address for w in sim.market.whales)
        stats = StatsRegistry("polymarket")
        sink = PostgresSink("pg", config(pg_database), stats=stats)
        runner = SinkRunner(sink, stats, batch_size=500, linger_s=0.01)
        await nursery.start(runner.run)  # migrates, so the whales table exists
        store = PostgresWhaleStore(config(pg_database))
        await trio.to_thread.run_sync(store.upsert, [Whale(address=watched, pseudonym="Watched",
                                                           is_copying_enabled=True), Whale(address=other)])
        cfg = parse_config(
            f'[sinks.pg]\ntype = "postgres"\n[feeds.polymarket]\nsinks = ["pg"]\nws_url = "{sim.ws_url}"\n'
            f'data_api_url = "{sim.http_url}"\npoll_interval_s = 0.3\nwhales_reload_s = 1\n', environ={},
        ).feeds["polymarket"]
        feed = PolymarketFeed(cfg, Router([runner]), stats)
        assert isinstance(feed.store, PostgresWhaleStore)
        await nursery.start(feed.run)

        def stored():
            with psycopg.connect(pg_database.conninfo) as conn:
                return conn.execute("SELECT trader_address, pseudonym, count(*) FROM whale_trades"
                                    " GROUP BY 1, 2 ORDER BY 1").fetchall()

        with trio.fail_after(20):
            while not await trio.to_thread.run_sync(stored):
                await trio.sleep(0.2)
        assert [row[:2] for row in await trio.to_thread.run_sync(stored)] == [(watched, "Watched")]
        await trio.to_thread.run_sync(store.set_enabled, [other], True)  # picked up by the next reload
        with trio.fail_after(20):
            while len(await trio.to_thread.run_sync(stored)) < 2:
                await trio.sleep(0.2)
        assert stats.gauges["polymarket.active_whale_subscriptions"] == 2
        nursery.cancel_scope.cancel()
