"""Acceptance: `ingestd run evm` against the simulated node (`python -m ingestd.sim.evm`), both real
processes, with reorgs of depth 3, provider log limits, 429s, malformed replies, node errors,
dropped connections and removed logs. The SQLite store must end holding exactly the canonical
chain's transfers up to the final block (head - confirmations) and nothing of an abandoned branch;
after kill -9 a restart resumes from the checkpoint without a gap or a duplicate."""

from __future__ import annotations

import json
import signal
import sqlite3
import time

import pytest

from tests.harness import start_daemon, start_venue_sim, stop_all_started, stop_process, wait_for, write_family_config

CONFIRMATIONS = 5
FIRST = 19_000_000
FAULTS = ["--rate-limit-rate", "0.04", "--retry-after", "1", "--malformed-rate", "0.05", "--error-rate", "0.03",
          "--drop-rate", "0.03", "--removed-rate", "0.3"]


@pytest.fixture(autouse=True)
def _cleanup():
    yield
    stop_all_started()


def write_config(tmp, sim, **overrides):
    urls = sim.urls
    feed = {
        "rpc_url": urls["rpc_url"],
        "chain": urls["chain"],
        "confirmations": CONFIRMATIONS,
        "poll_interval_s": 0.2,
        "start_block": urls["first_block"],
        "max_block_range": 64,
        "retry_base_s": 0.05,
        "retry_cap_s": 0.5,
        "max_retry_after_s": 1.0,
        "progress_interval_s": 0.5,
        **overrides,
    }
    path = write_family_config(tmp, "evm", feed)
    tokens = urls["tokens"]
    lines = []
    for i, token in enumerate(tokens):
        lines += ["[[feeds.evm.tokens]]", f'address = "{token["address"]}"', f'symbol = "{token["symbol"]}"']
        if i:  # the first token's decimals are read with eth_call decimals()
            lines.append(f'decimals = {token["decimals"]}')
    labels = list(urls["labels"].items())[:3]
    lines.append("[feeds.evm.labels]")
    lines += [f'"{address}" = "{label}"' for address, label in labels]
    path.write_text(path.read_text() + "\n".join(lines) + "\n")
    return path, dict(labels)


def stored(db) -> tuple[list[tuple], int | None]:
    if not db.exists():
        return [], None
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute("SELECT chain, block_number, block_hash, log_index, tx_hash, token, from_addr, to_addr, "
                           "amount, from_tag, to_tag, ts FROM onchain_flows").fetchall()
        found = con.execute("SELECT trade_id FROM checkpoints WHERE venue = 'evm' AND symbol = 'ethereum'").fetchone()
        return rows, (found[0] if found else None)
    except sqlite3.OperationalError:  # not created yet
        return [], None
    finally:
        con.close()


def checkpoint(db) -> int | None:
    return stored(db)[1]


def scaled(raw: str, decimals: int) -> str:
    whole, frac = divmod(int(raw), 10**decimals)
    return str(whole) if not frac else f"{whole}.{str(frac).rjust(decimals, '0').rstrip('0')}"


def expected_rows(truth: dict, labels: dict) -> set[tuple]:
    return {
        ("ethereum", t["block_number"], t["block_hash"], t["log_index"], t["tx_hash"], t["token"], t["from"], t["to"],
         scaled(t["amount_raw"], t["decimals"]), labels.get(t["from"]), labels.get(t["to"]), t["timestamp"] * 10**6)
        for t in truth["transfers"]
    }


