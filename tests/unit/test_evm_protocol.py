"""EVM JSON-RPC decoding: bytes in, typed values out, never an exception."""

from __future__ import annotations

import json
from decimal import Decimal, localcontext

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.venues.evm import protocol
from ingestd.venues.evm.protocol import (
    BAD_RESULT,
    INCONSISTENT,
    MALFORMED_JSON,
    NO_RESULT,
    NOT_ERC20_TRANSFER,
    OTHER,
    RANGE_TOO_LARGE,
    RATE_LIMITED,
    TRANSFER_TOPIC,
    WRONG_ID,
    BlockHeader,
    Problem,
    RpcError,
    classify_error,
    scale_amount,
    suggested_range,
)

USDC = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
WETH = "0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2"
TOKENS = frozenset({USDC, WETH})
BINANCE_14 = "0x28c6c06298d514db089934071355e5743bf21d60"
RECEIVER = "0x3f5ce5fbfe3e9af3971dd833d26ba9b5c936f0be"
BLOCK_HASH = "0x" + "ab" * 32
TX_HASH = "0x" + "cd" * 32


def topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:]


def word(value: int) -> str:
    return "0x" + value.to_bytes(32, "big").hex()


def log(**overrides) -> dict:
    entry = {
        # The shape eth_getLogs returns (reference/venues.md section 6), checksummed address as
        # some nodes send it.
        "address": "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48",
        "topics": [TRANSFER_TOPIC, topic(BINANCE_14), topic(RECEIVER)],
        "data": word(1_234_500),
        "blockNumber": "0x121eac0",
        "transactionHash": TX_HASH,
        "transactionIndex": "0x5",
        "blockHash": BLOCK_HASH,
        "logIndex": "0x1f",
        "removed": False,
    }
    entry.update(overrides)
    return entry


def reply(result, request_id=7) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": result}).encode()


def transfers(logs: list[dict], start=0x121EA00, end=0x121EB00):
    raw = protocol.decode_reply(reply(logs), 7)
    assert isinstance(raw, msgspec.Raw)
    return protocol.decode_transfers(raw, tokens=TOKENS, start=start, end=end)


# --- replies ------------------------------------------------------------------------------------


def test_request_is_json_rpc_2():
    body = json.loads(protocol.request(3, "eth_getLogs", protocol.get_logs_params(10, 20, [WETH, USDC])))
    assert body == {
        "jsonrpc": "2.0", "id": 3, "method": "eth_getLogs",
        "params": [{"fromBlock": "0xa", "toBlock": "0x14", "address": [USDC, WETH], "topics": [TRANSFER_TOPIC]}],
    }


def test_reply_result_error_and_problems():
    assert protocol.decode_quantity(protocol.decode_reply(b'{"jsonrpc":"2.0","id":1,"result":"0x121eac0"}', 1)) == 19000000
    assert protocol.decode_reply(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"header not found"}}', 1) \
        == RpcError(-32000, "header not found")
    assert protocol.decode_reply(b'{"jsonrpc":"2.0","id":2,"result":"0x1"}', 1).kind == WRONG_ID
    assert protocol.decode_reply(b'{"jsonrpc":"2.0","id":1}', 1).kind == NO_RESULT
    assert protocol.decode_reply(b'{"jsonrpc":"2.0","id":1,"result":{"a":', 1).kind == MALFORMED_JSON
    assert protocol.decode_reply(b"<html>502 Bad Gateway</html>", 1).kind == MALFORMED_JSON
    assert protocol.decode_reply(b"[1, 2]", 1).kind == MALFORMED_JSON


