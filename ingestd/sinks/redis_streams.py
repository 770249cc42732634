"""The Redis Streams sink: `trades:<PAIR>` streams in the format the replaced service published.

What users see (the seed service's contract, kept): one stream per pair, `trades:BTCUSDT`, every
field a string: exchange, pair, price, qty, ts (ISO 8601 UTC without offset, always with
microseconds: "2024-11-14T17:30:00.123456"), side, trade_id, and raw_json when enabled. Streams are
trimmed with `MAXLEN ~ stream_maxlen` (10000, $STREAM_MAXLEN). Book tops go to `books:<PAIR>`
(exchange, pair, ts, update_id, bid_px, bid_sz, ask_px, ask_sz, spread_bps, and bids/asks as JSON
`[[price, size], ...]`). Entry ids are Redis's own (`*`: server time in ms), as before.

Idempotency, and why not explicit entry ids
------------------------------------------
Deriving entry ids from exchange time and trade id (`<ts_ms>-<trade_id>`) would make Redis refuse a
replay, but Redis refuses every id at or below a stream's top, and ingestd legitimately stores trades
out of order: a REST backfill fills a gap after later live trades were stored, and a resume refetches
from the checkpoint. Those late trades must be stored once, not refused. So de-duplication is done
by a Lua script that runs atomically in Redis, one call per market (venue, symbol) per batch:

- `ingestd:floor:<stream>` (hash, field `<venue>:<symbol>`) holds the market's FLOOR F: every trade id
  <= F is in the stream already (or was given up on, see the window below).
- `ingestd:above:<stream>:<venue>:<symbol>` (sorted set) remembers the ids stored ABOVE F, i.e. the
  trades stored ahead of a hole. It does not exist in the steady state.
- For each trade, ascending by id: id <= F, or id in the set, is a duplicate (skipped and counted);
  anything else is XADDed. If id == F + 1 the floor moves up, and on over any remembered ids that
  now join it (the set shrinks as a backfill fills the hole); otherwise id goes into the set.
- A Checkpoint(venue, symbol, C) in the batch raises F to C (every trade <= C was emitted before
  the checkpoint, so it is stored), drops the set below it, and records C in
  `ingestd:checkpoints:<venue>` (field symbol, only ever raised) in the SAME script, after the
  trades. `resume_points(venue)` reads that hash back.
- One `XTRIM MAXLEN ~` per stream per call.

Venues with dense ids (Binance `t` and `a` go up by one) keep the fast path: id == F + 1, one
comparison, no set at all. Venues with sparse ids keep their ids in the set until the next
checkpoint (the feeds send one per tick) folds them into F. Book tops use a simpler rule per market,
"last stored update id": a snapshot whose update_id is not above the last stored one is a duplicate
or stale, and skipped. A new record kind (derivatives) is one more `StreamKind` entry below.

Every script reads all of its keys before its first write, so a wrong key type fails the call before
it changes anything; Redis runs a script to the end once it has written (an OOM refusal comes only at
its first write), and AOF and replicas get its effects as one MULTI/EXEC, so a stream and its floor
never disagree, even across a Redis crash. Because the scripts are atomic, two ingestd processes
writing the same market at once (a successor taking over) still store each trade once.

Limits, honestly:
- The window: at most `dedup_window` ids (100,000 by default) are remembered above a floor. When a
  hole stays open longer than that, the floor is raised past the lowest remembered ids; trades in
  the holes it jumps over are from then on refused as duplicates (logged as a warning with the
  range, counted in `sink.<name>.dedup_window_overflows`). 100,000 is minutes of live trades on
  the busiest pair. An open hole costs ~96 bytes per remembered id (a stream entry costs ~87).
- A market's floor is unknown until its first checkpoint (nothing below its first stored id can be
  assumed stored: a backfill from another sink's resume point may still come), so its first trades
  take the remembered-set path. The Binance feed checkpoints every 250 ms; a future feed that never
  checkpoints would keep every market on that path (about twice the Redis CPU per trade) with up to
  `dedup_window` ids per market in memory.
- Trade and update ids must be integers in [0, 2**53) (Lua numbers are doubles); others are refused
  with a logged reason. So are records whose strings cannot be UTF-8 encoded (lone surrogates).
- The dedup keys are Redis keys: if they are deleted, or evicted (a `maxmemory-policy allkeys-*`
  server; logged as a warning at open), an old trade replayed afterwards is stored again. Deleting
  the trade streams themselves (the runbook's "Clear Streams") is fine: the floors stay.
- Book tops are de-duplicated by "above the last stored update id": an older snapshot arriving after
  a newer one is skipped as stale.
- Redis Cluster is not supported (a call's keys are not in one hash slot).
- raw_json holds the normalized record as JSON (the model carries no venue bytes).

Durability is the server's: a write is acknowledged once Redis has applied it; with the usual
`appendonly yes`, `appendfsync everysec` a crash of the Redis host may lose the last second, and the
checkpoints with it (same script, same AOF transaction), so the resume refetches what was lost.
Connection errors and timeouts (5 s) raise SinkError at once (one immediate retry covers a
connection closed while idle); the pipeline retries the batch with backoff and the client
reconnects. A server that is down at open() is not fatal; a refused login is.

Speed: a batch is one pipelined round trip of EVALSHA calls, one per market, each carrying its
records as one msgpack string that the script unpacks with Redis's bundled cmsgpack (so the client
packs one argument per market instead of 15 per trade). bench/redis_sink.py, 2 cores shared with
other benchmarks (records/s swing up to 2x with the load; CPU per record does not), redis-server 7.0
with AOF everysec, 20 pairs, every record checked with XLEN/XRANGE afterwards:

    sink alone, batch 5000 / 1000          110k-150k / 80k-140k trades/s stored
    replay of the same (all duplicates)    300k-380k/s
    the de-duplication's cost              Redis CPU 4.0-4.4 us/trade vs 3.4 us for a bare pipelined
                                           XADD; client CPU 1.9 us/trade vs 20 us for redis-py XADDs
    late path (ahead of a hole / backfill) 90k / 115k trades/s (Redis 8.6 / 6.1 us/trade)
    beside a GIL-busy thread, batch 5000   35k-63k trades/s
    whole SinkRunner, producer decoding    75k-110k trades/s
    10k trades/s offered, linger 5 ms      exchange -> stored p50 7 ms, p99 16 ms; write p99 8 ms
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable, Sequence

import msgspec

from ingestd.model import BookTop, Checkpoint, Record, Trade
from ingestd.secrets import Secret, reveal
from ingestd.sinks.base import Sink, SinkError
from ingestd.stats import StatsRegistry

logger = logging.getLogger("ingestd.sinks.redis")

DEFAULT_DEDUP_WINDOW = 100_000
DEFAULT_TIMEOUT_S = 5.0
# Ids travel as msgpack integers and are compared as Lua numbers (IEEE doubles).
MAX_ID = 1 << 53
# Records per script call at most: a call holds Redis for ~4.4 µs a record, so ~35 ms at this size.
MAX_RECORDS_PER_CALL = 8192

KEY_PREFIX = "ingestd:"


def checkpoints_key(venue: str) -> str:
    return f"{KEY_PREFIX}checkpoints:{venue}"


def floors_key(stream: str) -> str:
    return f"{KEY_PREFIX}floor:{stream}"


def above_key(stream: str, venue: str, symbol: str) -> str:
    return f"{KEY_PREFIX}above:{stream}:{venue}:{symbol}"


# --- the script ----------------------------------------------------------------------------------
# KEYS: stream, floors hash, above set, checkpoints hash
# ARGV: mode ("ids" | "last"), scope (floors field "<venue>:<symbol>"), symbol (checkpoints field),
#       maxlen (0 = no trim), window, checkpoint ("" = none), msgpack data:
#       [nconst, nvar, const name/value pairs..., var names..., id1, values1..., id2, ...], ids ascending
# Returns {added, duplicates, overflow, floor before, floor after} (floors as strings, "" = none).
SCRIPT = r"""
local stream, floors, above, checkpoints = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode, scope, symbol = ARGV[1], ARGV[2], ARGV[3]
local maxlen, window = tonumber(ARGV[4]), tonumber(ARGV[5])
local checkpoint = tonumber(ARGV[6])
local data = cmsgpack.unpack(ARGV[7])
local fmt = string.format

