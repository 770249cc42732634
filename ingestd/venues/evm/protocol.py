"""Ethereum JSON-RPC for ERC-20 Transfer logs, sans-I/O: request bodies out, typed values in.

Requests are JSON-RPC 2.0 over HTTP POST (`eth_blockNumber`, `eth_getBlockByNumber`, `eth_getLogs`,
`eth_call` for `decimals()`). Quantities travel as 0x-hex strings, hashes and addresses as 0x-hex
too; everything here is lower-cased so it compares and stores the same whatever the node's case.

ABI decoding is eth-abi's (`eth_abi.decode`): the two indexed addresses sit left-padded in
`topics[1]`/`topics[2]` and the amount is the one uint256 word of `data`. eth-abi checks the
padding bytes, so a topic that is not a clean address is refused rather than truncated.

Nothing here raises on bad input. A reply that cannot be used comes back as a `Problem` (a whole
response: the caller retries it), and a single log that is not an ERC-20 Transfer is skipped with a
`Problem` beside the good ones (retrying would get the same log again).
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import msgspec
from eth_abi import decode as abi_decode
from eth_abi.exceptions import DecodingError

# keccak256("Transfer(address,address,uint256)"): ERC-20 and ERC-721 share it, and ERC-721's
# tokenId is a third indexed topic, so a 4-topic Transfer is an NFT, not an amount.
TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
DECIMALS_SELECTOR = "0x313ce567"  # the first 4 bytes of keccak256("decimals()")

# Problem kinds: stable names for counters and rate-limited logging.
MALFORMED_JSON = "malformed_json"  # not JSON, or not a JSON-RPC reply object
WRONG_ID = "wrong_id"  # a reply to some other request
NO_RESULT = "no_result"  # neither result nor error
BAD_RESULT = "bad_result"  # a result of the wrong shape (bad hex, missing log fields, ...)
INCONSISTENT = "inconsistent"  # logs the filter did not ask for (another address, outside the range)
NOT_ERC20_TRANSFER = "not_erc20_transfer"  # one log skipped: 4 topics (ERC-721), bad padding, data not one word

_HEX = re.compile(r"0x[0-9a-fA-F]+")
_HASH = re.compile(r"0x[0-9a-fA-F]{64}")
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_DATA = re.compile(r"0x(?:[0-9a-fA-F]{2})*")


class Problem(msgspec.Struct, frozen=True, gc=False):
    kind: str
    detail: str


class RpcError(msgspec.Struct, frozen=True, gc=False):
    """A JSON-RPC `error` object: the node understood the request and refused it."""

    code: int
    message: str


class BlockHeader(msgspec.Struct, frozen=True, gc=False):
    number: int
    hash: str
    parent_hash: str
    timestamp: int  # seconds


class Transfer(msgspec.Struct, frozen=True, gc=False):
    """One decoded ERC-20 Transfer log, before decimals and labels are applied."""

    block_number: int
    block_hash: str
    log_index: int
    tx_hash: str
    token: str
    from_addr: str
    to_addr: str
    raw_amount: int  # token base units (uint256)
    removed: bool = False  # the node says this log's block left the canonical chain
    block_timestamp: int | None = None  # seconds; some nodes put it on the log (saves a header read)

    @property
    def key(self) -> tuple[str, int]:
        return self.block_hash, self.log_index


# --- requests ---------------------------------------------------------------------------------------


def request(request_id: int, method: str, params: list) -> bytes:
    return msgspec.json.encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})


def quantity(n: int) -> str:
    return hex(n)


def get_logs_params(start: int, end: int, tokens: Iterable[str]) -> list:
    return [{"fromBlock": quantity(start), "toBlock": quantity(end), "address": sorted(tokens),
             "topics": [TRANSFER_TOPIC]}]


def get_block_params(number: int) -> list:
    return [quantity(number), False]  # False: transaction hashes only, not full transactions


def decimals_call_params(token: str) -> list:
    return [{"to": token, "data": DECIMALS_SELECTOR}, "latest"]


# --- replies ----------------------------------------------------------------------------------------


class _ErrorObject(msgspec.Struct, gc=False):
    code: int
    message: str = ""


class _Reply(msgspec.Struct, gc=False):
    id: int | str | None = None
    result: msgspec.Raw = msgspec.Raw()  # empty: absent (null arrives as b"null")
    error: _ErrorObject | None = None


_reply = msgspec.json.Decoder(_Reply)


def decode_reply(body: bytes, request_id: int) -> msgspec.Raw | RpcError | Problem:
    """The result of request `request_id` (still raw JSON), its error, or why the body is unusable."""
    try:
        reply = _reply.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        return Problem(MALFORMED_JSON, f"{exc}: {body[:120]!r}")
    if reply.id != request_id:
        return Problem(WRONG_ID, f"reply id {reply.id!r}, expected {request_id}")
    if reply.error is not None:
        return RpcError(reply.error.code, reply.error.message)
    if not len(reply.result):
        return Problem(NO_RESULT, "a reply with neither result nor error")
    return reply.result


def _int(text: Any, what: str) -> int:
    if not isinstance(text, str) or not _HEX.fullmatch(text):
        raise ValueError(f"{what}: expected a 0x-hex quantity, got {text!r}")
    return int(text, 16)


def _hash(text: Any, what: str) -> str:
    if not isinstance(text, str) or not _HASH.fullmatch(text):
        raise ValueError(f"{what}: expected a 32-byte 0x-hex hash, got {text!r}")
    return text.lower()


def decode_quantity(raw: msgspec.Raw) -> int | Problem:
    """`eth_blockNumber`'s result."""
    try:
        return _int(msgspec.json.decode(raw), "quantity")
    except (msgspec.DecodeError, ValueError) as exc:
        return Problem(BAD_RESULT, str(exc))


