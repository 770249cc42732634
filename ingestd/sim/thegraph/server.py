"""The simulated The Graph gateway: POST /api/<key>/subgraphs/id/<id> answering the Uniswap v3
queries ingestd sends, plus the /_sim/* control endpoints.

GraphQL is parsed just enough: the root fields named in the query (`pool`, `ticks`, `_meta`,
`bundle`) pick the answer and the variables fill it; `block: {number: $block}` time-travels. Blocks
advance every --block-interval seconds of wall time (frozen by /_sim/pause).

Ground truth (GET /_sim/truth): every complete pool read served, i.e. a pool answer followed by the
last page of its ticks (a page shorter than `first`) at the same block, with the exact JSON served,
so a test can recompute each DexMetric the feed should have stored, depth included.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import trio

from ingestd.sim.http_server import DROP, FaultDice, HttpRequest, HttpResponse, HttpServer
from ingestd.sim.thegraph.pools import FIRST_BLOCK, PoolUniverse, pool_specs

DEFAULT_SUBGRAPH_ID = "5zvR82QoaXYFyDEKLZ9t6v9adgnptxYpKpSbxtgVENFV"
_PATH = re.compile(r"^(?:/api/(?P<key>[^/]+))?/subgraphs/id/(?P<id>[^/?]+)$")
_ROOT_FIELDS = re.compile(r"\b(_meta|bundle|pool|ticks)\s*[({]")


@dataclass
class SimOptions:
    seed: int = 1
    pools: int = 3
    block_interval_s: float = 1.0
    api_key: str = ""  # required in the path when set
    subgraph_id: str = DEFAULT_SUBGRAPH_ID
    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    retry_after_s: int = 1
    malformed_rate: float = 0.0
    drop_rate: float = 0.0


class GraphSim:
    def __init__(self, options: SimOptions) -> None:
        self.options = options
        self.universe = PoolUniverse(pool_specs(options.pools), options.seed)
        self.dice = FaultDice(options.seed, error=options.error_rate, rate_limit=options.rate_limit_rate,
                              malformed=options.malformed_rate, drop=options.drop_rate)
        self.server = HttpServer(self.handle)
        self._started = trio.current_time()
        self._frozen_block: int | None = None
        self.requests = 0
        # (pool, block) -> the pool JSON served and how many complete reads used it
        self.reads: dict[tuple[str, int], dict] = {}

    # --- blocks ---------------------------------------------------------------------------------

    def current_block(self) -> int:
        if self._frozen_block is not None:
            return self._frozen_block
        return FIRST_BLOCK + int((trio.current_time() - self._started) / self.options.block_interval_s)

    # --- HTTP -----------------------------------------------------------------------------------

    async def handle(self, req: HttpRequest):
        if req.path.startswith("/_sim/"):
            return self._control(req)
        match = _PATH.match(req.path)
        if req.method != "POST" or match is None:
            return HttpResponse.json(b'{"errors":[{"message":"not found"}]}', 404)
        if self.options.api_key and match["key"] != self.options.api_key:
            return HttpResponse.json(b'{"errors":[{"message":"auth error: malformed API key"}]}', 401)
        if match["id"] != self.options.subgraph_id:
            return _errors(f"subgraph not found: {match['id']}")
        self.requests += 1
        fault = self.dice.roll()
        if fault == "drop":
            return DROP
        if fault == "rate_limit":
            return HttpResponse.json(b'{"errors":[{"message":"Too many requests"}]}', 429,
                                     [("Retry-After", str(self.options.retry_after_s))])
        if fault == "error":
            return _errors("indexing_error: store error: canceling statement due to statement timeout")
        if fault == "malformed":
            return HttpResponse.json(b'{"data": {"pool": {"id": "0x', 200)
        try:
            doc = json.loads(req.body)
            query, variables = doc["query"], doc.get("variables") or {}
        except (ValueError, KeyError, TypeError):
            return _errors("invalid GraphQL request body")
        roots = set(_ROOT_FIELDS.findall(query))
        if "ticks" in roots:
            return self._ticks(query, variables)
        if "pool" in roots:
            return self._pool(variables, roots)
        return _errors("unsupported query: this simulator answers the pool and ticks queries of ingestd")

    def _pool(self, variables: dict, roots: set[str]) -> HttpResponse:
        address = str(variables.get("pool", "")).lower()
        block = self.current_block()
        data: dict = {}
        if "_meta" in roots:
            data["_meta"] = {"block": {"number": block, "timestamp": self.universe.block_ts(block)}}
        if "bundle" in roots:
            data["bundle"] = {"ethPriceUSD": self.universe.eth_price_usd(block)}
        state = self.universe.state(address, block)
        data["pool"] = state.pool_json() if state is not None else None
        if state is not None:
            entry = self.reads.setdefault((address, block), {"served": 0, "complete": 0, "windows": []})
            entry["served"] += 1
            entry["response"] = {"data": data}
        return HttpResponse.json(json.dumps({"data": data}).encode())

    def _ticks(self, query: str, variables: dict) -> HttpResponse:
        try:
            address = str(variables["pool"]).lower()
            lo, hi = int(variables["lo"]), int(variables["hi"])
            after = str(variables.get("after", ""))
            block = int(variables["block"]) if "block" in query else self.current_block()
            first = int(variables.get("first", 100))
        except (KeyError, ValueError, TypeError) as exc:
            return _errors(f"Variable error: {exc}")
        if not 0 <= first <= 1000:
            return _errors("The `first` argument must be between 0 and 1000")
        if block > self.current_block():
            return _errors(f"subgraph has only indexed up to block number {self.current_block()} "
                           f"and data for block number {block} is therefore not yet available")
        state = self.universe.state(address, block)
        rows = [r for r in state.ticks_in(lo, hi) if r[0] > after] if state is not None else []
        page = rows[:first]
        if len(page) < first and (address, block) in self.reads:
            entry = self.reads[(address, block)]
            entry["complete"] += 1
            entry["windows"].append([lo, hi])
        ticks = [{"id": i, "tickIdx": str(t), "liquidityNet": str(n)} for i, t, n in page]
        return HttpResponse.json(json.dumps({"data": {"ticks": ticks}}).encode())

    # --- control --------------------------------------------------------------------------------

    def _control(self, req: HttpRequest):
        name = req.path[len("/_sim/"):]
        if name == "truth" and req.method == "GET":
            return HttpResponse.json(json.dumps(self.truth()).encode())
        if req.method != "POST":
            return HttpResponse.json(b'{"error":"unknown control endpoint"}', 404)
        if name == "calm":
            self.dice.calm()
            return HttpResponse.json(b'{"calm":true}')
        if name == "pause":
            self._frozen_block = self.current_block()
            return HttpResponse.json(json.dumps({"paused": True, "block": self._frozen_block}).encode())
        if name == "resume":
            if self._frozen_block is not None:
                # Carry on from the frozen block rather than jumping ahead by the paused time.
                self._started = trio.current_time() - (self._frozen_block - FIRST_BLOCK) * self.options.block_interval_s
                self._frozen_block = None
            return HttpResponse.json(b'{"paused":false}')
        if name == "drop":
            return HttpResponse.json(json.dumps({"dropped": self.server.drop_all()}).encode())
        return HttpResponse.json(b'{"error":"unknown control endpoint"}', 404)

    def truth(self) -> dict:
        reads = []
        for (address, block), entry in sorted(self.reads.items()):
            if entry["complete"]:
                state = self.universe.state(address, block)
                windows = {tuple(w) for w in entry["windows"]}
                reads.append({
                    "pool": address,
                    "block": block,
                    "complete": entry["complete"],
                    "response": entry["response"],
                    # every initialized tick of each window read, as (tickIdx, liquidityNet)
                    "ticks": {f"{lo}:{hi}": [[t, n] for _, t, n in state.ticks_in(lo, hi)] for lo, hi in windows},
                })
        return {"reads": reads, "requests": self.requests, "faults": dict(self.dice.counts),
                "block": self.current_block()}


def _errors(message: str) -> HttpResponse:
    """GraphQL errors come with HTTP 200."""
    return HttpResponse.json(json.dumps({"errors": [{"message": message}]}).encode())