-- Every key is read before the first write: a wrong type fails the call before it changes anything.
local floor = tonumber(redis.call('HGET', floors, scope))
local start_floor = floor
local stored_checkpoint = nil
if checkpoint ~= nil then stored_checkpoint = tonumber(redis.call('HGET', checkpoints, symbol)) end
local card, lowest = 0, nil
local function find_lowest()
  if card > 0 then lowest = tonumber(redis.call('ZRANGE', above, 0, 0, 'WITHSCORES')[2]) else lowest = nil end
end
if mode == 'ids' then card = redis.call('ZCARD', above); find_lowest() end
redis.call('XLEN', stream)

-- Fold remembered ids that the floor has reached into it, a run of up to 1024 per round trip into
-- the set; afterwards floor + 1 is never in the set.
local function settle()
  while lowest ~= nil and floor ~= nil and lowest <= floor + 1 do
    local run = redis.call('ZRANGE', above, 0, 1023, 'WITHSCORES')
    local k = 0
    for j = 2, #run, 2 do
      local id = tonumber(run[j])
      if id > floor + 1 then break end
      if id == floor + 1 then floor = id end
      k = k + 1
    end
    redis.call('ZREMRANGEBYRANK', above, 0, k - 1)
    card = card - k
    find_lowest()
  end
