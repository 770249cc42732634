"""A deterministic simulated EVM chain: blocks of ERC-20 transfers (and logs a Transfer filter must
leave out), with reorgs that replace the newest blocks by a different branch.

Everything in a block follows from (seed, number, branch): the same seed builds the same chain,
whatever the timing, and a reorg's new branch differs from the old one (other hashes, other
transfers). Block times are 12 s apart from a fixed genesis time, as on Ethereum since the merge.

Amounts are drawn to exercise exact decimal scaling: zero, one base unit, round numbers, values
far beyond 2^64, and now and then the uint256 maximum.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from eth_abi import encode as abi_encode

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
APPROVAL_TOPIC = "0x8c5be1e5ebec7d5bd14f71427d1e84f3dd0314c0f7b2291e5b200ac8c7c3b925"
SLOT_S = 12
GENESIS_TS = 1_700_000_000
UINT256_MAX = 2**256 - 1


@dataclass(frozen=True)
class SimToken:
    address: str
    symbol: str
    decimals: int


# Real mainnet contracts, so a config written against the simulator reads like a real one.
TOKENS = (
    SimToken("0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", "USDC", 6),
    SimToken("0xdac17f958d2ee523a2206206994597c13d831ec7", "USDT", 6),
    SimToken("0xc02aaa39b223fe8d0a0e5c4f27ead9083c756cc2", "WETH", 18),
    SimToken("0x2260fac5e5542a773aa44fbcfedf7c193bc2c599", "WBTC", 8),
    SimToken("0x6b175474e89094c44da98b954eedeac495271d0f", "DAI", 18),
)
NFT_CONTRACT = "0xbc4ca0eda7647a8ab7c2061c2e118a18a936f13d"  # an ERC-721: Transfer with 4 topics

# Participants a test can label (exchange hot wallets, bridges); the rest are synthetic.
KNOWN_WALLETS = {
    "0x28c6c06298d514db089934071355e5743bf21d60": "binance-hot-14",
    "0x21a31ee1afc51d94c2efccaa2092ad1028285549": "binance-hot-15",
    "0x99c9fc46f92e8a1c0dec1b1747d010903e884be1": "bridge:optimism",
    "0xa3a7b6f88361f48403514059f1f16c8e78d60eec": "bridge:arbitrum",
}


def _digest(*parts: object) -> str:
    return "0x" + hashlib.sha256(":".join(str(p) for p in parts).encode()).hexdigest()


def _topic(address: str) -> str:
    return "0x" + "0" * 24 + address[2:]


def _word(value: int) -> str:
    return "0x" + abi_encode(["uint256"], [value]).hex()


@dataclass
class SimLog:
    address: str
    topics: list[str]
    data: str
    block_number: int
    block_hash: str
    tx_hash: str
    tx_index: int
    log_index: int
    transfer: dict | None = None  # the truth of an ERC-20 Transfer; None for other logs
    served: bool = False

    def to_json(self, removed: bool = False) -> dict:
        return {
            "address": self.address,
            "topics": self.topics,
            "data": self.data,
            "blockNumber": hex(self.block_number),
            "blockHash": self.block_hash,
            "transactionHash": self.tx_hash,
            "transactionIndex": hex(self.tx_index),
            "logIndex": hex(self.log_index),
            "removed": removed,
        }


@dataclass
class SimBlock:
    number: int
    hash: str
    parent_hash: str
    timestamp: int
    branch: int
    logs: list[SimLog] = field(default_factory=list)
    tx_hashes: list[str] = field(default_factory=list)
    served: bool = False  # its header or logs went out at least once

    def to_json(self) -> dict:
        return {
            "number": hex(self.number),
            "hash": self.hash,
            "parentHash": self.parent_hash,
            "timestamp": hex(self.timestamp),
            "nonce": "0x0000000000000000",
            "difficulty": "0x0",
            "gasLimit": hex(30_000_000),
            "gasUsed": hex(21_000 * len(self.tx_hashes)),
            "baseFeePerGas": hex(10**9),
            "miner": "0x95222290dd7278aa3ddd389cc1e1d165cc4bafe5",
            "extraData": "0x",
            "logsBloom": "0x" + "00" * 256,
            "sha3Uncles": "0x1dcc4de8dec75d7aab85b567b6ccd41ad312451b948a7413f0a142fd40d49347",
            "transactions": list(self.tx_hashes),
            "uncles": [],
        }


class SimChain:
    def __init__(self, seed: int, first_block: int, tokens: tuple[SimToken, ...], transfers_per_block: float) -> None:
        self.seed = seed
        self.first_block = first_block
        self.tokens = tokens
        self.transfers_per_block = transfers_per_block
        self.blocks: list[SimBlock] = []  # canonical, blocks[i].number == first_block + i
        self.abandoned: list[SimBlock] = []
        self.reorgs = 0
        self.branches = 0
        rng = random.Random(f"{seed}:wallets")
        self.wallets = list(KNOWN_WALLETS) + ["0x" + rng.randbytes(20).hex() for _ in range(40)]

    @property
    def head(self) -> int:
        return self.first_block + len(self.blocks) - 1

    def block(self, number: int) -> SimBlock | None:
        i = number - self.first_block
        return self.blocks[i] if 0 <= i < len(self.blocks) else None

    def block_by_hash(self, block_hash: str) -> SimBlock | None:
        for block in reversed(self.blocks):
            if block.hash == block_hash:
                return block
        for block in self.abandoned:
            if block.hash == block_hash:
                return block
        return None

    def produce(self) -> SimBlock:
        number = self.first_block + len(self.blocks)
        parent = self.blocks[-1].hash if self.blocks else _digest(self.seed, "genesis-parent")
        block = self._make_block(number, parent, branch=0)
        self.blocks.append(block)
        return block

    def reorg(self, depth: int) -> list[SimBlock]:
        """Replace the newest `depth` blocks by a new branch of the same length; returns the old ones."""
        depth = min(depth, len(self.blocks) - 1)  # the first block stays: it has no parent to fork from
        if depth <= 0:
            return []
        self.reorgs += 1
        self.branches += 1
        old = self.blocks[-depth:]
        del self.blocks[-depth:]
        for replaced in old:
            parent = self.blocks[-1].hash
            self.blocks.append(self._make_block(replaced.number, parent, branch=self.branches))
        self.abandoned.extend(old)
        return old

    def _make_block(self, number: int, parent_hash: str, branch: int) -> SimBlock:
        rng = random.Random(f"{self.seed}:{number}:{branch}")
        block_hash = _digest(self.seed, "block", number, branch)
        block = SimBlock(number, block_hash, parent_hash, GENESIS_TS + (number - self.first_block) * SLOT_S, branch)
        n_tx = rng.randint(0, max(0, round(2 * self.transfers_per_block)))
        for tx_index in range(n_tx):
            tx_hash = _digest(block_hash, "tx", tx_index)
            block.tx_hashes.append(tx_hash)
            kind = rng.random()
            if kind < 0.08:
                self._approval(rng, block, tx_hash, tx_index)
            elif kind < 0.12:
                self._nft_transfer(rng, block, tx_hash, tx_index)
            else:
                self._transfer(rng, block, tx_hash, tx_index)
                if rng.random() < 0.2:  # a swap: two tokens move in one transaction
                    self._transfer(rng, block, tx_hash, tx_index)
        return block

    def _wallet(self, rng: random.Random) -> str:
        if rng.random() < 0.3:
            return rng.choice(list(KNOWN_WALLETS))
        return rng.choice(self.wallets)

    def _transfer(self, rng: random.Random, block: SimBlock, tx_hash: str, tx_index: int) -> None:
        token = rng.choice(self.tokens)
        sender, receiver = self._wallet(rng), self._wallet(rng)
        amount = _amount(rng, token.decimals)
        log = SimLog(token.address, [TRANSFER_TOPIC, _topic(sender), _topic(receiver)], _word(amount),
                     block.number, block.hash, tx_hash, tx_index, len(block.logs))
        log.transfer = {
            "block_number": block.number, "block_hash": block.hash, "log_index": log.log_index, "tx_hash": tx_hash,
            "token": token.address, "symbol": token.symbol, "decimals": token.decimals,
            "from": sender, "to": receiver, "amount_raw": str(amount), "timestamp": block.timestamp,
        }
        block.logs.append(log)

    def _approval(self, rng: random.Random, block: SimBlock, tx_hash: str, tx_index: int) -> None:
        token = rng.choice(self.tokens)
        owner, spender = self._wallet(rng), self._wallet(rng)
        block.logs.append(SimLog(token.address, [APPROVAL_TOPIC, _topic(owner), _topic(spender)],
                                 _word(UINT256_MAX), block.number, block.hash, tx_hash, tx_index, len(block.logs)))

    def _nft_transfer(self, rng: random.Random, block: SimBlock, tx_hash: str, tx_index: int) -> None:
        sender, receiver = self._wallet(rng), self._wallet(rng)
        token_id = "0x" + rng.randint(0, 9999).to_bytes(32, "big").hex()
        block.logs.append(SimLog(NFT_CONTRACT, [TRANSFER_TOPIC, _topic(sender), _topic(receiver), token_id], "0x",
                                 block.number, block.hash, tx_hash, tx_index, len(block.logs)))

    # --- queries ----------------------------------------------------------------------------------

    def logs(self, blocks: list[SimBlock], addresses: set[str] | None, topics: list) -> list[SimLog]:
        return [log for block in blocks for log in block.logs if _matches(log, addresses, topics)]

    def canonical_range(self, start: int, end: int) -> list[SimBlock]:
        lo = max(0, start - self.first_block)
        hi = min(len(self.blocks), end - self.first_block + 1)
        return self.blocks[lo:hi] if lo < hi else []

    def abandoned_range(self, start: int, end: int) -> list[SimBlock]:
        return [b for b in self.abandoned if start <= b.number <= end]


def _matches(log: SimLog, addresses: set[str] | None, topics: list) -> bool:
    """eth_getLogs filter semantics: address is any of the set; topics position by position,
    null matching anything and a list matching any of its entries."""
    if addresses is not None and log.address not in addresses:
        return False
    if len(topics) > len(log.topics):
        return False
    for wanted, actual in zip(topics, log.topics):
        if wanted is None:
            continue
        options = wanted if isinstance(wanted, list) else [wanted]
        if actual not in [o.lower() for o in options if isinstance(o, str)]:
            return False
    return True


def _amount(rng: random.Random, decimals: int) -> int:
    roll = rng.random()
    if roll < 0.02:
        return 0
    if roll < 0.04:
        return 1
    if roll < 0.05:
        return UINT256_MAX
    if roll < 0.2:
        return rng.randint(1, 5000) * 10**decimals  # a round number of whole tokens
    return rng.randint(1, 10 ** (decimals + 7))