class _Header(msgspec.Struct, gc=False):
    number: str
    hash: str
    parentHash: str
    timestamp: str


_header = msgspec.json.Decoder(_Header | None)


def decode_block_header(raw: msgspec.Raw) -> BlockHeader | None | Problem:
    """`eth_getBlockByNumber`'s result; None when the node has no such block (yet)."""
    try:
        block = _header.decode(raw)
        if block is None:
            return None
        return BlockHeader(_int(block.number, "number"), _hash(block.hash, "hash"),
                           _hash(block.parentHash, "parentHash"), _int(block.timestamp, "timestamp"))
    except (msgspec.DecodeError, ValueError) as exc:
        return Problem(BAD_RESULT, f"block: {exc}")


def decode_decimals(raw: msgspec.Raw) -> int | Problem:
    """`eth_call` of decimals(): one ABI word holding a uint8. A token without the method answers
    "0x" (or reverts, which arrives as an RpcError)."""
    try:
        data = msgspec.json.decode(raw)
        if not isinstance(data, str) or not _DATA.fullmatch(data):
            raise ValueError(f"expected 0x-hex bytes, got {data!r}")
        (value,) = abi_decode(["uint8"], bytes.fromhex(data[2:]))
    except (msgspec.DecodeError, ValueError, DecodingError) as exc:
        return Problem(BAD_RESULT, f"decimals(): {exc}")
    return value


class _Log(msgspec.Struct, gc=False):
    address: str
    topics: list[str]
    data: str
    blockNumber: str
    blockHash: str
    transactionHash: str
    logIndex: str
    removed: bool = False
    blockTimestamp: str | None = None


_logs = msgspec.json.Decoder(list[_Log])


def decode_transfers(
    raw: msgspec.Raw, *, tokens: frozenset[str], start: int, end: int
) -> tuple[list[Transfer], list[Problem]] | Problem:
    """`eth_getLogs`' result for Transfer logs of `tokens` in blocks start..end.

    A reply that breaks the JSON-RPC shape, or holds logs the filter excludes (another contract, a
    block outside the range, another event), is a `Problem` for the whole reply: the node or a
    proxy garbled it, and asking again is the fix. A well-formed log that is not an ERC-20 Transfer
    (an ERC-721 Transfer has 4 topics; a non-standard token may log odd data) is skipped alone."""
    try:
        logs = _logs.decode(raw)
    except msgspec.DecodeError as exc:
        return Problem(BAD_RESULT, f"logs: {exc}")
    out: list[Transfer] = []
    skipped: list[Problem] = []
    for log in logs:
        try:
            address = log.address.lower()
            if not _ADDRESS.fullmatch(address) or address not in tokens:
                return Problem(INCONSISTENT, f"a log of contract {log.address!r}, which the filter did not ask for")
            number = _int(log.blockNumber, "blockNumber")
            if not start <= number <= end:
                return Problem(INCONSISTENT, f"a log of block {number}, outside the range {start}..{end}")
            if not log.topics or log.topics[0].lower() != TRANSFER_TOPIC:
                return Problem(INCONSISTENT, f"a log with topic0 {log.topics[:1]!r}, not Transfer")
            block_hash = _hash(log.blockHash, "blockHash")
            tx_hash = _hash(log.transactionHash, "transactionHash")
            log_index = _int(log.logIndex, "logIndex")
            timestamp = None if log.blockTimestamp is None else _int(log.blockTimestamp, "blockTimestamp")
            if not _DATA.fullmatch(log.data):
                raise ValueError(f"data: expected 0x-hex bytes, got {log.data[:80]!r}")
        except ValueError as exc:
            return Problem(BAD_RESULT, f"log: {exc}")
        decoded = _transfer_fields(log)
        if isinstance(decoded, Problem):
            skipped.append(decoded)
            continue
        from_addr, to_addr, amount = decoded
        out.append(Transfer(number, block_hash, log_index, tx_hash, address, from_addr, to_addr, amount,
                            log.removed, timestamp))
    return out, skipped


