"""The Redis Streams sink: `trades:<PAIR>` streams in the format the replaced service published.

What users see (the seed service's contract, kept): one stream per pair, `trades:BTCUSDT`, every
field a string: exchange, pair, price, qty, ts (ISO 8601 UTC without offset, always with
microseconds: "2024-11-14T17:30:00.123456"), side, trade_id, and raw_json when enabled. Streams are
trimmed with `MAXLEN ~ stream_maxlen` (10000, $STREAM_MAXLEN). Book tops go to `books:<PAIR>`
(exchange, pair, ts, update_id, bid_px, bid_sz, ask_px, ask_sz, spread_bps, and bids/asks as JSON
`[[price, size], ...]`). Entry ids are Redis's own (`*`: server time in ms), as before.

The other record kinds
----------------------
Each goes to streams of its own, one stream per scope (the template option and its default; every
placeholder must appear in it, see below):

    Derivative       derivatives_stream        derivatives:{venue}:{symbol}  derivatives:bybit:BTCUSDT
    DexMetric        dex_stream                dex:{chain}:{pool}            dex:ethereum:0x88e6...5640
    OnchainFlow      flows_stream              flows:{chain}:{token}         flows:ethereum:0xa0b8...eb48
    Price            prices_stream             prices:{source}:{coin_id}     prices:coingecko:bitcoin
    PredictionBook   prediction_books_stream   {venue}:books:{asset}         polymarket:books:<token id>
    PredictionTrade  prediction_trades_stream  {venue}:trades:{asset}        polymarket:trades:<token id>
    WhaleTrade       whales_stream             whales:{address}              whales:0x1f2d...d0cf

Every field is a string, like the trades': the scope first (`exchange`/`pair`, `chain`/`pool_address`,
`chain`/`token`, `source`/`coin_id`, `exchange`/`asset_id`, `trader_address`), then the record's
fields under their model names, times as ISO 8601 like `ts` (`ts`, `recv_ts`, `next_funding_ts`,
`detected_at`), numbers in shortest round-trip decimal, big integers and amounts as the model's
exact decimal strings, book levels as JSON, and an absent (None) value as "". Streams are trimmed
with `MAXLEN ~ stream_maxlen` like the rest.

Entry ids come from the record's own time, so a consumer can XRANGE by exchange/block/poll time:
`<ms>-<µs * 1,000,000 + n>`, where ms and µs are the record's `ts_us` and n counts records of the same
stream at the same microsecond (0 for derivatives, DEX metrics and prices, whose natural key is their
time; transfers of one block, or two books of one timestamp, get 0, 1, 2, ...). The feeds produce each
scope in time order (a ticker, a pool poll, blocks in order, a book channel, one whale's trades), which
is why a stream holds one scope: a template without one of its placeholders would interleave two
sequences and is refused by the config. SLOT_SCRIPT appends a record with that id when its time is
above the stream's last entry. Otherwise it looks the record up by its identity, its `ts` and key
fields (block_hash + log_index, book_hash, tx_hash, trade_id + token_id; the time alone for
derivatives, DEX metrics and prices), among that microsecond's entries and in the stream's late set
`ingestd:late:<stream>` (a sorted set of identities scored by record time): found is a duplicate
(skipped, counted). Not found, it is stored once: in its microsecond if that is the top's, else it is
a late record, one that arrived after a later one of its stream (Polymarket's REST backfill filling a
gap after later live trades were stored, a whale trade detected late, prices backfilled behind live
ones). Redis cannot insert it in the middle, so it gets the next id above the stream's top (in the
top's microsecond, n + 1) and its identity goes into the late set; counted in
`sink.<name>.late_added`. Such an entry's id is in arrival order, not its time's: its own `ts` field
carries the record time, and an XRANGE by time finds it beside the records that were latest when it
arrived. (Not `*`, the server's clock: that would lift the top above the live records still to come,
sending them down this path too, and for records timed in the past, a backfill's, for good.) A
derivative, DEX metric or price at the time of an entry is a duplicate; one between entries is late.

Trimming is the one limit. Once `MAXLEN ~` (or an XDEL) has removed entries, a record no later than
one that may have been removed (below the first entry left) cannot be told apart from a record stored
and trimmed away; if it is not found it is refused, never stored twice: logged as a warning and
counted in `sink.<name>.late_refused` (and records_refused). Redis before 7.0 cannot tell whether
anything was removed (XINFO has no entries-added), so there a late record older than the stream's
first entry is refused even if nothing was trimmed. The same trim drops the late set's members that
old, so every member left belongs to an entry still in the stream: the late set is never longer than
its stream (~200 bytes a member for prediction trades). A late record costs an XRANGE of its
microsecond, a ZSCORE and a ZADD besides its XADD: ~22k-34k/s against ~41k-54k/s in order (20,000
prediction trades in batches of 1,000, on the 2 shared cores below). Deleting a stream resets its ids,
and the next write to it deletes its late set, so a replay after that is stored again. Times must be
in (0, 2**53) µs; a record that cannot be encoded (lone surrogates, a time the C library cannot
convert) is refused alone with a logged reason.

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
or stale, and skipped. (The other kinds use explicit entry ids instead, above; a new kind is one more
`EntryKind` entry.)

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
  server; logged as a warning at open), an old trade replayed afterwards is stored again, and so is a
  late record of the other kinds (its late set gone). Deleting the trade streams themselves (the
  runbook's "Clear Streams") is fine: the floors stay.
- Book tops are de-duplicated by "above the last stored update id": an older snapshot arriving after
  a newer one is skipped as stale.
- Redis Cluster is not supported (a call's keys, a stream and its late set or floors, are not in one
  hash slot).
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
    10k trades/s offered, linger 5 ms      exchange -> stored p50 7 ms, p99 16-22 ms; write p99 8-9 ms
    10k trades/s offered, linger 10 ms     p50 10-12 ms, p99 26 ms (121 ms in a run at load 3.4)
    10k trades/s offered, linger 50 ms     p50 38-40 ms, p99 76 ms
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

from ingestd.model import (
    BookTop,
    Checkpoint,
    Derivative,
    DexMetric,
    OnchainFlow,
    PredictionBook,
    PredictionTrade,
    Price,
    Record,
    Trade,
    WhaleTrade,
)
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


def late_key(stream: str) -> str:
    """The sorted set of the records stored late in one of the other kinds' streams."""
    return f"{KEY_PREFIX}late:{stream}"


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


