"""The feed's picture of the chain: the last finalized block, and the unfinalized blocks above it.

Sans-I/O: the feed reads headers and logs from the node and hands them here; this module decides
what they mean. Nothing in the window has been emitted. A block leaves the window only when it is
final (`confirmations` deep), and only then do its transfers go to the sinks, so a reorg that stays
inside the window costs a re-read and nothing else, and no log of an abandoned branch is stored.

    finalized (emitted, checkpointed)   window: finalized+1 .. tip (hash-linked headers + their logs)
    ... ─── F ─── F+1 ─── F+2 ─── ... ─── tip                          head (node)

Why hashes are enough to notice a reorg: a header commits to its parent's hash, so if the node's
block at `tip` still has the hash we hold, every block below it is still the one we hold. When it
differs, the feed walks down until a hash matches (the fork point) and drops the window above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ingestd.venues.evm.protocol import BlockHeader, Transfer


@dataclass
class PendingBlock:
    header: BlockHeader
    recv_us: int
    transfers: dict[tuple[str, int], Transfer] = field(default_factory=dict)  # by (block_hash, log_index)


class ChainWindow:
    def __init__(self, finalized: int, finalized_hash: str | None = None) -> None:
        self.finalized = finalized
        self.finalized_hash = finalized_hash  # None when unknown (just started or resumed)
        self.blocks: dict[int, PendingBlock] = {}  # contiguous finalized+1 .. tip, in order

    @property
    def tip(self) -> int:
        return self.finalized + len(self.blocks)

    @property
    def tip_hash(self) -> str | None:
        return self.hash_at(self.tip)

    def hash_at(self, number: int) -> str | None:
        if number == self.finalized:
            return self.finalized_hash
        block = self.blocks.get(number)
        return block.header.hash if block is not None else None

    @property
    def pending_transfers(self) -> int:
        return sum(len(b.transfers) for b in self.blocks.values())

    def extend(self, headers: list[BlockHeader], transfers: list[Transfer], recv_us: int) -> str | None:
        """Append blocks tip+1.. with their transfers; None when done, else why nothing was appended.

        Refused when the headers do not continue the window (a reorg below them, or between two
        header reads) or a transfer names another hash for its block (read from another branch)."""
        expected_parent = self.tip_hash
        number = self.tip + 1
        by_number: dict[int, BlockHeader] = {}
        for header in headers:
            if header.number != number:
                return f"header {header.number} where {number} was expected"
            if expected_parent is not None and header.parent_hash != expected_parent:
                return f"block {number}'s parent is not the block {number - 1} we hold"
            by_number[number] = header
            expected_parent = header.hash
            number += 1
        for t in transfers:
            header = by_number.get(t.block_number)
            if header is None:
                return f"a transfer of block {t.block_number}, outside the blocks read"
            if t.block_hash != header.hash:
                return f"a transfer of block {t.block_number} from another branch"
        for header in headers:
            self.blocks[header.number] = PendingBlock(header, recv_us)
        for t in transfers:
            self.blocks[t.block_number].transfers[t.key] = t
        return None

    def rollback(self, to: int) -> int:
        """Drop the window above block `to` (the fork point); returns how many transfers went."""
        dropped = 0
        for number in range(self.tip, max(to, self.finalized), -1):
            dropped += len(self.blocks.pop(number).transfers)
        return dropped

    def final_blocks(self, safe: int) -> list[PendingBlock]:
        """Window blocks at or below `safe` (the last final block number), oldest first."""
        return [self.blocks[n] for n in range(self.finalized + 1, min(safe, self.tip) + 1)]

    def advance(self, to: int, to_hash: str | None) -> None:
        """Blocks up to `to` are emitted: drop them from the window and move the finalized mark."""
        for number in range(self.finalized + 1, min(to, self.tip) + 1):
            del self.blocks[number]
        self.finalized = to
        self.finalized_hash = to_hash
