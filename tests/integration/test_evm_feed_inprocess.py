"""The EVM feed and the simulated node in one Trio loop, over real loopback HTTP and a real SQLite
file. Blocks come only when the test steps the chain and polls only when it triggers them, so each
case controls exactly what the feed sees: reorgs inside and below the window, removed logs,
pause/resume, a token without decimals(), a token list change."""

from __future__ import annotations

import logging
import sqlite3
from functools import partial

import pytest
import trio

from ingestd.config import parse_config
from ingestd.pipeline import Router, SinkRunner
from ingestd.sim.evm.chain import KNOWN_WALLETS, TOKENS
from ingestd.sim.evm.server import EvmSim, SimOptions
from ingestd.sinks.sqlite import SqliteSink
from ingestd.stats import StatsRegistry
from ingestd.venues.evm.feed import EvmFeed

pytestmark = pytest.mark.trio

FIRST = 5000
NO_CODE = "0x" + "12" * 20  # no contract there: decimals() answers "0x"


async def start_sim(nursery, sim_class=EvmSim, **options) -> tuple[EvmSim, str]:
    sim = sim_class(SimOptions(seed=11, first_block=FIRST, initial_blocks=30, block_interval_s=3600, tokens=3,
                               transfers_per_block=3.0, **options))
    listeners = await nursery.start(partial(sim.rpc_server.serve, "127.0.0.1", 0))
    return sim, f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}/v3/sim"


def feed_config(rpc_url: str, *, confirmations: int = 4, extra_tokens: str = "", **extra):
    tokens = ",\n".join(
        f'{{ address = "{t.address}", symbol = "{t.symbol}"' + (f", decimals = {t.decimals} }}" if i else " }")
        for i, t in enumerate(TOKENS[:3])
    )  # the first one's decimals come from eth_call decimals()
    labels = "\n".join(f'"{a}" = "{label}"' for a, label in list(KNOWN_WALLETS.items())[:2])
    lines = [
        "[feeds.evm]",
        f'rpc_url = "{rpc_url}"',
        f"confirmations = {confirmations}",
        "poll_interval_s = 3600",  # polls only when triggered (and once at start)
        f"start_block = {FIRST}",
        "max_block_range = 16",
        "retry_base_s = 0.02",
        "retry_cap_s = 0.2",
        f"tokens = [{tokens}{extra_tokens}]",
    ] + [f"{k} = {v}" for k, v in extra.items()] + ["[feeds.evm.labels]", labels]
    return parse_config("\n".join(lines), environ={}).feeds["evm"]


async def run_feed(nursery, tmp_path, cfg, resume=None):
    stats = StatsRegistry("test")
    sink = SqliteSink("local", tmp_path / "evm.sqlite", stats=stats)
    runner = SinkRunner(sink, stats, batch_size=500, linger_s=0.01)
    await nursery.start(runner.run)
    feed = EvmFeed(cfg, Router([runner]), stats, resume=resume)
    await nursery.start(feed.run)
    return feed, stats


def stored(tmp_path) -> dict:
    con = sqlite3.connect(tmp_path / "evm.sqlite")
    try:
        rows = con.execute("SELECT block_hash, log_index, block_number, token, from_addr, to_addr, amount, "
                           "from_tag, to_tag, ts, tx_hash FROM onchain_flows").fetchall()
        checkpoint = con.execute("SELECT trade_id FROM checkpoints WHERE venue = 'evm' AND symbol = 'ethereum'")
        return {"rows": rows, "checkpoint": (checkpoint.fetchone() or [None])[0]}
    finally:
        con.close()


def expected_rows(sim: EvmSim, last_block: int, tokens: set[str] | None = None) -> set:
    labels = dict(list(KNOWN_WALLETS.items())[:2])
    out = set()
    for t in sim.truth(None)["transfers"]:
        if t["block_number"] > last_block or (tokens is not None and t["token"] not in tokens):
            continue
        raw, d = int(t["amount_raw"]), t["decimals"]
        whole, frac = divmod(raw, 10**d)
        amount = str(whole) if not frac else f"{whole}.{str(frac).rjust(d, '0').rstrip('0')}"
        out.add((t["block_hash"], t["log_index"], t["block_number"], t["token"], t["from"], t["to"], amount,
                 labels.get(t["from"]), labels.get(t["to"]), t["timestamp"] * 1_000_000, t["tx_hash"]))
    return out


async def settle(feed) -> dict:
    """Trigger polls until one changes nothing (the sink has caught up too)."""
    with trio.fail_after(20):
        last = None
        while True:
            summary = await feed.trigger()
            key = (summary["finalized"], summary["window_blocks"], summary["records"])
            if key == last:
                await trio.sleep(0.1)  # linger_s: the runner writes its last batch
                return summary
            last = key


async def test_reorg_in_the_window_never_reaches_the_store(tmp_path):
    async with trio.open_nursery() as nursery:
        sim, url = await start_sim(nursery, max_logs=6)
        cfg = feed_config(url, extra_tokens=f',\n{{ address = "{NO_CODE}", symbol = "NOCODE" }}')
        feed, stats = await run_feed(nursery, tmp_path, cfg)
        summary = await settle(feed)
        head = sim.chain.head
        assert summary["finalized"] == head - 4 and summary["window_blocks"] == 4
        assert stats.counters["evm.tokens_unusable"] == 1  # NOCODE: no decimals(), not followed
        assert stats.counters["evm.logs.range_too_large"] > 0  # --max-logs 6 made it bisect
        served = {id(b) for b in sim.chain.blocks[-3:] if b.served}
        assert len(served) == 3  # the feed holds the three newest blocks in its window

        sim.chain.reorg(3)
        for _ in range(6):
            sim.step()
        await settle(feed)
        assert stats.counters["evm.reorgs"] == 1
        assert stats.counters["evm.reorged_transfers_dropped"] >= 0
        assert stats.gauges["evm.last_reorg_depth"] == 3
        final = sim.chain.head - 4
        got = stored(tmp_path)
        assert got["checkpoint"] == final
        assert set(got["rows"]) == expected_rows(sim, final)
        assert len(got["rows"]) == len(set(got["rows"]))
        abandoned = {(t["block_hash"], t["log_index"]) for t in sim.truth(None)["abandoned"]}
        assert abandoned and not abandoned & {r[:2] for r in got["rows"]}
        assert stats.connections["evm/ethereum"].state == "up"
        assert stats.connections["evm/ethereum"].url.startswith("http://127.0.0.1:")
        assert "/v3/sim" not in stats.connections["evm/ethereum"].url  # the path may hold an API key
        nursery.cancel_scope.cancel()