# --- the script for the other kinds: explicit entry ids from the record's time --------------------
# Entry id <ms>-<us * 1e6 + n>: ms and us (0-999) are the record's time, n counts records of one
# stream at one microsecond (0 for kinds with one record per time). A record above the stream's
# last-generated id takes that id (the fast path). Any other is looked up by its identity (its `ts`
# and key fields) in its microsecond's entries ("slot") and in the stream's late set: found is a
# duplicate. Not found, it is stored: in its own slot if that is the top's and has room, else "late",
# with the next id above the top and its identity added to the late set (scored by its time), unless
# it is no later than a removed (trimmed, XDELed) entry could be: then it is refused, reported back
# by position, as it cannot be told from a record that was stored and trimmed away.
# KEYS: stream, late set. ARGV: maxlen (0 = no trim), msgpack data:
#   [nconst, nvar, nkey, const name/value pairs..., var names..., identity var positions (1-based)...,
#    then per record: ms, us, var values...], records ascending by (ms, us)
# Returns {added, duplicates, added late, refused, positions of the refused records (0-based)...}.
SLOT_SCRIPT = r"""
local stream, late = KEYS[1], KEYS[2]
local maxlen = tonumber(ARGV[1])
local data = cmsgpack.unpack(ARGV[2])
local fmt = string.format
local SLOT = 1000000
local EXACT = 9007199254740992  -- 2^53: integers up to here are exact Lua numbers

local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- Every key is read before the first write: a wrong type fails the call before it changes anything.
-- The stream's last-generated id (above every id it ever held, trimmed or deleted ones included), and
-- what tells whether entries were ever removed from it.
local top_ms, top_seq = -1, 0
local length, entries_added, max_deleted, first_id = 0, nil, nil, nil
local kind = redis.call('TYPE', stream)['ok']
if kind == 'stream' then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    local name, value = info[i], info[i + 1]
    if name == 'last-generated-id' then top_ms, top_seq = parse_id(value)
    elseif name == 'length' then length = value
    elseif name == 'entries-added' then entries_added = value  -- Redis >= 7.0
    elseif name == 'max-deleted-entry-id' then max_deleted = value  -- Redis >= 7.0
    elseif name == 'first-entry' and value then first_id = value[1]
    end
  end
elseif kind ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. stream .. ' holds a ' .. kind .. ', not a stream')
end
local late_type = redis.call('TYPE', late)['ok']
if late_type ~= 'zset' and late_type ~= 'none' then
  return redis.error_reply('WRONGTYPE ' .. late .. ' holds a ' .. late_type .. ', not a sorted set')
end
local late_card = 0
if late_type == 'zset' then late_card = redis.call('ZCARD', late) end

-- The latest record time (us) that an entry removed from the stream may have had: each entry's id is
-- at or above its record's time, and XTRIM removes the ids below the first one left, XDEL up to
-- max-deleted-entry-id. Ids of one microsecond are us * SLOT + n, so unless the first entry left is
-- the first of its microsecond (n = 0), others of that microsecond may be gone.
local function removed_up_to(first)
  local h
  if first == nil then
    h = top_ms * 1000 + math.floor(top_seq / SLOT)
  else
    local ms, seq = parse_id(first)
    h = ms * 1000 + math.floor(seq / SLOT)
    if seq % SLOT == 0 then h = h - 1 end
  end
  if max_deleted ~= nil then
    local ms, seq = parse_id(max_deleted)
    if ms > 0 or seq > 0 then h = math.max(h, ms * 1000 + math.floor(seq / SLOT)) end
  end
  return h
end
-- nil when nothing was ever removed (Redis < 7.0 cannot tell: then the first entry bounds it).
local horizon = nil
if kind == 'stream' and (entries_added == nil or entries_added > length) then horizon = removed_up_to(first_id) end

local nconst, nvar, nkey = data[1], data[2], data[3]
local args = {'XADD', stream, ''}
local pos = 3
for k = 1, 2 * nconst do pos = pos + 1; args[pos] = data[3 + k] end
local names_at = 3 + 2 * nconst
local slots, key_of_name, keypos = {}, {}, {}
for k = 1, nvar do
  args[pos + 1] = data[names_at + k]
  slots[k] = pos + 2
  pos = pos + 2
end
for k = 1, nkey do
  keypos[k] = data[names_at + nvar + k]
  key_of_name[data[names_at + keypos[k]]] = k
end

-- A record's identity: its identity fields (ts first, then its key fields), length-prefixed so no two
-- differ only in where one value ends. It is also the record's member in the late set.
local function record_key(v)
  local parts = {}
  for k = 1, nkey do local s = data[v + keypos[k] - 1]; parts[k] = #s .. ':' .. s end
  return table.concat(parts)
end
local function entry_key(fields)
  local vals = {}
  for j = 1, #fields, 2 do
    local k = key_of_name[fields[j]]
    if k then vals[k] = fields[j + 1] end
  end
  local parts = {}
  for k = 1, nkey do local s = vals[k] or ''; parts[k] = #s .. ':' .. s end
  return table.concat(parts)
end

local slot_ms, slot_us, slot_keys = nil, nil, nil
local function load_slot(ms, us)
  if slot_ms == ms and slot_us == us then return end
  slot_ms, slot_us, slot_keys = ms, us, {}
  local lo = us * SLOT
  for _, entry in ipairs(redis.call('XRANGE', stream, fmt('%.0f-%.0f', ms, lo), fmt('%.0f-%.0f', ms, lo + SLOT - 1))) do
    slot_keys[entry_key(entry[2])] = true
  end
end

-- A deleted stream takes its late set with it (its ids start again; a replay is stored again).
if kind == 'none' and late_card > 0 then redis.call('DEL', late); late_card = 0 end

local added, duplicates, late_added, refused = 0, 0, 0, {}
local n = 0
for i = names_at + nvar + nkey + 1, #data, nvar + 2 do
  local ms, us, v = data[i], data[i + 1], i + 2
  local top_us = math.floor(top_seq / SLOT)
  local id, remember = nil, nil
  if ms > top_ms or (ms == top_ms and us > top_us) then
    id = fmt('%.0f-%.0f', ms, us * SLOT)
    top_ms, top_seq = ms, us * SLOT
    slot_ms, slot_us, slot_keys = ms, us, {}
    slot_keys[record_key(v)] = true
  else
    load_slot(ms, us)
    local key = record_key(v)
    if slot_keys[key] or (late_card > 0 and redis.call('ZSCORE', late, key)) then
      duplicates = duplicates + 1
    elseif horizon ~= nil and ms * 1000 + us <= horizon then
      refused[#refused + 1] = n
    elseif ms == top_ms and us == top_us and top_seq + 1 < (us + 1) * SLOT then
      top_seq = top_seq + 1
      id = fmt('%.0f-%.0f', ms, top_seq)
      slot_keys[key] = true
    else
      -- Late: the next id above the top (not the server clock's `*`, which would lift the top past
      -- the records still to come), and remembered by identity.
      if top_ms < EXACT and top_seq + 1 < EXACT then
        top_seq = top_seq + 1
        id = fmt('%.0f-%.0f', top_ms, top_seq)
      else
        id = '*'  -- a top set by something else, beyond exact numbers: Redis picks the next id
      end
      remember = key
    end
  end
  if id ~= nil then
    args[3] = id
    for k = 1, nvar do args[slots[k]] = data[v + k - 1] end
    local got = redis.call(unpack(args))
    if id == '*' then top_ms, top_seq = parse_id(got) end
    added = added + 1
    if remember ~= nil then
      redis.call('ZADD', late, fmt('%.0f', ms * 1000 + us), remember)
      late_card = late_card + 1
      late_added = late_added + 1
    end
  end
  n = n + 1
end

-- Trimming bounds the late set: members no later than an entry removed can go, such records are
-- refused anyway. Every member left belongs to an entry still in the stream.
if added > 0 and maxlen > 0 then
  local trimmed = redis.call('XTRIM', stream, 'MAXLEN', '~', maxlen)
  if trimmed > 0 and late_card > 0 then
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    redis.call('ZREMRANGEBYSCORE', late, '-inf', fmt('%.0f', removed_up_to(first and first[1])))
  end
end
local out = {added, duplicates, late_added, #refused}
for k = 1, #refused do out[4 + k] = refused[k] end
return out
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
}


# --- the other kinds: one stream per natural scope, entry ids from the record's time --------------


def _opt_num(x: float | None) -> str:
    return "" if x is None else format_number(x)


def _opt_int(x: int | None) -> str:
    return "" if x is None else str(int(x))


def _opt_str(x: str | None) -> str:
    return "" if x is None else x


def _opt_time(us: int | None, iso: IsoTime) -> str:
    return "" if us is None else iso(us)


def _levels(levels: list) -> str:
    return _encode_json(levels).decode()


@dataclass(frozen=True)
class EntryKind:
    """How one of the other record kinds is stored (see "The other record kinds" above).

    `scope` names the template placeholders and reads their values from a record: the stream holds
    exactly one scope, so its entry ids (from `ts_us`) form one sequence. `const` are the scope's
    fields as they appear in every entry (name, placeholder); `encode` gives a record's other field
    values, in the order of `fields`; `key` are the fields that tell two records of one microsecond
    apart (none: one record per microsecond). A record's identity is its `ts` and its key fields.
    """

    kind: str
    template_option: str
    scope: tuple[tuple[str, Callable[[Any], str]], ...]
    const: tuple[tuple[str, str], ...]
    fields: tuple[str, ...]
    key: tuple[str, ...]
    encode: Callable[[Any, IsoTime], tuple]

    @property
    def identity(self) -> tuple[str, ...]:
        """The fields that identify a record: its time, then its key (what SLOT_SCRIPT compares)."""
        return ("ts", *self.key)

    def scope_of(self, record: Any) -> tuple[str, ...]:
        return tuple(get(record) for _, get in self.scope)

    def stream_for(self, template: str, scope: tuple[str, ...]) -> str:
        return template.format(**{name: value for (name, _), value in zip(self.scope, scope)})


def _attr(name: str) -> Callable[[Any], str]:
    return lambda record: getattr(record, name)


ENTRY_KINDS: dict[str, EntryKind] = {
    Derivative.KIND: EntryKind(
        Derivative.KIND, "derivatives_stream",
        scope=(("venue", _attr("venue")), ("symbol", _attr("symbol"))),
        const=(("exchange", "venue"), ("pair", "symbol")),
        fields=("ts", "funding_rate", "next_funding_ts", "open_interest", "open_interest_value", "mark_price",
                "index_price", "basis", "recv_ts"),
        key=(),
        encode=lambda r, iso: (
            iso(r.ts_us), _opt_num(r.funding_rate), _opt_time(r.next_funding_us, iso), _opt_num(r.open_interest),
            _opt_num(r.open_interest_value), _opt_num(r.mark_price), _opt_num(r.index_price), _opt_num(r.basis),
            iso(r.recv_us),
        ),
    ),
    DexMetric.KIND: EntryKind(
        DexMetric.KIND, "dex_stream",
        scope=(("chain", _attr("chain")), ("pool", _attr("pool_address"))),
        const=(("chain", "chain"), ("pool_address", "pool")),
        fields=("ts", "liquidity", "tvl_usd", "volume_24h_usd", "price", "depth_2pct_usd", "recv_ts"),
        key=(),
        encode=lambda r, iso: (
            iso(r.ts_us), r.liquidity, _opt_num(r.tvl_usd), _opt_num(r.volume_24h_usd), _opt_num(r.price),
            _opt_num(r.depth_2pct_usd), iso(r.recv_us),
        ),
    ),
    OnchainFlow.KIND: EntryKind(
        OnchainFlow.KIND, "flows_stream",
        scope=(("chain", _attr("chain")), ("token", _attr("token"))),
        const=(("chain", "chain"), ("token", "token")),
        fields=("ts", "block_number", "block_hash", "tx_hash", "log_index", "from_addr", "to_addr", "amount",
                "from_tag", "to_tag", "recv_ts"),
        key=("block_hash", "log_index"),
        encode=lambda r, iso: (
            iso(r.ts_us), str(int(r.block_number)), r.block_hash, r.tx_hash, str(int(r.log_index)), r.from_addr,
            r.to_addr, r.amount, _opt_str(r.from_tag), _opt_str(r.to_tag), iso(r.recv_us),
        ),
    ),
    Price.KIND: EntryKind(
        Price.KIND, "prices_stream",
        scope=(("source", _attr("source")), ("coin_id", _attr("coin_id"))),
        const=(("source", "source"), ("coin_id", "coin_id")),
        fields=("symbol", "ts", "price_usd", "market_cap", "market_cap_rank", "total_volume", "high_24h", "low_24h",
                "price_change_24h", "price_change_pct_24h", "circulating_supply", "recv_ts"),
        key=(),
        encode=lambda r, iso: (
            r.symbol, iso(r.ts_us), _opt_num(r.price_usd), _opt_num(r.market_cap), _opt_int(r.market_cap_rank),
            _opt_num(r.total_volume), _opt_num(r.high_24h), _opt_num(r.low_24h), _opt_num(r.price_change_24h),
            _opt_num(r.price_change_pct_24h), _opt_num(r.circulating_supply), iso(r.recv_us),
        ),
    ),
    PredictionBook.KIND: EntryKind(
        PredictionBook.KIND, "prediction_books_stream",
        scope=(("venue", _attr("venue")), ("asset", _attr("asset_id"))),
        const=(("exchange", "venue"), ("asset_id", "asset")),
        fields=("market", "ts", "book_hash", "best_bid", "best_ask", "bids", "asks", "recv_ts"),
        key=("book_hash",),
        encode=lambda r, iso: (
            r.market, iso(r.ts_us), r.book_hash, _opt_num(r.best_bid), _opt_num(r.best_ask), _levels(r.bids),
            _levels(r.asks), iso(r.recv_us),
        ),
    ),
    PredictionTrade.KIND: EntryKind(
        PredictionTrade.KIND, "prediction_trades_stream",
        scope=(("venue", _attr("venue")), ("asset", _attr("asset_id"))),
        const=(("exchange", "venue"), ("asset_id", "asset")),
        fields=("market", "ts", "price", "size", "side", "tx_hash", "fee_rate_bps", "recv_ts"),
        key=("tx_hash",),
        encode=lambda r, iso: (
            r.market, iso(r.ts_us), format_number(r.price), format_number(r.size), r.side, r.tx_hash,
            _opt_num(r.fee_rate_bps), iso(r.recv_us),
        ),
    ),
    WhaleTrade.KIND: EntryKind(
        WhaleTrade.KIND, "whales_stream",
        scope=(("address", _attr("trader_address")),),
        const=(("trader_address", "address"),),
        fields=("trade_id", "market_id", "token_id", "side", "size", "price", "amount", "ts", "detected_at",
                "pseudonym", "title", "outcome"),
        key=("trade_id", "token_id"),
        encode=lambda r, iso: (
            r.trade_id, r.market_id, r.token_id, r.side, format_number(r.size), format_number(r.price),
            format_number(r.amount), iso(r.ts_us), iso(r.detected_us), _opt_str(r.pseudonym), _opt_str(r.title),
            _opt_str(r.outcome),
        ),
    ),
}

#: Entry id sequence numbers per microsecond: <ms>-<us * SLOT + n>.
SLOT = 1_000_000
#: Record times must be in (0, 2**53) µs: entry id 0-0 is not valid, and the script's numbers are doubles.
MAX_TS_US = 1 << 53


def stream_key(template: str, venue: str, symbol: str) -> str:
    return template.format(symbol=symbol, venue=venue)


def _check_template(option: str, template: str) -> None:
    try:
        stream_key(template, "venue", "SYMBOL")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(
            f"{option} = {template!r}: only {{symbol}} and {{venue}} may be substituted ({exc!r})"
        ) from None


def template_problem(template: str, placeholders: Sequence[str]) -> str | None:
    """Why `template` cannot name a stream of one scope, or None: it must use every placeholder
    (else two scopes would share a stream and its one id sequence) and no other."""
    import string

    try:
        used = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        return f"not a valid template ({exc})"
    if "" in used or any(not name.isidentifier() for name in used):
        return "placeholders must be named, like {" + placeholders[0] + "}"
    unknown = sorted(used - set(placeholders))
    if unknown:
        return f"unknown placeholder {{{unknown[0]}}}; it may use " + ", ".join(f"{{{p}}}" for p in placeholders)
    missing = [p for p in placeholders if p not in used]
    if missing:
        return "must contain " + ", ".join(f"{{{p}}}" for p in missing) + " (one stream per " + \
            ", ".join(placeholders) + ": entry ids form one sequence per stream)"
    return None


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
    script: str = SCRIPT


@dataclass
class _EntryCall:
    """One SLOT_SCRIPT call: one stream's records of one of the other kinds, sorted by time."""

    kind: EntryKind
    stream: str
    keys: tuple[bytes, ...]
    args: tuple[bytes | str | int, ...]
    records: list
    script: str = SLOT_SCRIPT