end

local nconst, nvar = data[1], data[2]
local args = {'XADD', stream, '*'}
local pos = 3
for k = 1, 2 * nconst do pos = pos + 1; args[pos] = data[2 + k] end
local names = 2 + 2 * nconst
local slots = {}
for k = 1, nvar do
  args[pos + 1] = data[names + k]
  slots[k] = pos + 2
  pos = pos + 2
end

local added, duplicates = 0, 0
for i = names + nvar + 1, #data, nvar + 1 do
  local id = data[i]
  local fresh
  if floor ~= nil and id <= floor then
    fresh = false
  elseif floor ~= nil and id == floor + 1 then
    fresh = true
  elseif card > 0 and id >= lowest and redis.call('ZSCORE', above, fmt('%.0f', id)) then
    fresh = false
  else
    fresh = true
  end
  if fresh then
    for k = 1, nvar do args[slots[k]] = data[i + k] end
    redis.call(unpack(args))
    added = added + 1
    if mode == 'last' then
      floor = id
    elseif floor ~= nil and id == floor + 1 then
      floor = id
      if card > 0 then settle() end
    else
      redis.call('ZADD', above, id, fmt('%.0f', id))
      card = card + 1
      if lowest == nil or id < lowest then lowest = id end
    end
  else
    duplicates = duplicates + 1
  end
end

if checkpoint ~= nil then
  if mode == 'ids' and (floor == nil or checkpoint > floor) then
    floor = checkpoint
    if card > 0 and lowest <= floor then
      card = card - redis.call('ZREMRANGEBYSCORE', above, '-inf', fmt('%.0f', floor))
      find_lowest()
    end
    settle()
  end
  if stored_checkpoint == nil or checkpoint > stored_checkpoint then
    redis.call('HSET', checkpoints, symbol, fmt('%.0f', checkpoint))
  end
end

local overflow = 0
if card > window then
  overflow = card - window
  local top = tonumber(redis.call('ZRANGE', above, overflow - 1, overflow - 1, 'WITHSCORES')[2])
  redis.call('ZREMRANGEBYRANK', above, 0, overflow - 1)
  card = window
  if floor == nil or top > floor then floor = top end
  find_lowest()
  settle()
end