def _transfer_fields(log: _Log) -> tuple[str, str, int] | Problem:
    where = f"log {log.logIndex} of block {log.blockNumber} ({log.address})"
    if len(log.topics) != 3:
        return Problem(NOT_ERC20_TRANSFER, f"{where}: {len(log.topics)} topics (ERC-721 has 4, ERC-20 has 3)")
    if any(not _HASH.fullmatch(t) for t in log.topics[1:]):
        return Problem(NOT_ERC20_TRANSFER, f"{where}: a topic is not 32 bytes of hex")
    data = bytes.fromhex(log.data[2:])
    if len(data) != 32:
        return Problem(NOT_ERC20_TRANSFER, f"{where}: data is {len(data)} bytes, not one uint256 word")
    words = bytes.fromhex(log.topics[1][2:]) + bytes.fromhex(log.topics[2][2:]) + data
    try:
        from_addr, to_addr, amount = abi_decode(["address", "address", "uint256"], words)
    except DecodingError as exc:  # non-zero padding above a 20-byte address
        return Problem(NOT_ERC20_TRANSFER, f"{where}: {exc}")
    return from_addr.lower(), to_addr.lower(), amount


# --- provider errors ----------------------------------------------------------------------------------

RANGE_TOO_LARGE = "range_too_large"
RATE_LIMITED = "rate_limited"
OTHER = "other"

# Providers cap eth_getLogs by result count or block span and say so in the message, often with a
# range that would work. Known shapes:
#   Infura   -32005 "query returned more than 10000 results. Try with this block range [0x…, 0x…]."
#   Alchemy  -32602 "Log response size exceeded. …"  (older: no range; newer: "… should work: [0x…, 0x…]")
#   Alchemy  -32600 "You can make eth_getLogs requests with up to a 500 block range. Based on …: [0x…, 0x…]"
#   Infura   -32602 "range 1000000 exceeds limit of 10000"
#   others   -32614 "eth_getLogs is limited to a 10,000 range"; -32000 "block range is bigger than maxBlockRange"
_RANGE_WORDS = re.compile(
    r"more than \d+ results|response size exceeded|block range|exceeds limit|limited to a|too many (?:logs|results)"
    r"|query timeout|result(?:s)? (?:set )?too large",
    re.IGNORECASE,
)
# Not about size: a node behind its load balancer, or a request that is wrong at any size.
_NOT_SIZE_WORDS = re.compile(r"beyond (?:the )?(?:current )?head|invalid block range", re.IGNORECASE)
# Infura's -32005 also means "request rate limited" / "daily request count exceeded".
_RATE_WORDS = re.compile(r"rate limit|request count exceeded|too many requests|capacity", re.IGNORECASE)
_SUGGESTED = re.compile(r"\[\s*(0x[0-9a-fA-F]+)\s*,\s*(0x[0-9a-fA-F]+)\s*\]")


def classify_error(error: RpcError) -> str:
    """RANGE_TOO_LARGE (ask for fewer blocks), RATE_LIMITED (wait, then ask again) or OTHER."""
    if _RANGE_WORDS.search(error.message) and not _NOT_SIZE_WORDS.search(error.message):
        return RANGE_TOO_LARGE
    if error.code == -32005 or _RATE_WORDS.search(error.message):
        return RATE_LIMITED
    return OTHER


def suggested_range(error: RpcError) -> tuple[int, int] | None:
    """The block range a provider's message proposes, if it proposes a sane one."""
    match = _SUGGESTED.search(error.message)
    if not match:
        return None
    start, end = int(match[1], 16), int(match[2], 16)
    return (start, end) if start <= end else None


# --- amounts ------------------------------------------------------------------------------------------


def scale_amount(raw: int, decimals: int) -> str:
    """Base units as an exact decimal string of whole tokens: (1234500, 6) -> "1.2345".

    Integer arithmetic only: a uint256 has 78 digits, far beyond a float's 15-17."""
    if decimals == 0:
        return str(raw)
    whole, fraction = divmod(raw, 10**decimals)
    if not fraction:
        return str(whole)
    return f"{whole}.{str(fraction).rjust(decimals, '0').rstrip('0')}"