class RedisStreamsSink(Sink):
    """Stores every record kind in Redis Streams, de-duplicated by server-side scripts.

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
        for entry_kind in ENTRY_KINDS.values():
            template = getattr(cfg, entry_kind.template_option)
            problem = template_problem(template, [name for name, _ in entry_kind.scope])
            if problem:
                raise ValueError(f"{entry_kind.template_option} = {template!r}: {problem}")
            self.templates[entry_kind.kind] = template
        self.dedup_window = dedup_window
        self.timeout_s = timeout_s
        self.where = describe_url(reveal(cfg.url))
        self._stats = stats
        self._rows_written = f"sink.{name}.rows_written"
        self._duplicates_skipped = f"sink.{name}.duplicates_skipped"
        self._batches = f"sink.{name}.batches"
        self._refused = f"sink.{name}.records_refused"
        self._overflows = f"sink.{name}.dedup_window_overflows"
        self._late = f"sink.{name}.late_refused"
        self._late_added = f"sink.{name}.late_added"
        self._client: Any = None
        self._shas: dict[str, str] = {}  # script source -> its SHA1 as loaded into the server
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
                self._shas = {script: client.script_load(script) for script in (SCRIPT, SLOT_SCRIPT)}
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

        market_records, other_records = [], []
        for record in batch:
            (other_records if getattr(record, "KIND", None) in ENTRY_KINDS else market_records).append(record)
        calls, refused = self._calls(market_records) if market_records else ([], 0)
        entry_calls: list[_EntryCall] = []
        if other_records:
            entry_calls, entry_refused = self._entry_calls(other_records)
            refused += entry_refused
        results: list = []
        if calls or entry_calls:
            with self._lock:
                client = self._connection()
                try:
                    results = self._execute(client, [*calls, *entry_calls])
                except redis.RedisError as exc:
                    raise SinkError(f"{self.name}: write of {len(batch)} records to {self.where} failed: {exc}") from exc
        added = duplicates = overflows = late = late_added = 0
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
        for call, reply in zip(entry_calls, results[len(calls):]):
            added += reply[0]
            duplicates += reply[1]
            late_added += reply[2]
            if reply[3]:
                late += reply[3]
                self._log_late(call, [call.records[int(i)] for i in reply[4:]])
        stats = self._stats
        if stats is not None:
            stats.incr(self._rows_written, added)
            stats.incr(self._duplicates_skipped, duplicates)
            stats.incr(self._batches)
            if refused or late:
                stats.incr(self._refused, refused + late)
            if late:
                stats.incr(self._late, late)
            if late_added:
                stats.incr(self._late_added, late_added)
            if overflows:
                stats.incr(self._overflows, overflows)

    def _log_late(self, call: _EntryCall, records: list) -> None:
        first = records[0]
        logger.warning(
            "sink %s: refused %d %ss for stream %s: not found there, and no later than entries trimmed or deleted"
            " from it, so they cannot be told apart from records stored before and removed; the first at %s",
            self.name, len(records), call.kind.kind, _printable(call.stream), self._iso(first.ts_us),
        )

    def _execute(self, client: Any, calls: list) -> list:
        """Run every call in one pipelined round trip; reload a script once if the server lost it
        (a restart empties the script cache). Raises the first failed call's error."""
        from redis.exceptions import NoScriptError, ResponseError

        for script in {call.script for call in calls}:
            if script not in self._shas:
                self._shas[script] = client.script_load(script)
        results: list = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in range(2):
            pipe = client.pipeline(transaction=False)
            for i in todo:
                call = calls[i]
                pipe.evalsha(self._shas[call.script], len(call.keys), *call.keys, *call.args)
            replies = pipe.execute(raise_on_error=False)
            missing = []
            for i, reply in zip(todo, replies):
                if isinstance(reply, NoScriptError) and attempt == 0:
                    missing.append(i)
                elif isinstance(reply, Exception):
                    call = calls[i]
                    what = f"{call.venue}:{call.symbol!r}" if isinstance(call, _Call) else f"{len(call.records)}"
                    raise ResponseError(f"{call.kind.kind}s of {what} to stream {call.stream!r}: {reply}")
                else:
                    results[i] = reply
            if not missing:
                break
            for script in {calls[i].script for i in missing}:
                self._shas[script] = client.script_load(script)
            todo = missing
        return results

    def _entry_calls(self, records: list) -> tuple[list[_EntryCall], int]:
        """The other kinds' records grouped by stream, each group sorted by time, one call per group
        (or per MAX_RECORDS_PER_CALL records)."""
        groups: dict[tuple[str, tuple[str, ...]], list] = {}
        for record in records:
            kind = ENTRY_KINDS[record.KIND]
            groups.setdefault((kind.kind, kind.scope_of(record)), []).append(record)
        calls: list[_EntryCall] = []
        refused = 0
        for (kind_name, scope), group in groups.items():
            kind = ENTRY_KINDS[kind_name]
            try:
                stream = kind.stream_for(self.templates[kind_name], scope)
                keys = (stream.encode(), late_key(stream).encode())
                const = [v for (field, placeholder) in kind.const for v in (field, scope[self._scope_index(kind, placeholder)])]
                _encode_msgpack(const)
            except (UnicodeEncodeError, TypeError, msgspec.EncodeError) as exc:
                logger.warning("sink %s: refused %d %ss of %s: the name is not valid text (%s)",
                               self.name, len(group), kind_name, _printable(":".join(map(str, scope))), exc)
                refused += len(group)
                continue
            good = []
            for record in group:
                ts = record.ts_us
                if type(ts) is int and 0 < ts < MAX_TS_US:
                    good.append(record)
                else:
                    refused += 1
                    self._refuse_other(kind, record, f"time {ts!r} µs is not in (0, 2**53)")
            good.sort(key=_ts_of)
            head = [len(kind.const), len(kind.fields), len(kind.identity), *const, *kind.fields,
                    *(kind.fields.index(name) + 1 for name in kind.identity)]
            for k in range(0, len(good), MAX_RECORDS_PER_CALL):
                chunk = good[k : k + MAX_RECORDS_PER_CALL]
                packed, chunk, bad = self._pack_entries(kind, head, chunk)
                refused += bad
                if chunk:
                    calls.append(_EntryCall(kind, stream, keys, (self.maxlen, packed), chunk))
        return calls, refused

    @staticmethod
    def _scope_index(kind: EntryKind, placeholder: str) -> int:
        return [name for name, _ in kind.scope].index(placeholder)

    def _pack_entries(self, kind: EntryKind, head: list, records: list) -> tuple[bytes, list, int]:
        """msgpack of head + (ms, µs, values...) per record. A record with a field that is not text
        (a lone surrogate, a time the C library cannot convert, a wrong type) is refused alone."""
        iso = self._iso
        encode = kind.encode
        nfields = len(kind.fields)
        data = list(head)
        keep = []
        for r in records:
            try:
                values = encode(r, iso)
                if len(values) != nfields or not all(type(v) is str for v in values):
                    raise TypeError("a field is not text")
                _encode_msgpack(values)  # these kinds are low-rate: checking each record is cheap enough
            except Exception as exc:  # noqa: BLE001 - whatever the reason, only this record is refused
                self._refuse_other(kind, r, f"cannot encode it ({type(exc).__name__}: {_short(exc)})")
                continue
            ms, us = divmod(r.ts_us, 1000)
            data += [ms, us, *values]
            keep.append(r)
        return _encode_msgpack(data), keep, len(records) - len(keep)

    def _refuse_other(self, kind: EntryKind, record: Any, reason: str) -> None:
        logger.warning("sink %s: refused a %s of %s: %s", self.name, kind.kind,
                       _printable(":".join(str(v) for v in kind.scope_of(record))), reason)

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


def _short(value: Any, limit: int = 120) -> str:
    text = str(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _ts_of(record: Any) -> int:
    return record.ts_us


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