if floor ~= nil and floor ~= start_floor then redis.call('HSET', floors, scope, fmt('%.0f', floor)) end
if added > 0 and maxlen > 0 then redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen) end
local function show(f) if f == nil then return '' end return fmt('%.0f', f) end
return {added, duplicates, overflow, show(start_floor), show(floor)}
"""


# --- field encoding ------------------------------------------------------------------------------

_encode_json = msgspec.json.Encoder().encode
_encode_msgpack = msgspec.msgpack.Encoder().encode


def format_number(x: float) -> str:
    """Shortest round-trip decimal, never in exponent form ("0.00001", not "1e-05")."""
    s = repr(x)
    if "e" in s:
        s = format(Decimal(s), "f")
    return s


class IsoTime:
    """µs since the epoch -> "2024-11-14T17:30:00.123456" (UTC, no offset, as the seed service wrote).

    The date and time of day are cached per second: trades of one batch share a few seconds.
    """

    def __init__(self) -> None:
        self._seconds: dict[int, str] = {}

    def __call__(self, ts_us: int) -> str:
        sec, us = divmod(ts_us, 1_000_000)
        head = self._seconds.get(sec) or self.head(sec)
        return f"{head}.{us:06d}"

    def head(self, sec: int) -> str:
        """"2024-11-14T17:30:00" for a whole second since the epoch (cached)."""
        head = self._seconds.get(sec)
        if head is None:
            if len(self._seconds) > 4096:
                self._seconds.clear()
            head = self._seconds[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        return head


@dataclass(frozen=True)
class StreamKind:
    """How one record KIND is stored: which stream, which natural id, which fields.

    Every record of a kind carries `venue` and `symbol`, which become the constant fields `exchange`
    and `pair` of each entry; `fields` are the per-record ones, and `encode` appends, per record, its
    id followed by those fields' string values to a flat list.
    """

    kind: str
    template_option: str  # the RedisSinkConfig attribute with the stream key template
    mode: str  # "ids": each id stored once, late ones welcome; "last": only ids above the last stored
    natural_id: Callable[[Any], int]
    fields: Callable[[bool], tuple[str, ...]]  # raw_json -> per-record field names
    encode: Callable[[list, list, bool, IsoTime], None]  # (records, out, raw_json, iso) -> None


def _trade_fields(raw_json: bool) -> tuple[str, ...]:
    names = ("price", "qty", "ts", "side", "trade_id")
    return names + ("raw_json",) if raw_json else names


def _encode_trades(trades: list[Trade], out: list, raw_json: bool, iso: IsoTime) -> None:
    # The hot loop of the sink (~1 µs a trade): format_number and IsoTime inlined.
    add = out.extend
    heads = iso._seconds
    for t in trades:
        price, qty = repr(t.price), repr(t.qty)
        if "e" in price:
            price = format_number(t.price)
        if "e" in qty:
            qty = format_number(t.qty)
        sec, us = divmod(t.ts_us, 1_000_000)
        ts = f"{heads.get(sec) or iso.head(sec)}.{us:06d}"
        if raw_json:
            add((t.trade_id, price, qty, ts, str(t.side), str(t.trade_id), _encode_json(t).decode()))
        else:
            add((t.trade_id, price, qty, ts, str(t.side), str(t.trade_id)))


_BOOK_FIELDS = ("ts", "update_id", "bid_px", "bid_sz", "ask_px", "ask_sz", "spread_bps", "bids", "asks")


def _encode_books(books: list[BookTop], out: list, raw_json: bool, iso: IsoTime) -> None:
    add = out.extend
    num = format_number
    for b in books:
        add((
            b.update_id, iso(b.ts_us), str(b.update_id), num(b.bid_px), num(b.bid_sz), num(b.ask_px),
            num(b.ask_sz), num(b.spread_bps), _encode_json(b.bids).decode(), _encode_json(b.asks).decode(),
        ))


STREAM_KINDS: dict[str, StreamKind] = {
    Trade.KIND: StreamKind(
        Trade.KIND, "trades_stream", "ids", lambda t: t.trade_id, _trade_fields, _encode_trades
    ),
    BookTop.KIND: StreamKind(
        BookTop.KIND, "books_stream", "last", lambda b: b.update_id, lambda raw: _BOOK_FIELDS, _encode_books
    ),
    # Derivatives (funding, open interest, liquidations) get an entry here once the model has them:
    # template_option="derivatives_stream", mode "last" for periodic values keyed by time, "ids" for
    # liquidations keyed by a venue id.
}


def stream_key(template: str, venue: str, symbol: str) -> str:
    return template.format(symbol=symbol, venue=venue)


def _check_template(option: str, template: str) -> None:
    try:
        stream_key(template, "venue", "SYMBOL")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{option} = {template!r}: only {{symbol}} and {{venue}} may be substituted ({exc!r})"
        ) from None


def describe_url(url: str) -> str:
    """host:port/db of a Redis URL, never its user name or password (for logs and messages)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 6379
    except ValueError:
        return "redis (unparsable URL)"
    path = parts.path.lstrip("/") or "0"
    return f"{parts.scheme}://{host}:{port}/{path}"


