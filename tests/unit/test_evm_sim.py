"""The simulated EVM node without sockets: determinism, reorgs, filter semantics, provider limits,
and the feed's own decoder reading what it serves."""

from __future__ import annotations

import json

import msgspec

from ingestd.sim.evm.chain import NFT_CONTRACT, TRANSFER_TOPIC, SimChain, TOKENS
from ingestd.sim.evm.server import EvmSim, SimOptions
from ingestd.venues.evm import protocol


def chain(seed=5, blocks=30) -> SimChain:
    c = SimChain(seed, 1000, TOKENS[:3], 4.0)
    for _ in range(blocks):
        c.produce()
    return c


def snapshot(c: SimChain) -> list:
    return [(b.number, b.hash, b.parent_hash, [(log.address, log.topics, log.data) for log in b.logs]) for b in c.blocks]


def test_same_seed_same_chain_other_seed_other_chain():
    assert snapshot(chain(5)) == snapshot(chain(5))
    assert snapshot(chain(5)) != snapshot(chain(6))


def test_blocks_link_and_carry_all_kinds_of_logs():
    c = chain(blocks=200)
    for parent, child in zip(c.blocks, c.blocks[1:]):
        assert child.parent_hash == parent.hash and child.number == parent.number + 1
        assert child.timestamp == parent.timestamp + 12
    logs = [log for b in c.blocks for log in b.logs]
    assert any(log.address == NFT_CONTRACT and len(log.topics) == 4 for log in logs)
    assert any(log.topics[0] != TRANSFER_TOPIC for log in logs)  # approvals
    amounts = {int(log.transfer["amount_raw"]) for log in logs if log.transfer}
    assert 0 in amounts and 2**256 - 1 in amounts and max(amounts) > 2**64
    assert [log.log_index for b in c.blocks for log in b.logs] == \
        [i for b in c.blocks for i in range(len(b.logs))]


def test_a_reorg_replaces_the_newest_blocks_with_another_branch():
    c = chain(blocks=20)
    before = snapshot(c)
    old = c.reorg(3)
    assert [b.number for b in old] == [1017, 1018, 1019]
    after = snapshot(c)
    assert after[:17] == before[:17]
    assert all(a[1] != b[1] for a, b in zip(after[17:], before[17:]))  # new hashes
    assert [a[3] for a in after[17:]] != [b[3] for b in before[17:]]  # other transfers
    assert c.blocks[17].parent_hash == c.blocks[16].hash
    assert c.abandoned == old and c.reorgs == 1


def test_get_logs_filters_like_a_node():
    sim = EvmSim(SimOptions(seed=3, initial_blocks=40, tokens=3, first_block=1000))
    usdc = TOKENS[0].address
    flt = {"fromBlock": hex(1000), "toBlock": hex(1039), "address": [usdc.upper().replace("0X", "0x")],
           "topics": [TRANSFER_TOPIC]}
    logs = sim._get_logs(flt)
    expected = [log for b in sim.chain.blocks for log in b.logs if log.transfer and log.address == usdc]
    assert [(x["blockHash"], x["logIndex"]) for x in logs] == [(e.block_hash, hex(e.log_index)) for e in expected]
    everything = sim._get_logs({"fromBlock": hex(1000), "toBlock": hex(1039)})
    assert len(everything) == sum(len(b.logs) for b in sim.chain.blocks)


def test_the_feed_decoder_reads_exactly_the_truth():
    sim = EvmSim(SimOptions(seed=9, initial_blocks=60, tokens=3, first_block=1000))
    tokens = frozenset(t.address for t in sim.tokens)
    body = json.dumps(sim._answer({"jsonrpc": "2.0", "id": 1, "method": "eth_getLogs",
                                   "params": protocol.get_logs_params(1000, 1059, tokens)})).encode()
    got, skipped = protocol.decode_transfers(protocol.decode_reply(body, 1), tokens=tokens, start=1000, end=1059)
    assert skipped == []
    truth = sim.truth(None)["transfers"]
    assert [(t.block_hash, t.log_index, t.from_addr, t.to_addr, str(t.raw_amount)) for t in got] == \
        [(t["block_hash"], t["log_index"], t["from"], t["to"], t["amount_raw"]) for t in truth]


def test_too_many_logs_in_both_shapes():
    sim = EvmSim(SimOptions(seed=3, initial_blocks=50, tokens=3, first_block=1000, max_logs=10, limit_style="both"))
    call = {"jsonrpc": "2.0", "id": 4, "method": "eth_getLogs",
            "params": [{"fromBlock": hex(1000), "toBlock": hex(1049), "topics": [TRANSFER_TOPIC]}]}
    infura = sim._answer(call)["error"]
    alchemy = sim._answer(call)["error"]
    assert infura["code"] == -32005 and alchemy["code"] == -32602
    assert protocol.classify_error(protocol.RpcError(**alchemy)) == protocol.RANGE_TOO_LARGE
    start, end = protocol.suggested_range(protocol.RpcError(**infura))
    assert start == 1000
    fits = sim._get_logs({"fromBlock": hex(start), "toBlock": hex(end), "topics": [TRANSFER_TOPIC]})
    assert len(fits) <= 10
    one_more = sim._answer({**call, "params": [{"fromBlock": hex(start), "toBlock": hex(end + 1),
                                                "topics": [TRANSFER_TOPIC]}]})
    assert "error" in one_more  # the suggestion is the widest range that fits


def test_eth_call_decimals_and_symbol():
    sim = EvmSim(SimOptions(tokens=3))
    usdc = TOKENS[0].address
    answer = sim._answer({"jsonrpc": "2.0", "id": 1, "method": "eth_call",
                          "params": protocol.decimals_call_params(usdc)})
    assert protocol.decode_decimals(msgspec.Raw(json.dumps(answer["result"]).encode())) == 6
    assert sim._answer({"id": 2, "method": "eth_call", "params": [{"to": "0x" + "00" * 20, "data": "0x313ce567"}]}) \
        == {"jsonrpc": "2.0", "id": 2, "result": "0x"}
    assert sim._answer({"id": 3, "method": "eth_call", "params": [{"to": usdc, "data": "0xdeadbeef"}]})["error"] \
        == {"code": 3, "message": "execution reverted"}


def test_truth_cuts_at_the_confirmation_depth_and_lists_abandoned_transfers():
    sim = EvmSim(SimOptions(seed=4, initial_blocks=30, tokens=3, first_block=1000, reorg_every=5, reorg_depth=3))
    for _ in range(10):
        sim.step()
    truth = sim.truth(5)
    assert truth["head"] == 1039 and truth["last_block"] == 1034 and truth["reorgs"] == 2
    assert max(t["block_number"] for t in truth["transfers"]) <= 1034
    canonical = {(t["block_hash"], t["log_index"]) for t in sim.truth(None)["transfers"]}
    abandoned = {(t["block_hash"], t["log_index"]) for t in truth["abandoned"]}
    assert abandoned and not abandoned & canonical