async def test_pause_resume_and_a_smaller_token_list(tmp_path):
    async with trio.open_nursery() as nursery:
        sim, url = await start_sim(nursery)
        feed, stats = await run_feed(nursery, tmp_path, feed_config(url))
        await settle(feed)
        feed.pause()
        assert await feed.trigger() == {"records": 0, "paused": True, "stopped": False}
        for _ in range(8):
            sim.step()
        await trio.sleep(0.2)
        assert stats.connections["evm/ethereum"].state == "paused"
        assert stats.gauges["evm.finalized_block"] == sim.chain.head - 8 - 4
        feed.resume()
        await settle(feed)
        assert stored(tmp_path)["checkpoint"] == sim.chain.head - 4
        before = sim.chain.head - 4

        usdc, usdt = TOKENS[0], TOKENS[1]
        assert await feed.update_symbols(["usdc", usdt.address]) == ([], ["WETH"])
        assert feed.symbols == ["USDC", "USDT"]
        for _ in range(12):
            sim.step()
        await settle(feed)
        final = sim.chain.head - 4
        rows = set(stored(tmp_path)["rows"])
        # The change applies from the next block read: blocks already in the window (up to the head
        # at the time) were read with WETH and keep it.
        read_with_weth = before + 4
        assert rows == expected_rows(sim, read_with_weth) | expected_rows(sim, final, {usdc.address, usdt.address})
        weth = TOKENS[2].address
        assert any(r[3] == weth for r in rows) and not any(r[3] == weth and r[2] > read_with_weth for r in rows)
        assert any(r[3] == weth for r in expected_rows(sim, final) if r[2] > read_with_weth)  # there were some
        nursery.cancel_scope.cancel()


class SelfContradictingSim(EvmSim):
    """A node that, once, marks a canonical log of the blocks asked for as removed (while serving
    that very block as canonical): the feed must refuse that read and read the blocks again."""

    contradict: int | None = None

    def _get_logs(self, flt):
        logs = super()._get_logs(flt)
        target = self.contradict
        if target is not None and int(flt["fromBlock"], 16) <= target <= int(flt["toBlock"], 16):
            canonical = next(log for log in self.chain.block(target).logs if log.transfer)
            logs.append(canonical.to_json(removed=True))
            self.contradict = None
        return logs


async def test_removed_logs_are_never_kept_and_a_contradiction_means_read_again(tmp_path):
    async with trio.open_nursery() as nursery:
        sim, url = await start_sim(nursery, SelfContradictingSim, removed_rate=1.0)
        feed, stats = await run_feed(nursery, tmp_path, feed_config(url, confirmations=6))
        await settle(feed)
        sim.chain.reorg(3)  # from now on every eth_getLogs over those blocks adds their old logs, removed
        for _ in range(4):
            sim.step()
        target = next(b.number for b in sim.chain.blocks[-4:] if any(log.transfer for log in b.logs))
        sim.contradict = target
        await settle(feed)
        assert sim.contradict is None  # it was served
        assert sim.removed_injected > 0 and stats.counters["evm.removed_logs"] > 1
        assert stats.counters["evm.inconsistent_reads"] >= 1
        for _ in range(8):
            sim.step()
        await settle(feed)
        final = sim.chain.head - 6
        rows = set(stored(tmp_path)["rows"])
        assert rows == expected_rows(sim, final)
        abandoned = {(t["block_hash"], t["log_index"]) for t in sim.truth(None)["abandoned"]}
        assert not abandoned & {r[:2] for r in rows}
        nursery.cancel_scope.cancel()


async def test_a_reorg_deeper_than_the_confirmations_is_reported(tmp_path, caplog):
    async with trio.open_nursery() as nursery:
        sim, url = await start_sim(nursery)
        feed, stats = await run_feed(nursery, tmp_path, feed_config(url, confirmations=2))
        await settle(feed)
        with caplog.at_level(logging.ERROR, logger="ingestd.evm"):
            sim.chain.reorg(4)  # two blocks already stored as final are replaced
            sim.step()
            await settle(feed)
        assert stats.counters["evm.deep_reorgs"] == 1
        assert "raise feeds.evm.confirmations" in caplog.text
        nursery.cancel_scope.cancel()


async def test_resume_starts_after_the_checkpoint(tmp_path):
    async with trio.open_nursery() as nursery:
        sim, url = await start_sim(nursery)
        feed, stats = await run_feed(nursery, tmp_path, feed_config(url), resume={"ethereum": FIRST + 20})
        await settle(feed)
        rows = stored(tmp_path)["rows"]
        assert rows and min(r[2] for r in rows) == min(t["block_number"] for t in sim.truth(None)["transfers"]
                                                       if t["block_number"] > FIRST + 20)
        assert set(rows) == expected_rows(sim, sim.chain.head - 4) - expected_rows(sim, FIRST + 20)
        nursery.cancel_scope.cancel()