def finish_and_compare(sim, daemon, labels) -> dict:
    """Calm the node, freeze the chain, let the feed finalize up to head - confirmations, stop it
    with SIGTERM and compare the store with the node's canonical chain."""
    sim.post("/_sim/calm")
    time.sleep(1.0)
    head = sim.post("/_sim/pause")["head"]
    final = head - CONFIRMATIONS
    wait_for(lambda: checkpoint(daemon.db) == final, 40, what=f"checkpoint {final} (log: {daemon.log_path})")
    assert stop_process(daemon.proc) == 0, daemon.log()
    truth = sim.get(f"/_sim/truth?confirmations={CONFIRMATIONS}")
    assert truth["last_block"] == final
    rows, last = stored(daemon.db)
    assert last == final
    assert len(rows) == len(set(rows)), "a transfer stored twice"
    expected = expected_rows(truth, labels)
    missing, extra = expected - set(rows), set(rows) - expected
    assert not missing and not extra, {"missing": sorted(missing)[:3], "extra": sorted(extra)[:3]}
    abandoned = {(t["block_hash"], t["log_index"]) for t in truth["abandoned"]}
    assert not abandoned & {(r[2], r[3]) for r in rows}, "a log of an abandoned branch was stored"
    assert any(r[9] or r[10] for r in rows), "no labelled address was ever involved"
    return truth


def test_store_holds_exactly_the_canonical_final_transfers_despite_reorgs_and_faults(tmp_path):
    sim = start_venue_sim(tmp_path, "evm", "--seed", "7", "--initial-blocks", "80", "--block-interval", "0.3",
                          "--tokens", "3", "--reorg-every", "5", "--reorg-depth", "3",
                          "--max-logs", "12", "--limit-style", "infura", *FAULTS)
    config, labels = write_config(tmp_path, sim)
    daemon = start_daemon(tmp_path, config, instance="evm")
    wait_for(lambda: (checkpoint(daemon.db) or 0) > FIRST + 80, 40, what="the feed past the initial blocks")
    for _ in range(2):
        time.sleep(2.0)
        sim.post("/_sim/drop")
    # Not vacuous: the feed read blocks that a reorg then replaced, and noticed (it lags the head
    # by a few blocks now and then on a busy machine, so wait for it rather than assume it).
    wait_for(lambda: "reorg: dropped the unfinalized blocks" in daemon.log(), 40, what="a reorg the feed noticed")
    wait_for(lambda: sim.get("/_sim/truth")["abandoned_served"] > 0, 40, what="an abandoned block served")
    # The removed-log injection is a coin toss per answer that spans an abandoned block: on a slow
    # run the feed can reach this point before one landed (CI saw removed_injected == 0).
    wait_for(lambda: sim.get("/_sim/truth")["removed_injected"] > 0, 60, what="removed logs injected")
    truth = finish_and_compare(sim, daemon, labels)
    assert truth["reorgs"] >= 1 and truth["range_errors"] > 0 and truth["removed_injected"] > 0
    assert all(truth["faults"][kind] > 0 for kind in ("rate_limit", "malformed", "error", "drop")), truth["faults"]
    assert "Traceback" not in daemon.log()


def test_restart_after_kill_resumes_from_the_checkpoint_without_gap_or_duplicate(tmp_path):
    sim = start_venue_sim(tmp_path, "evm", "--seed", "8", "--initial-blocks", "400", "--block-interval", "0.3",
                          "--tokens", "3", "--reorg-every", "6", "--reorg-depth", "3",
                          "--max-logs", "10", "--limit-style", "alchemy", *FAULTS)
    config, labels = write_config(tmp_path, sim, max_block_range=40)
    first = start_daemon(tmp_path, config, instance="evm", log_name="daemon-1.log")
    wait_for(lambda: (checkpoint(first.db) or 0) > FIRST + 150, 40, what="some blocks stored before the kill")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    resumed_at = checkpoint(first.db)
    time.sleep(1.0)  # the chain moves on while the feed is down
    second = start_daemon(tmp_path, config, instance="evm", log_name="daemon-2.log")
    wait_for(lambda: (checkpoint(second.db) or 0) > resumed_at + 20, 40, what="progress after the restart")
    truth = finish_and_compare(sim, second, labels)
    assert f"resuming after the last final block stored chain=ethereum block={resumed_at}" in second.log()
    assert "backfill progress" in first.log() + second.log()
    assert truth["range_errors"] > 0 and truth["reorgs"] >= 1
    assert json.dumps(truth["faults"])  # faults were on: counts are in the report on failure