def test_block_header_and_missing_block():
    block = {"number": "0x121eac0", "hash": BLOCK_HASH, "parentHash": "0x" + "01" * 32, "timestamp": "0x6553f100",
             "transactions": [], "miner": "0x" + "00" * 20}
    raw = protocol.decode_reply(reply(block), 7)
    assert protocol.decode_block_header(raw) == BlockHeader(19000000, BLOCK_HASH, "0x" + "01" * 32, 0x6553F100)
    assert protocol.decode_block_header(protocol.decode_reply(reply(None), 7)) is None
    bad = protocol.decode_block_header(protocol.decode_reply(reply({**block, "hash": "0x12"}), 7))
    assert isinstance(bad, Problem) and bad.kind == BAD_RESULT


def test_decimals_from_eth_call():
    assert protocol.decode_decimals(protocol.decode_reply(reply(word(18)), 7)) == 18
    assert protocol.decode_decimals(protocol.decode_reply(reply(word(6)), 7)) == 6
    too_big = protocol.decode_decimals(protocol.decode_reply(reply(word(300)), 7))  # not a uint8
    assert isinstance(too_big, Problem)
    assert isinstance(protocol.decode_decimals(protocol.decode_reply(reply("0x"), 7)), Problem)


# --- Transfer logs ------------------------------------------------------------------------------


def test_erc20_transfer_decodes_lowercased_with_exact_amount():
    (got,), skipped = transfers([log()])
    assert skipped == []
    assert got == protocol.Transfer(
        block_number=19000000, block_hash=BLOCK_HASH, log_index=31, tx_hash=TX_HASH, token=USDC,
        from_addr=BINANCE_14, to_addr=RECEIVER, raw_amount=1_234_500, removed=False, block_timestamp=None)
    assert got.key == (BLOCK_HASH, 31)


def test_uint256_max_amount_and_removed_flag_and_block_timestamp():
    (got,), _ = transfers([log(data=word(2**256 - 1), removed=True, blockTimestamp="0x6553f100")])
    assert got.raw_amount == 2**256 - 1
    assert got.removed is True
    assert got.block_timestamp == 0x6553F100


def test_logs_that_are_not_erc20_transfers_are_skipped_alone():
    nft = log(topics=[TRANSFER_TOPIC, topic(BINANCE_14), topic(RECEIVER), word(42)], data="0x", logIndex="0x1")
    short = log(data="0x" + "00" * 31, logIndex="0x2")
    dirty = log(topics=[TRANSFER_TOPIC, "0x" + "ff" * 12 + BINANCE_14[2:], topic(RECEIVER)], logIndex="0x3")
    good, skipped = transfers([nft, short, log(logIndex="0x4"), dirty])
    assert [t.log_index for t in good] == [4]
    assert [p.kind for p in skipped] == [NOT_ERC20_TRANSFER] * 3
    assert "4 topics" in skipped[0].detail


@pytest.mark.parametrize("entry, kind", [
    (log(address="0x6b175474e89094c44da98b954eedeac495271d0f"), INCONSISTENT),  # a contract not asked for
    (log(blockNumber="0x1"), INCONSISTENT),  # outside the range asked for
    (log(topics=["0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925", topic(BINANCE_14),
                 topic(RECEIVER)]), INCONSISTENT),  # Approval: the topic filter was ignored
    (log(blockNumber="0xZZ"), BAD_RESULT),
    (log(blockHash=None), BAD_RESULT),
    (log(blockHash="0x1234"), BAD_RESULT),
    (log(logIndex=31), BAD_RESULT),
    (log(data="0xabc"), BAD_RESULT),
    ({"address": USDC}, BAD_RESULT),
])
def test_a_garbled_reply_is_one_problem_for_the_whole_reply(entry, kind):
    result = transfers([log(logIndex="0x0"), entry])
    assert isinstance(result, Problem) and result.kind == kind, result


def test_a_result_that_is_not_a_list_is_a_problem():
    raw = protocol.decode_reply(reply({"logs": []}), 7)
    assert protocol.decode_transfers(raw, tokens=TOKENS, start=0, end=1).kind == BAD_RESULT


