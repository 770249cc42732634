"""The simulated Ethereum JSON-RPC node: POST JSON-RPC 2.0 (single or batch) on the RPC port, the
/_sim/* control endpoints on their own port (so /_sim/drop never cuts the test's own request).

Methods: eth_chainId, net_version, eth_blockNumber, eth_getBlockByNumber, eth_getBlockByHash,
eth_getLogs (fromBlock/toBlock or blockHash, address, topics), eth_call of decimals() and symbol().

Faults, per request and seeded (ingestd.sim.http_server.FaultDice), all stopped by /_sim/calm:
- drop: the connection closes without an answer;
- rate_limit: HTTP 429 with Retry-After (Infura's body), or HTTP 200 with Infura's -32005
  "daily request count exceeded, request rate limited";
- error: a transient node error, -32000 "header not found";
- malformed: the real answer cut in half, a proxy's HTML 502 page, a reply to another id, a reply
  with neither result nor error, or a log whose block number is not hex;
- removed (--removed-rate): an eth_getLogs answer also carries the logs of abandoned blocks in its
  range with `removed: true`, as a node does for a filter right after a reorg.
Provider limits, not faults (they stay after calm): --max-logs N refuses an eth_getLogs that would
return more than N logs, in Infura's shape (-32005 with a block range that fits) or Alchemy's
(-32602 "Log response size exceeded", no range), or alternating.
Reorgs: every --reorg-every blocks, the newest --reorg-depth blocks are replaced by a new branch.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass

import trio
from eth_abi import encode as abi_encode

from ingestd.sim.evm.chain import TOKENS, SimBlock, SimChain
from ingestd.sim.http_server import DROP, FaultDice, HttpRequest, HttpResponse, HttpServer

DECIMALS_SELECTOR = "0x313ce567"
SYMBOL_SELECTOR = "0x95d89b41"
LIMIT_STYLES = ("infura", "alchemy", "both")
_HEX = re.compile(r"0x[0-9a-fA-F]+")


@dataclass
class SimOptions:
    seed: int = 1
    chain: str = "ethereum"
    chain_id: int = 1
    first_block: int = 19_000_000
    initial_blocks: int = 20
    block_interval_s: float = 1.0
    tokens: int = 3
    transfers_per_block: float = 3.0
    reorg_every: int = 0  # blocks; 0: never
    reorg_depth: int = 3
    max_logs: int = 0  # 0: no limit
    limit_style: str = "infura"
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    malformed_rate: float = 0.0
    drop_rate: float = 0.0
    removed_rate: float = 0.0


class RpcFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class EvmSim:
    def __init__(self, options: SimOptions) -> None:
        if not 1 <= options.tokens <= len(TOKENS):
            raise ValueError(f"tokens must be 1 to {len(TOKENS)}")
        if options.limit_style not in LIMIT_STYLES:
            raise ValueError(f"limit style must be one of {', '.join(LIMIT_STYLES)}")
        self.options = options
        self.tokens = TOKENS[: options.tokens]
        self.chain = SimChain(options.seed, options.first_block, self.tokens, options.transfers_per_block)
        for _ in range(max(1, options.initial_blocks)):
            self.chain.produce()
        self.dice = FaultDice(options.seed, error=options.error_rate, rate_limit=options.rate_limit_rate,
                              malformed=options.malformed_rate, drop=options.drop_rate)
        self._rng = random.Random(f"{options.seed}:sim")
        self.rpc_server = HttpServer(self.handle_rpc)
        self.control_server = HttpServer(self.handle_control)
        self.paused = False
        self.calm = False
        self.produced = 0
        self.requests = 0
        self.range_errors = 0
        self.removed_injected = 0
        self._alchemy_next = options.limit_style == "alchemy"

    # --- the chain over time ----------------------------------------------------------------------

    async def run_blocks(self) -> None:
        while True:
            await trio.sleep(self.options.block_interval_s)
            if not self.paused:
                self.step()

    def step(self) -> None:
        """One block time: maybe a reorg of the newest blocks, then a new block on top."""
        self.produced += 1
        every = self.options.reorg_every
        if every and not self.calm and self.produced % every == 0:
            self.chain.reorg(self.options.reorg_depth)
        self.chain.produce()

    # --- JSON-RPC -----------------------------------------------------------------------------------

    async def handle_rpc(self, req: HttpRequest):
        if req.method != "POST":
            return HttpResponse.json(b'{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"POST only"}}', 405)
        self.requests += 1
        try:
            doc = json.loads(req.body)
        except ValueError:
            return _reply_json({"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "parse error"}})
        first_id = (doc[0].get("id") if doc and isinstance(doc[0], dict) else None) if isinstance(doc, list) \
            else (doc.get("id") if isinstance(doc, dict) else None)
        fault = self.dice.roll()
        if fault == "drop":
            return DROP
        if fault == "rate_limit":
            return self._rate_limited(first_id)
        if fault == "error":
            return _reply_json({"jsonrpc": "2.0", "id": first_id, "error": {"code": -32000, "message": "header not found"}})
        if isinstance(doc, list):
            answer: object = [self._answer(call) for call in doc] if doc else \
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "empty batch"}}
        else:
            answer = self._answer(doc)
        if fault == "malformed":
            return self._malformed(answer, first_id)
        return _reply_json(answer)

    def _rate_limited(self, request_id) -> HttpResponse:
        if self._rng.random() < 0.5:
            body = {"jsonrpc": "2.0", "id": request_id,
                    "error": {"code": -32005, "message": "project ID request rate exceeded",
                              "data": {"backoff_seconds": self.options.retry_after_s}}}
            return HttpResponse.json(json.dumps(body).encode(), 429, [("Retry-After", str(self.options.retry_after_s))])
        return _reply_json({"jsonrpc": "2.0", "id": request_id,
                            "error": {"code": -32005, "message": "daily request count exceeded, request rate limited"}})

    def _malformed(self, answer: object, request_id) -> HttpResponse:
        variant = self._rng.randrange(5)
        body = json.dumps(answer).encode()
        if variant == 0:
            return HttpResponse.json(body[: len(body) // 2])
        if variant == 1:
            return HttpResponse(502, b"<html><head><title>502 Bad Gateway</title></head><body>bad gateway</body></html>",
                                [("Content-Type", "text/html")])
        if variant == 2:
            return _reply_json({"jsonrpc": "2.0", "id": 987654321, "result": "0x1"})
        if variant == 3:
            return _reply_json({"jsonrpc": "2.0", "id": request_id})
        result = answer.get("result") if isinstance(answer, dict) else None
        if isinstance(result, list) and result and isinstance(result[0], dict) and "blockNumber" in result[0]:
            broken = [dict(entry) for entry in result]
            broken[0]["blockNumber"] = "0xZZ"
            return _reply_json({**answer, "result": broken})
        return HttpResponse.json(body[: len(body) // 2])

    def _answer(self, call: object) -> dict:
        request_id = call.get("id") if isinstance(call, dict) else None
        try:
            if not isinstance(call, dict) or not isinstance(call.get("method"), str):
                raise RpcFailure(-32600, "invalid request")
            params = call.get("params") or []
            if not isinstance(params, list):
                raise RpcFailure(-32602, "invalid params: expected an array")
            result = self._call(call["method"], params)
        except RpcFailure as exc:
            return {"jsonrpc": "2.0", "id": request_id, "error": {"code": exc.code, "message": exc.message}}
        return {"jsonrpc": "2.0", "id": request_id, "result": result}

    def _call(self, method: str, params: list) -> object:
        chain = self.chain
        if method == "eth_chainId":
            return hex(self.options.chain_id)
        if method == "net_version":
            return str(self.options.chain_id)
        if method == "eth_blockNumber":
            return hex(chain.head)
        if method == "eth_getBlockByNumber":
            block = chain.block(self._block_number(params[0] if params else None))
            return self._serve_block(block)
        if method == "eth_getBlockByHash":
            block_hash = params[0] if params and isinstance(params[0], str) else ""
            return self._serve_block(chain.block_by_hash(block_hash.lower()))
        if method == "eth_getLogs":
            return self._get_logs(params[0] if params else None)
        if method == "eth_call":
            return self._eth_call(params[0] if params else None)
        raise RpcFailure(-32601, f"the method {method} does not exist/is not available")

    def _serve_block(self, block: SimBlock | None) -> dict | None:
        if block is None:
            return None
        block.served = True
        return block.to_json()

    def _block_number(self, tag: object) -> int:
        if tag in ("latest", "pending", "safe", "finalized", None):
            return self.chain.head
        if tag == "earliest":
            return self.chain.first_block
        if isinstance(tag, str) and _HEX.fullmatch(tag):
            return int(tag, 16)
        raise RpcFailure(-32602, f"invalid argument 0: hex string without 0x prefix or bad block tag: {tag!r}")

    def _get_logs(self, flt: object) -> list[dict]:
        if not isinstance(flt, dict):
            raise RpcFailure(-32602, "invalid argument 0: expected a filter object")
        addresses = flt.get("address")
        if isinstance(addresses, str):
            addresses = [addresses]
        if addresses is not None and not (isinstance(addresses, list) and all(isinstance(a, str) for a in addresses)):
            raise RpcFailure(-32602, "invalid argument 0: address must be a string or an array of strings")
        wanted = {a.lower() for a in addresses} if addresses is not None else None
        topics = flt.get("topics") or []
        if not isinstance(topics, list):
            raise RpcFailure(-32602, "invalid argument 0: topics must be an array")
        chain = self.chain
        if "blockHash" in flt:
            block = chain.block_by_hash(str(flt["blockHash"]).lower())
            if block is None:
                raise RpcFailure(-32000, "unknown block")
            blocks, start, end = [block], block.number, block.number
        else:
            start = self._block_number(flt.get("fromBlock", "latest"))
            end = self._block_number(flt.get("toBlock", "latest"))
            if start > end:
                raise RpcFailure(-32602, "invalid block range params")
            if end > chain.head:
                raise RpcFailure(-32000, "block range extends beyond current head block")
            blocks = chain.canonical_range(start, end)
        logs = chain.logs(blocks, wanted, topics)
        limit = self.options.max_logs
        if limit and len(logs) > limit:
            self.range_errors += 1
            raise self._too_many(start, end, wanted, topics, limit)
        for block in blocks:
            block.served = True
        for log in logs:
            log.served = True
        answer = [log.to_json() for log in logs]
        if self.options.removed_rate and not self.calm and self._rng.random() < self.options.removed_rate:
            stale = chain.logs(chain.abandoned_range(start, end), wanted, topics)
            if stale:
                self.removed_injected += len(stale)
                answer.extend(log.to_json(removed=True) for log in stale)
        return answer

    def _too_many(self, start: int, end: int, wanted: set[str] | None, topics: list, limit: int) -> RpcFailure:
        alchemy = self._alchemy_next
        if self.options.limit_style == "both":
            self._alchemy_next = not self._alchemy_next
        if alchemy:
            return RpcFailure(-32602, "Log response size exceeded. You can make eth_getLogs requests with up to a 2K "
                                      "block range and no limit on the response size, or you can request any block "
                                      "range with a cap of 10K logs in the response.")
        fits, count = start, 0
        for block in self.chain.canonical_range(start, end):
            count += len(self.chain.logs([block], wanted, topics))
            if count > limit:
                break
            fits = block.number
        return RpcFailure(-32005, f"query returned more than {limit} results. "
                                  f"Try with this block range [{hex(start)}, {hex(fits)}].")

    def _eth_call(self, call: object) -> str:
        if not isinstance(call, dict) or not isinstance(call.get("to"), str):
            raise RpcFailure(-32602, "invalid argument 0: expected a call object with `to`")
        to = call["to"].lower()
        data = str(call.get("data") or call.get("input") or "0x").lower()
        token = next((t for t in self.tokens if t.address == to), None)
        if token is None:
            return "0x"  # no contract there: an empty answer, as a node gives
        if data.startswith(DECIMALS_SELECTOR):
            return "0x" + abi_encode(["uint8"], [token.decimals]).hex()
        if data.startswith(SYMBOL_SELECTOR):
            return "0x" + abi_encode(["string"], [token.symbol]).hex()
        raise RpcFailure(3, "execution reverted")

    # --- control --------------------------------------------------------------------------------------

    async def handle_control(self, req: HttpRequest):
        name = req.path[len("/_sim/"):] if req.path.startswith("/_sim/") else ""
        if name == "truth" and req.method == "GET":
            confirmations = req.query.get("confirmations")
            try:
                depth = int(confirmations) if confirmations is not None else None
            except ValueError:
                return HttpResponse.json(b'{"error":"confirmations must be an integer"}', 400)
            return _reply_json(self.truth(depth))
        if req.method != "POST":
            return HttpResponse.json(b'{"error":"unknown control endpoint"}', 404)
        if name == "calm":
            self.dice.calm()
            self.calm = True
            return _reply_json({"calm": True})
        if name == "pause":
            self.paused = True
            return _reply_json({"paused": True, "head": self.chain.head})
        if name == "resume":
            self.paused = False
            return _reply_json({"paused": False, "head": self.chain.head})
        if name == "drop":
            return _reply_json({"dropped": self.rpc_server.drop_all()})
        if name == "reorg":
            depth = int(req.query.get("depth", self.options.reorg_depth))
            old = self.chain.reorg(depth)
            return _reply_json({"replaced": [b.number for b in old], "head": self.chain.head})
        if name == "step":
            self.step()
            return _reply_json({"head": self.chain.head})
        return HttpResponse.json(b'{"error":"unknown control endpoint"}', 404)

    def truth(self, confirmations: int | None) -> dict:
        """The canonical chain's transfers (up to head - confirmations when given), the abandoned
        branches' transfers (`abandoned_served`: how many went out while still canonical), and
        what the faults did."""
        chain = self.chain
        last = chain.head - confirmations if confirmations is not None else chain.head
        transfers = [log.transfer for block in chain.canonical_range(chain.first_block, last)
                     for log in block.logs if log.transfer is not None]
        abandoned = [log.transfer for block in chain.abandoned for log in block.logs if log.transfer is not None]
        served = sum(1 for block in chain.abandoned for log in block.logs if log.transfer is not None and log.served)
        return {
            "chain": self.options.chain,
            "head": chain.head,
            "last_block": last,
            "first_block": chain.first_block,
            "tokens": [{"address": t.address, "symbol": t.symbol, "decimals": t.decimals} for t in self.tokens],
            "transfers": transfers,
            "abandoned": abandoned,
            "abandoned_served": served,
            "reorgs": chain.reorgs,
            "range_errors": self.range_errors,
            "removed_injected": self.removed_injected,
            "requests": self.requests,
            "faults": dict(self.dice.counts),
        }


def _reply_json(doc: object) -> HttpResponse:
    return HttpResponse.json(json.dumps(doc).encode())