@dataclass
class _Call:
    """One script call: a market's records of one kind (and its checkpoint), ready to send."""

    kind: StreamKind
    venue: str
    symbol: str
    stream: str
    keys: tuple[bytes, ...]
    args: tuple[bytes | str | int, ...]
    records: int


class RedisStreamsSink(Sink):
    """Stores trades and book tops in Redis Streams, de-duplicated by a server-side script.

    The pipeline calls it from a worker thread, one call at a time; a lock still guards the client
    so `resume_points` is safe from another thread.
    """

    def __init__(
        self,
        name: str,
        cfg: Any,
        *,
        stats: StatsRegistry | None = None,
        dedup_window: int = DEFAULT_DEDUP_WINDOW,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        if dedup_window < 1:
            raise ValueError("dedup_window must be at least 1")
        self.name = name
        self._url: str | Secret = cfg.url  # revealed only when connecting
        self.maxlen = int(cfg.stream_maxlen)
        self.raw_json = bool(cfg.raw_json)
        self.templates: dict[str, str] = {}
        for kind in STREAM_KINDS.values():
            template = getattr(cfg, kind.template_option)
            _check_template(kind.template_option, template)
            self.templates[kind.kind] = template
        self.dedup_window = dedup_window
        self.timeout_s = timeout_s
        self.where = describe_url(reveal(cfg.url))
        self._stats = stats
        self._rows_written = f"sink.{name}.rows_written"
        self._duplicates_skipped = f"sink.{name}.duplicates_skipped"
        self._batches = f"sink.{name}.batches"
        self._refused = f"sink.{name}.records_refused"
        self._overflows = f"sink.{name}.dedup_window_overflows"
        self._client: Any = None
        self._sha: str | None = None
        self._lock = threading.Lock()
        self._iso = IsoTime()

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> None:
        """Create the client and load the script. An unreachable server is not fatal here (every
        write retries it); a refused login or a server without Lua is."""
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        with self._lock:
            if self._client is not None:
                return
            try:
                client = redis.Redis.from_url(
                    reveal(self._url),
                    socket_timeout=self.timeout_s,
                    socket_connect_timeout=self.timeout_s,
                    # One immediate retry covers a connection the server closed while idle (a
                    # restart); anything longer is the pipeline's backoff, not a hidden stall here.
                    retry=Retry(NoBackoff(), 1),
                    client_name="ingestd-" + re.sub(r"[^A-Za-z0-9_.-]", "_", self.name),
                )
            except ValueError as exc:  # malformed URL; the message may hold the URL, so not shown
                raise SinkError(f"{self.name}: invalid Redis URL ({type(exc).__name__})") from None
            self._client = client
            try:
                if client.eval("return type(cmsgpack)", 0) != b"table":
                    raise redis.ResponseError("its Lua has no cmsgpack library, which the sink's script needs")
                self._sha = client.script_load(SCRIPT)
            except redis.AuthenticationError as exc:  # a ConnectionError subclass, but no retry fixes it
                self._client = None
                client.close()
                raise SinkError(f"{self.name}: {self.where} refused the login: {exc}") from exc
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                logger.warning("sink %s: %s is not reachable yet (%s); writes will retry", self.name, self.where, exc)
                return
            except redis.RedisError as exc:
                self._client = None
                client.close()
                raise SinkError(f"{self.name}: {self.where} refused the sink's setup: {exc}") from exc
            self._describe_server(client)
        logger.info("sink %s: writing to %s (MAXLEN ~ %d)", self.name, self.where, self.maxlen)

    def _describe_server(self, client: Any) -> None:
        """Warn about server settings that break the sink's promises (best effort: ACLs may refuse)."""
        import redis

        try:
            info = client.info("server") | client.info("persistence") | client.info("memory")
        except redis.RedisError:
            return
        policy = str(info.get("maxmemory_policy", ""))
        if policy.startswith("allkeys"):
            logger.warning(
                "sink %s: %s has maxmemory-policy %s: it may evict streams and the de-duplication keys",
                self.name, self.where, policy,
            )
        logger.info(
            "sink %s: redis %s, appendonly %s, appendfsync %s",
            self.name, info.get("redis_version", "?"), "yes" if info.get("aof_enabled") else "no",
            _config_get(client, "appendfsync"),
        )

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:  # must not raise
                logger.warning("sink %s: error while closing: %s", self.name, exc)

    # --- writing -------------------------------------------------------------------------------

    def write(self, batch: Sequence[Record]) -> None:
        if not batch:
            return
        import redis

        calls, refused = self._calls(batch)
        results: list = []
        if calls:
            with self._lock:
                client = self._connection()
                try:
                    results = self._execute(client, calls)
                except redis.RedisError as exc:
                    raise SinkError(f"{self.name}: write of {len(batch)} records to {self.where} failed: {exc}") from exc
        added = duplicates = overflows = 0
        for call, (n_added, n_dups, overflow, floor_before, floor_after) in zip(calls, results):
            added += n_added
            duplicates += n_dups
            if overflow:
                overflows += overflow
                logger.warning(
                    "sink %s: stream %s, %s:%s had more than %d ids stored ahead of a hole; the floor moved from %s"
                    " to %s, and trades at or below it that are still missing will be refused as duplicates",
                    self.name, _printable(call.stream), call.venue, _printable(call.symbol), self.dedup_window,
                    _text(floor_before) or "none", _text(floor_after),
                )
        stats = self._stats
        if stats is not None:
            stats.incr(self._rows_written, added)
            stats.incr(self._duplicates_skipped, duplicates)
            stats.incr(self._batches)
            if refused:
                stats.incr(self._refused, refused)
            if overflows:
                stats.incr(self._overflows, overflows)

    def _execute(self, client: Any, calls: list[_Call]) -> list:
        """Run every call in one pipelined round trip; reload the script once if the server lost it
        (a restart empties the script cache). Raises the first failed call's error."""
        from redis.exceptions import NoScriptError, ResponseError

        if self._sha is None:
            self._sha = client.script_load(SCRIPT)
        results: list = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                call = calls[i]
                pipe.evalsha(self._sha, len(call.keys), *call.keys, *call.args)
            replies = pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, replies):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(reply, Exception):
                    call = calls[i]
                    raise ResponseError(
                        f"{call.kind.kind}s of {call.venue}:{call.symbol!r} to stream {call.stream!r}: {reply}"
                    )
                else:
                    results[i] = reply
            if not missing:
                break
            self._sha = client.script_load(SCRIPT)
            todo = missing
        return results

    def _calls(self, batch: Sequence[Record]) -> tuple[list[_Call], int]:
        """Group the batch by (kind, venue, symbol), each group sorted by id, with its checkpoint."""
        groups: dict[tuple[str, str, str], list] = {}
        checkpoints: dict[tuple[str, str], int] = {}
        for record in batch:
            try:
                kind = record.KIND
            except AttributeError:
                raise TypeError(f"RedisStreamsSink cannot store {record!r}") from None
            if kind == Checkpoint.KIND:
                key = (record.venue, record.symbol)
                checkpoints[key] = max(record.trade_id, checkpoints.get(key, record.trade_id))
                continue
            if kind not in STREAM_KINDS:
                # A programming error, not a store failure: no retry can fix it, so not a SinkError.
                raise TypeError(f"RedisStreamsSink cannot store {record!r}")
            group = groups.get((kind, record.venue, record.symbol))
            if group is None:
                group = groups[(kind, record.venue, record.symbol)] = []
            group.append(record)
        for venue, symbol in checkpoints:
            groups.setdefault((Trade.KIND, venue, symbol), [])

        calls: list[_Call] = []
        refused = 0
        for (kind_name, venue, symbol), records in groups.items():
            kind = STREAM_KINDS[kind_name]
            checkpoint = checkpoints.get((venue, symbol)) if kind_name == Trade.KIND else None
            if checkpoint is not None and not 0 <= checkpoint < MAX_ID:
                logger.warning("sink %s: refused checkpoint %r of %s:%s: not in [0, 2**53)",
                               self.name, checkpoint, venue, _printable(symbol))
                refused += 1
                checkpoint = None
            try:
                stream = stream_key(self.templates[kind_name], venue, symbol)
                keys = (
                    stream.encode(), floors_key(stream).encode(), above_key(stream, venue, symbol).encode(),
                    checkpoints_key(venue).encode(),
                )
                scope, symbol_bytes = f"{venue}:{symbol}".encode(), symbol.encode()
            except UnicodeEncodeError as exc:
                logger.warning("sink %s: refused %d %ss of %s:%s: the name is not valid text (%s)",
                               self.name, len(records), kind_name, venue, _printable(symbol), exc.reason)
                refused += len(records) + (checkpoint is not None)
                continue
            records, bad = self._storable(kind, records)
            refused += bad
            if not records and checkpoint is None:
                continue
            const = ("exchange", venue, "pair", symbol)  # str: cmsgpack knows no msgpack bin type
            names = kind.fields(self.raw_json)
            step = MAX_RECORDS_PER_CALL
            chunks = [records[k : k + step] for k in range(0, len(records), step)] or [[]]
            for n, chunk in enumerate(chunks):
                head = [2, len(names), *const, *names]
                try:
                    packed = self._pack(kind, head, chunk)
                except (UnicodeEncodeError, TypeError, ValueError, OverflowError, msgspec.EncodeError):
                    chunk, bad = self._encodable(kind, chunk)
                    refused += bad
                    packed = self._pack(kind, head, chunk)
                cp = b"" if checkpoint is None or n < len(chunks) - 1 else str(checkpoint).encode()
                args = (kind.mode, scope, symbol_bytes, self.maxlen, self.dedup_window, cp, packed)
                calls.append(_Call(kind, venue, symbol, stream, keys, args, len(chunk)))
        return calls, refused

    def _pack(self, kind: StreamKind, head: list, records: list) -> bytes:
        data = list(head)
        kind.encode(records, data, self.raw_json, self._iso)
        return _encode_msgpack(data)

    def _storable(self, kind: StreamKind, records: list) -> tuple[list, int]:
        """The records sorted by id, without those whose id cannot be compared exactly in Lua."""
        natural_id = kind.natural_id
        ids = [natural_id(r) for r in records]
        if all(type(i) is int and 0 <= i < MAX_ID for i in ids):
            if any(b < a for a, b in zip(ids, ids[1:])):
                order = sorted(range(len(records)), key=ids.__getitem__)
                records = [records[i] for i in order]
            return records, 0
        keep = []
        for record, rid in zip(records, ids):
            if type(rid) is int and 0 <= rid < MAX_ID:
                keep.append((rid, record))
            else:
                self._refuse(kind, record, f"id {rid!r} is not an integer in [0, 2**53)")
        keep.sort(key=lambda pair: pair[0])
        return [record for _, record in keep], len(records) - len(keep)

    def _encodable(self, kind: StreamKind, records: list) -> tuple[list, int]:
        """The records whose fields encode (the slow path, taken only when a whole chunk did not)."""
        keep = []
        for record in records:
            try:
                self._pack(kind, [], [record])
            except Exception as exc:
                self._refuse(kind, record, f"cannot encode it ({type(exc).__name__}: {exc})")
            else:
                keep.append(record)
        return keep, len(records) - len(keep)

    def _refuse(self, kind: StreamKind, record: Any, reason: str) -> None:
        logger.warning("sink %s: refused a %s of %s:%s: %s", self.name, kind.kind, record.venue,
                       _printable(record.symbol), reason)

    # --- reading -------------------------------------------------------------------------------

    def resume_points(self, venue: str) -> dict[str, int]:
        import redis

        with self._lock:
            client = self._connection()
            try:
                stored = client.hgetall(checkpoints_key(venue))
            except redis.RedisError as exc:
                raise SinkError(f"{self.name}: cannot read checkpoints from {self.where}: {exc}") from exc
        return {symbol.decode(): int(trade_id) for symbol, trade_id in stored.items()}

    def _connection(self) -> Any:
        if self._client is None:
            raise SinkError(f"{self.name}: sink is not open")
        return self._client


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _config_get(client: Any, name: str) -> str:
    import redis

    try:
        return str(client.config_get(name).get(name, "?"))
    except redis.RedisError:
        return "?"


def _printable(text: str) -> str:
    """A name as it can go into a log line: quoted, control characters escaped, at most 200 chars."""
    shown = repr(text)
    return shown if len(shown) <= 200 else shown[:197] + "..."
