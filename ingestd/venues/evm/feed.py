"""The EVM feed: finalized ERC-20 Transfers of the configured tokens, over JSON-RPC, into `onchain_flows`.

    EvmFeed.run
    ├── emitter      the only sender to the router: records and their Checkpoint, one chunk at a time
    ├── heartbeat    beats feed.evm while the poller shows progress (and the feed is not wedged)
    └── poller       the only owner of the chain window; one poll at a time (scheduled or triggered)
        └── session  one httpx client; pause() and reconnect() cancel it, resume() opens a new one

One poll (protocol facts: reference/venues.md section 6):

1. `eth_blockNumber` -> head; blocks up to `safe = head - confirmations` are final.
2. Reorg check: the node's hash of our window's tip must still be ours (a header commits to its
   parent, so then every window block still is); if not, walk down to the fork point and drop the
   window above it (chain.py).
3. Window blocks now at or below `safe` are emitted, oldest first, followed by a Checkpoint
   (venue "evm", symbol = chain, trade_id = last final block), in one chunk.
4. With no window left and final blocks still unread (start, restart, a long pause): backfill them
   straight from eth_getLogs in spans that shrink on a provider's limit (ranges.py), with a
   checkpoint after every span and a progress line (blocks done / total, rate, ETA).
5. The unfinalized blocks tip+1..head join the window: their headers (hash-linked), their logs,
   then the last header again. If that last hash changed meanwhile, a reorg raced the reads and
   the extension is dropped; logs whose block hash is not the header's are refused the same way.
   Logs marked `removed` (an abandoned branch's, as a node may send right after a reorg) are
   never kept.

So only final blocks reach the sinks, and a block reaches them exactly once: the checkpoint travels
in the same chunk as the block's transfers, and a restart resumes at checkpoint + 1.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import trio

from ingestd.logs import RateLimitedLog
from ingestd.model import Checkpoint, OnchainFlow, Record
from ingestd.pipeline import Router
from ingestd.secrets import reveal
from ingestd.stats import StatsRegistry, now_us
from ingestd.venues.evm import protocol
from ingestd.venues.evm.chain import ChainWindow
from ingestd.venues.evm.progress import BackfillProgress
from ingestd.venues.evm.protocol import BlockHeader, Problem, RpcError, Transfer
from ingestd.venues.evm.ranges import SpanSizer
from ingestd.venues.evm.rpc import RpcClient

VENUE = "evm"
log = logging.getLogger("ingestd.evm")

HEARTBEAT_S = 0.5
SLEEP_SLICE_S = 0.5  # long waits are cut into slices that show the poller is alive
EMIT_CAPACITY = 16  # chunks between the poller and the emitter
DECIMALS_ATTEMPTS = 3  # eth_call decimals() errors before a token is left out


@dataclass
class _Trigger:
    done: trio.Event = field(default_factory=trio.Event)
    summary: dict = field(default_factory=dict)


class EvmFeed:
    def __init__(self, cfg: Any, router: Router, stats: StatsRegistry, *, resume: dict[str, int] | None = None) -> None:
        self.cfg = cfg
        self.router = router
        self.stats = stats
        self.chain: str = cfg.chain
        self._resume_at = (resume or {}).get(self.chain)
        self._tokens = {t.address: t for t in cfg.tokens}
        self._decimals: dict[str, int] = {t.address: t.decimals for t in cfg.tokens if t.decimals is not None}
        self._unusable: set[str] = set()  # tokens whose decimals() could not be read
        self._active: list[str] = [t.address for t in cfg.tokens]
        self.symbols: list[str] = [t.symbol for t in cfg.tokens]
        self._labels = dict(cfg.labels)
        self._window: ChainWindow | None = None
        self._sizer = SpanSizer(cfg.max_block_range)
        self._head: int | None = None
        self._paused = False
        self._wedged = False
        self._stopping = False
        self._kick = trio.Event()
        self._triggers: list[_Trigger] = []  # waiting for the next poll to start
        self._serving: list[_Trigger] = []  # answered when the poll in flight ends
        self._session: trio.CancelScope | None = None
        self._poller_scope: trio.CancelScope | None = None
        self._progress_at = 0.0  # trio clock: the poller's last sign of life
        self._rl = RateLimitedLog(interval_s=10.0)
        self._conn = stats.connection(f"evm/{self.chain}")
        self._conn.url = _shown_url(cfg.rpc_url)
        self._conn.streams = len(self._active)

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        self._progress_at = trio.current_time()
        self.stats.set_gauge("evm.connections_planned", 1)
        self.stats.set_gauge("evm.tokens", len(self._active))
        emit_send, emit_recv = trio.open_memory_channel[list](EMIT_CAPACITY)
        self.stats.watch_queue("evm.emit", lambda: _channel_depth(emit_recv))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._emitter, emit_recv)
                async with trio.open_nursery() as helpers:
                    helpers.start_soon(self._heartbeat)
                    async with emit_send:
                        with trio.CancelScope() as self._poller_scope:
                            log.info("evm feed starting", extra={
                                "chain": self.chain, "tokens": ",".join(self.symbols),
                                "confirmations": self.cfg.confirmations, "resume_after_block": self._resume_at})
                            task_status.started()
                            await self._poller(emit_send)
                    helpers.cancel_scope.cancel()
                # The emitter drains what the poller handed over, then ends: nothing received is lost.
        finally:
            self._conn.state = "closed"
            for trigger in self._serving + self._take_triggers():
                trigger.summary = {"records": 0, "stopped": True}
                trigger.done.set()

    def stop(self) -> None:
        """Stop polling now; run() returns once every chunk already made has reached the router.
        A poll cut short loses nothing: what it had not emitted was not checkpointed either."""
        self._stopping = True
        if self._poller_scope is not None:
            self._poller_scope.cancel()

    def reconnect(self) -> int:
        """A fresh HTTP client (new connections) and a poll now; state is kept."""
        if self._session is not None and not self._paused:
            self._session.cancel()
        return 1

    def wedge(self) -> None:
        self._wedged = True

    def pause(self) -> None:
        self._paused = True
        self._conn.state = "paused"
        if self._session is not None:
            self._session.cancel()

    def resume(self) -> None:
        if self._paused:
            self._paused = False
            self._kick.set()

    async def trigger(self) -> dict:
        """Run one poll now, outside the schedule, and return what it did. A poll in flight
        finishes first; this one starts right after it."""
        if self._paused or self._stopping:
            return {"records": 0, "paused": self._paused, "stopped": self._stopping}
        trigger = _Trigger()
        self._triggers.append(trigger)
        self._kick.set()
        await trigger.done.wait()
        return trigger.summary

    async def update_symbols(self, wanted: list[str]) -> tuple[list[str], list[str]]:
        """Follow a subset of the configured tokens, named by symbol or address (empty: all of
        them). The change applies from the next block read: a token added is not backfilled (as on
        a first start without start_block), and the unfinalized blocks already read keep the
        transfers of a token removed."""
        names = {w.lower() for w in wanted}
        chosen = [t for t in self.cfg.tokens if not names or t.symbol.lower() in names or t.address in names]
        known = {t.symbol.lower() for t in self.cfg.tokens} | set(self._tokens)
        unknown = sorted(names - known)
        if unknown:
            log.warning("not configured in feeds.evm.tokens, ignored", extra={"tokens": ",".join(unknown)})
        new = [t.symbol for t in chosen]
        added = [s for s in new if s not in self.symbols]
        removed = [s for s in self.symbols if s not in new]
        self.symbols = new
        self._active = [t.address for t in chosen]
        self._conn.streams = len(self._active)
        self.stats.set_gauge("evm.tokens", len(self._active))
        if added or removed:
            log.info("token list changed", extra={"added": ",".join(added) or "-", "removed": ",".join(removed) or "-"})
        return added, removed

    # --- tasks ----------------------------------------------------------------------------------

    async def _emitter(self, chunks: trio.MemoryReceiveChannel) -> None:
        async with chunks:
            async for records in chunks:
                await self.router.send(records)

    async def _heartbeat(self) -> None:
        # A poller stuck longer than one request may take has stopped making progress.
        stall_s = self.cfg.request_timeout_s + 5.0 + SLEEP_SLICE_S
        while True:
            if not self._wedged and trio.current_time() - self._progress_at < stall_s:
                self.stats.heartbeat("feed.evm")
            await trio.sleep(HEARTBEAT_S)

    async def _sleep(self, seconds: float) -> None:
        """Sleep, showing the heartbeat that the poller is alive; a wedged feed sleeps for ever."""
        deadline = trio.current_time() + seconds
        while True:
            if self._wedged:
                log.critical("feed wedged on purpose (SIGUSR2): no progress until restarted")
                await trio.sleep_forever()
            self._progress_at = trio.current_time()
            left = deadline - trio.current_time()
            if left <= 0:
                return
            await trio.sleep(min(left, SLEEP_SLICE_S))

    async def _wait_for_kick(self, seconds: float) -> None:
        deadline = trio.current_time() + seconds
        while not self._kick.is_set() and trio.current_time() < deadline:
            with trio.move_on_after(min(SLEEP_SLICE_S, max(0.0, deadline - trio.current_time()))):
                await self._kick.wait()
            await self._sleep(0)
        self._kick = trio.Event()

    async def _poller(self, emit: trio.MemorySendChannel) -> None:
        while True:
            while self._paused:
                await self._wait_for_kick(math.inf)
            with trio.CancelScope() as self._session:
                self._conn.state = "connecting"
                async with httpx.AsyncClient(timeout=self.cfg.request_timeout_s) as http:
                    rpc = RpcClient(
                        http, reveal(self.cfg.rpc_url), self.stats, self._conn, sleep=self._sleep,
                        retry_base_s=self.cfg.retry_base_s, retry_cap_s=self.cfg.retry_cap_s,
                        max_retry_after_s=self.cfg.max_retry_after_s,
                    )
                    await self._polls(rpc, emit)
            self._session = None
            # A poll cut short by pause() or reconnect() owes its triggers a poll.
            self._triggers[:0], self._serving = self._serving, []
            if self._paused:
                for trigger in self._take_triggers():
                    trigger.summary = {"records": 0, "paused": True}
                    trigger.done.set()

    async def _polls(self, rpc: RpcClient, emit: trio.MemorySendChannel) -> None:
        if self._window is None:
            await self._resolve_decimals(rpc)
            self._window = await self._starting_window(rpc, emit)
        while True:
            self._serving = self._take_triggers()
            summary = await self._poll(rpc, emit)
            served, self._serving = self._serving, []
            for trigger in served:
                trigger.summary = summary
                trigger.done.set()
            await self._wait_for_kick(self.cfg.poll_interval_s)

    def _take_triggers(self) -> list[_Trigger]:
        taken, self._triggers = self._triggers, []
        return taken

    # --- start ----------------------------------------------------------------------------------

    async def _resolve_decimals(self, rpc: RpcClient) -> None:
        for address, token in self._tokens.items():
            if address in self._decimals or address in self._unusable:
                continue
            for attempt in range(1, DECIMALS_ATTEMPTS + 1):
                answer = await rpc.call("eth_call", protocol.decimals_call_params(address), _decode_decimals,
                                        pass_error=lambda error: True)
                self._progress_at = trio.current_time()
                if isinstance(answer, int):
                    self._decimals[address] = answer
                    log.info("token decimals read from the contract",
                             extra={"token": token.symbol, "address": address, "decimals": answer})
                    break
                reason = "no decimals() (empty answer)" if answer is None else f"{answer.code} {answer.message}"
                if answer is None or attempt == DECIMALS_ATTEMPTS:
                    self._unusable.add(address)
                    self.stats.incr("evm.tokens_unusable")
                    log.error("cannot read the token's decimals: not following it; set its decimals in the config",
                              extra={"token": token.symbol, "address": address, "reason": reason})
                    break
                await self._sleep(self.cfg.retry_base_s * attempt)

    async def _starting_window(self, rpc: RpcClient, emit: trio.MemorySendChannel) -> ChainWindow:
        if self._resume_at is not None:
            log.info("resuming after the last final block stored", extra={"chain": self.chain, "block": self._resume_at})
            return ChainWindow(self._resume_at)
        if self.cfg.start_block is not None:
            log.info("no checkpoint: starting at start_block", extra={"chain": self.chain, "block": self.cfg.start_block})
            return ChainWindow(self.cfg.start_block - 1)
        head = await self._block_number(rpc)
        final = max(0, head - self.cfg.confirmations)
        # Record the position now: a restart before the first final block must not move it.
        await emit.send([Checkpoint(VENUE, self.chain, final)])
        log.info("no checkpoint and no start_block: starting after the current final block",
                 extra={"chain": self.chain, "block": final})
        return ChainWindow(final)

    # --- one poll -------------------------------------------------------------------------------

    async def _poll(self, rpc: RpcClient, emit: trio.MemorySendChannel) -> dict:
        window = self._window
        head = await self._block_number(rpc)
        self._head = head
        safe = head - self.cfg.confirmations
        emitted = 0
        if head < window.tip:
            # A lagging node behind a load balancer, or a reorg to a shorter chain: wait until the
            # node is past our tip again; the hash check then tells which one it was.
            self.stats.incr("evm.node_behind")
            self._rl.log(log, logging.WARNING, "node_behind", "node's head is below blocks already read",
                         head=head, our_tip=window.tip)
        else:
            if window.blocks:
                await self._check_window(rpc)
            emitted += await self._emit_final_window(emit, safe)
            if not window.blocks and window.finalized < safe:
                emitted += await self._backfill(rpc, emit, safe)
            if window.tip >= safe and window.tip < head:
                await self._extend(rpc, head)
        self._update_gauges()
        return {"records": emitted, "head": head, "finalized": window.finalized, "window_blocks": len(window.blocks),
                "pending_transfers": window.pending_transfers}

    async def _check_window(self, rpc: RpcClient) -> None:
        window = self._window
        tip = window.tip
        header = await self._header(rpc, tip)
        if header is not None and header.hash == window.hash_at(tip):
            return
        fork = tip - 1
        while fork > window.finalized:
            header = await self._header(rpc, fork)
            if header is not None and header.hash == window.hash_at(fork):
                break
            fork -= 1
        if fork == window.finalized and window.finalized_hash is not None:
            header = await self._header(rpc, fork)
            if header is None or header.hash != window.finalized_hash:
                self.stats.incr("evm.deep_reorgs")
                log.error("reorg deeper than the confirmation depth: blocks already stored may be from an "
                          "abandoned branch; raise feeds.evm.confirmations",
                          extra={"chain": self.chain, "finalized_block": window.finalized,
                                 "confirmations": self.cfg.confirmations})
                window.finalized_hash = header.hash if header is not None else None
        self._on_reorg(tip, fork, "block hash changed")

    def _on_reorg(self, tip: int, fork: int, why: str) -> None:
        dropped = self._window.rollback(fork)
        self.stats.incr("evm.reorgs")
        self.stats.incr("evm.reorged_transfers_dropped", dropped)
        self.stats.set_gauge("evm.last_reorg_depth", tip - fork)
        log.info("reorg: dropped the unfinalized blocks above the fork point, reading them again",
                 extra={"chain": self.chain, "fork_block": fork, "depth": tip - fork, "transfers_dropped": dropped,
                        "why": why})

    async def _emit_final_window(self, emit: trio.MemorySendChannel, safe: int) -> int:
        window = self._window
        blocks = window.final_blocks(safe)
        if not blocks:
            return 0
        records: list[Record] = []
        for block in blocks:
            records.extend(self._flows(block.transfers.values(), block.header.timestamp, block.recv_us))
        last = blocks[-1].header
        flows = len(records)
        records.append(Checkpoint(VENUE, self.chain, last.number))
        await emit.send(records)  # before advancing: a poll cancelled here has emitted nothing
        window.advance(last.number, last.hash)
        self._emitted(flows, len(blocks))
        return flows

    async def _backfill(self, rpc: RpcClient, emit: trio.MemorySendChannel, safe: int) -> int:
        """Read final blocks finalized+1..safe straight into the sinks, one span at a time."""
        window = self._window
        first = window.finalized + 1
        progress = BackfillProgress(first, safe, trio.current_time(), self.cfg.progress_interval_s)
        long_run = progress.total > self._sizer.max_span
        if long_run:
            log.info("backfill: reading final blocks", extra={"chain": self.chain, "from_block": first,
                                                              "to_block": safe, "blocks": progress.total})
        emitted = 0
        while window.finalized < safe:
            start, end = self._sizer.next_range(window.finalized + 1, safe)
            transfers = await self._get_logs(rpc, start, end)
            if transfers is None:
                continue  # the span shrank
            recv_us = now_us()
            live = [t for t in transfers if not t.removed]
            if len(live) != len(transfers):
                self.stats.incr("evm.removed_logs", len(transfers) - len(live))
            stamped = await self._stamp(rpc, live)
            end_header = await self._header(rpc, end)
            if stamped is None or end_header is None:
                # A header disagreed with its logs (or the node lacks it): a node behind a balancer
                # or a reorg deeper than `confirmations`. Read this span again.
                self.stats.incr("evm.inconsistent_reads")
                self._rl.log(log, logging.WARNING, "inconsistent_final", "final blocks read inconsistently, rereading",
                             from_block=start, to_block=end)
                await self._sleep(self.cfg.retry_base_s)
                continue
            records: list[Record] = []
            for t, ts in stamped:
                records.extend(self._flows((t,), ts, recv_us))
            flows = len(records)
            records.append(Checkpoint(VENUE, self.chain, end))
            await emit.send(records)
            window.advance(end, end_header.hash)
            self._emitted(flows, end - start + 1)
            emitted += flows
            self._update_gauges()
            line = progress.advance(end, trio.current_time())
            if line is not None:
                log.info("backfill progress", extra={"chain": self.chain, **line})
        if long_run:
            log.info("backfill: caught up with the final blocks",
                     extra={"chain": self.chain, **progress.fields(trio.current_time())})
        return emitted

    async def _stamp(self, rpc: RpcClient, transfers: list[Transfer]) -> list[tuple[Transfer, int]] | None:
        """Each transfer with its block's timestamp, checking the block hash; None on a mismatch."""
        headers: dict[int, BlockHeader] = {}
        out = []
        for t in sorted(transfers, key=lambda t: (t.block_number, t.log_index)):
            if t.block_timestamp is not None:
                out.append((t, t.block_timestamp))
                continue
            header = headers.get(t.block_number)
            if header is None:
                header = await self._header(rpc, t.block_number)
                if header is None:
                    return None
                headers[t.block_number] = header
            if header.hash != t.block_hash:
                return None
            out.append((t, header.timestamp))
        return out

    async def _extend(self, rpc: RpcClient, head: int) -> None:
        """Read blocks tip+1..head (not final yet) into the window."""
        window = self._window
        start = window.tip + 1
        headers: list[BlockHeader] = []
        for number in range(start, head + 1):
            header = await self._header(rpc, number)
            if header is None:
                break  # the node does not have it yet
            headers.append(header)
        if not headers:
            return
        end = headers[-1].number
        transfers: list[Transfer] = []
        lo = start
        while lo <= end:
            a, b = self._sizer.next_range(lo, end)
            got = await self._get_logs(rpc, a, b)
            if got is not None:
                transfers.extend(got)
                lo = b + 1
        recv_us = now_us()
        again = await self._header(rpc, end)
        if again is None or again.hash != headers[-1].hash:
            self._inconsistent("the newest block changed while its logs were read", start, end)
            return
        # `removed: true` marks a log of a block that left the canonical chain (a node answering
        # right after a reorg). Such logs are never kept; one that names a block we just read as
        # canonical means the node contradicts itself, so nothing of this read is trusted.
        by_number = {h.number: h for h in headers}
        live: list[Transfer] = []
        for t in transfers:
            if not t.removed:
                live.append(t)
                continue
            self.stats.incr("evm.removed_logs")
            header = by_number.get(t.block_number)
            if header is not None and header.hash == t.block_hash:
                self._inconsistent("the node marks a log of a block it serves as canonical as removed", start, end)
                return
        reason = window.extend(headers, live, recv_us)
        if reason is not None:
            self._inconsistent(reason, start, end)

    def _inconsistent(self, reason: str, start: int, end: int) -> None:
        self.stats.incr("evm.inconsistent_reads")
        self._rl.log(log, logging.INFO, "inconsistent", "blocks changed while being read (a reorg); read again next poll",
                     reason=reason, from_block=start, to_block=end)

    # --- JSON-RPC -------------------------------------------------------------------------------

    async def _block_number(self, rpc: RpcClient) -> int:
        head = await rpc.call("eth_blockNumber", [], protocol.decode_quantity)
        self._progress_at = trio.current_time()
        return head

    async def _header(self, rpc: RpcClient, number: int) -> BlockHeader | None:
        header = await rpc.call("eth_getBlockByNumber", protocol.get_block_params(number), protocol.decode_block_header)
        self._progress_at = trio.current_time()
        if header is not None and header.number != number:
            self.stats.incr("evm.rpc.malformed.wrong_block")
            return None
        return header

    async def _get_logs(self, rpc: RpcClient, start: int, end: int) -> list[Transfer] | None:
        """Transfers of the followed tokens in start..end; None when the provider refused the span
        (it has shrunk: ask again). One block too big for one request is read a token at a time."""
        tokens = [a for a in self._active if a in self._decimals]
        if not tokens:
            return []
        result = await self._logs_request(rpc, start, end, tokens)
        if not isinstance(result, RpcError):
            self._sizer.on_success()
            return result
        self.stats.incr("evm.logs.range_too_large")
        if start < end:
            span = self._sizer.on_too_large((start, end), protocol.suggested_range(result))
            log.debug("eth_getLogs refused the range, shrinking", extra={"from_block": start, "to_block": end,
                                                                       "new_span": span, "error": result.message[:120]})
            return None
        out: list[Transfer] = []
        self.stats.incr("evm.logs.split_by_token")
        for token in tokens:
            while True:
                one = await self._logs_request(rpc, start, start, [token])
                if not isinstance(one, RpcError):
                    out.extend(one)
                    break
                self.stats.incr("evm.logs.unfetchable")
                self._rl.log(log, logging.ERROR, "unfetchable", "the provider refuses even one block of one token",
                             block=start, token=token, error=one.message[:160])
                await self._sleep(self.cfg.retry_cap_s)
        return out

    async def _logs_request(self, rpc: RpcClient, start: int, end: int, tokens: list[str]) -> list[Transfer] | RpcError:
        wanted = frozenset(tokens)

        def decode(raw: msgspec.Raw):
            return protocol.decode_transfers(raw, tokens=wanted, start=start, end=end)

        answer = await rpc.call("eth_getLogs", protocol.get_logs_params(start, end, tokens), decode,
                                pass_error=lambda error: protocol.classify_error(error) == protocol.RANGE_TOO_LARGE)
        self._progress_at = trio.current_time()
        if isinstance(answer, RpcError):
            return answer
        transfers, skipped = answer
        for problem in skipped:
            self.stats.incr(f"evm.decode_errors.{problem.kind}")
            self._rl.log(log, logging.WARNING, problem.kind, "log skipped", problem=problem.kind,
                         detail=problem.detail[:200])
        return transfers

    # --- records --------------------------------------------------------------------------------

    def _flows(self, transfers, timestamp: int, recv_us: int) -> list[OnchainFlow]:
        labels, decimals = self._labels, self._decimals
        ts_us = timestamp * 1_000_000
        return [
            OnchainFlow(self.chain, t.block_number, t.block_hash, t.tx_hash, t.log_index, ts_us, recv_us, t.token,
                        t.from_addr, t.to_addr, protocol.scale_amount(t.raw_amount, decimals[t.token]),
                        labels.get(t.from_addr), labels.get(t.to_addr))
            for t in sorted(transfers, key=lambda t: t.log_index)
        ]

    def _emitted(self, flows: int, blocks: int) -> None:
        stats = self.stats
        stats.incr("evm.transfers", flows)
        stats.incr("evm.blocks_finalized", blocks)
        stats.last_event_us[(VENUE, self.chain)] = now_us()

    def _update_gauges(self) -> None:
        window, stats = self._window, self.stats
        stats.set_gauge("evm.finalized_block", window.finalized)
        stats.set_gauge("evm.window_blocks", len(window.blocks))
        stats.set_gauge("evm.pending_transfers", window.pending_transfers)
        if self._head is not None:
            stats.set_gauge("evm.head_block", self._head)
            stats.set_gauge("evm.blocks_behind", max(0, self._head - self.cfg.confirmations - window.finalized))


def _decode_decimals(raw: msgspec.Raw) -> int | None | Problem:
    """decimals() result; None for "0x" (no contract or no such method at that address)."""
    if bytes(raw).strip() == b'"0x"':
        return None
    return protocol.decode_decimals(raw)


def _shown_url(url: Any) -> str:
    """What the stats socket may show of the RPC URL: providers put the API key in the path (or
    the whole URL is a secret), so scheme and host only."""
    if not isinstance(url, str):
        return str(url)  # a Secret: ***
    parts = httpx.URL(url)
    return f"{parts.scheme}://{parts.netloc.decode()}"


def _channel_depth(recv: trio.MemoryReceiveChannel) -> tuple[int, int]:
    s = recv.statistics()
    cap = s.max_buffer_size
    return s.current_buffer_used, (cap if not math.isinf(cap) else -1)