# --- provider errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("code, message, kind, suggested", [
    # reference/venues.md section 6
    (-32005, "query returned more than 10000 results. Try with this block range [0x121EAC0, 0x121EB1F].",
     RANGE_TOO_LARGE, (0x121EAC0, 0x121EB1F)),
    (-32602, "Log response size exceeded. You can make eth_getLogs requests with up to a 2K block range and no "
             "limit on the response size, or you can request any block range with a cap of 10K logs in the response.",
     RANGE_TOO_LARGE, None),
    (-32602, "Log response size exceeded. Please reduce query block range.", RANGE_TOO_LARGE, None),
    (-32600, "You can make eth_getLogs requests with up to a 500 block range. Based on your parameters, this block "
             "range should work: [0x123c9b2, 0x123cba5]", RANGE_TOO_LARGE, (0x123C9B2, 0x123CBA5)),
    (-32602, "range 1000000 exceeds limit of 10000", RANGE_TOO_LARGE, None),
    (-32614, "eth_getLogs is limited to a 10,000 range", RANGE_TOO_LARGE, None),
    (-32000, "block range is bigger than maxBlockRange", RANGE_TOO_LARGE, None),
    (-32005, "daily request count exceeded, request rate limited", RATE_LIMITED, None),
    (-32005, "project ID request rate exceeded", RATE_LIMITED, None),
    (429, "Your app has exceeded its compute units per second capacity.", RATE_LIMITED, None),
    (-32000, "header not found", OTHER, None),
    (-32000, "block range extends beyond current head block", OTHER, None),  # a lagging node: wait
    (-32602, "invalid block range params", OTHER, None),
    (3, "execution reverted", OTHER, None),
])
def test_provider_errors_are_classified(code, message, kind, suggested):
    error = RpcError(code, message)
    assert classify_error(error) == kind
    assert suggested_range(error) == suggested


def test_a_backwards_suggestion_is_ignored():
    assert suggested_range(RpcError(-32005, "Try with this block range [0x20, 0x10].")) is None


# --- amounts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, decimals, text", [
    (1_234_500, 6, "1.2345"),
    (1_000_000, 6, "1"),
    (0, 18, "0"),
    (1, 18, "0.000000000000000001"),
    (10**18 + 5, 18, "1.000000000000000005"),
    (123, 0, "123"),
    (2**256 - 1, 18, "115792089237316195423570985008687907853269984665640564039457.584007913129639935"),
])
def test_amounts_are_scaled_exactly(raw, decimals, text):
    assert scale_amount(raw, decimals) == text


@given(st.integers(0, 2**256 - 1), st.integers(0, 80))
def test_scaling_is_exact_and_canonical(raw, decimals):
    text = scale_amount(raw, decimals)
    with localcontext() as exact:
        exact.prec = 200  # the default 28 digits would round a uint256
        assert Decimal(text).scaleb(decimals) == raw
    assert "e" not in text.lower()
    assert not (("." in text) and text.endswith("0"))


# --- never raises -------------------------------------------------------------------------------


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(body):
    outcome = protocol.decode_reply(body, 1)
    if isinstance(outcome, msgspec.Raw):
        for decoder in (protocol.decode_quantity, protocol.decode_block_header, protocol.decode_decimals):
            decoder(outcome)
        protocol.decode_transfers(outcome, tokens=TOKENS, start=0, end=2**64)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=70)
    | st.sampled_from(["0x", "0x1", "0xZZ", TRANSFER_TOPIC, BLOCK_HASH, topic(BINANCE_14), USDC, word(5)]),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=300)
@given(st.sampled_from(sorted(log())), _json, st.integers(0, 3))
def test_mutated_logs_never_raise(field, value, position):
    entries = [log(logIndex=hex(i)) for i in range(4)]
    entries[position][field] = value
    result = transfers(entries)
    if not isinstance(result, Problem):
        good, skipped = result
        assert len(good) + len(skipped) == 4
