"""RedisStreamsSink with every record kind beyond trades and book tops, against a real redis-server:
streams and fields, exact round trips, entry ids from the records' times, replays, late records
(stored once, after the top), crafted values."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from ingestd.config import ConfigError, RedisSinkConfig, parse_config
from ingestd.model import (
    Checkpoint,
    Derivative,
    DexMetric,
    OnchainFlow,
    PredictionBook,
    PredictionTrade,
    Price,
    Trade,
    WhaleTrade,
)
from ingestd.sinks.base import SinkError
from ingestd.sinks.redis_streams import SLOT, RedisStreamsSink
from ingestd.stats import StatsRegistry
from tests import samples
from tests.redis_server import redis_server, redis_url  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

STREAM_OF = {
    "derivative": "derivatives:bybit:BTCUSDT",
    "dex_metric": "dex:ethereum:0x88e6a0c2ddd26feeb64f039a2c41296fcb3f5640",
    "onchain_flow": "flows:ethereum:0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48",
    "price": "prices:coingecko:bitcoin",
    "prediction_book": "polymarket:books:" + "7" * 77,
    "prediction_trade": "polymarket:trades:" + "7" * 77,
    "whale_trade": "whales:0x1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf",
}


# --- reading entries back into records (independently of the sink's encoder) ---------------------


def us(text: str) -> int:
    dt = datetime.fromisoformat(text).replace(tzinfo=timezone.utc)
    return (dt - EPOCH) // timedelta(microseconds=1)


def opt_float(text: str) -> float | None:
    return None if text == "" else float(text)


def opt_str(text: str) -> str | None:
    return None if text == "" else text


def levels(text: str) -> list[tuple[float, float]]:
    return [tuple(level) for level in json.loads(text)]


def record_from(kind: str, f: dict[str, str]):
    if kind == "derivative":
        return Derivative(f["exchange"], f["pair"], us(f["ts"]), us(f["recv_ts"]), opt_float(f["funding_rate"]),
                          None if f["next_funding_ts"] == "" else us(f["next_funding_ts"]), opt_float(f["open_interest"]),
                          opt_float(f["open_interest_value"]), opt_float(f["mark_price"]), opt_float(f["index_price"]),
                          opt_float(f["basis"]))
    if kind == "dex_metric":
        return DexMetric(f["chain"], f["pool_address"], us(f["ts"]), us(f["recv_ts"]), f["liquidity"],
                         opt_float(f["tvl_usd"]), opt_float(f["volume_24h_usd"]), opt_float(f["price"]),
                         opt_float(f["depth_2pct_usd"]))
    if kind == "onchain_flow":
        return OnchainFlow(f["chain"], int(f["block_number"]), f["block_hash"], f["tx_hash"], int(f["log_index"]),
                           us(f["ts"]), us(f["recv_ts"]), f["token"], f["from_addr"], f["to_addr"], f["amount"],
                           opt_str(f["from_tag"]), opt_str(f["to_tag"]))
    if kind == "price":
        return Price(f["source"], f["coin_id"], f["symbol"], us(f["ts"]), us(f["recv_ts"]), opt_float(f["price_usd"]),
                     opt_float(f["market_cap"]), None if f["market_cap_rank"] == "" else int(f["market_cap_rank"]),
                     opt_float(f["total_volume"]), opt_float(f["high_24h"]), opt_float(f["low_24h"]),
                     opt_float(f["price_change_24h"]), opt_float(f["price_change_pct_24h"]),
                     opt_float(f["circulating_supply"]))
    if kind == "prediction_book":
        return PredictionBook(f["exchange"], f["market"], f["asset_id"], us(f["ts"]), us(f["recv_ts"]), f["book_hash"],
                              opt_float(f["best_bid"]), opt_float(f["best_ask"]), levels(f["bids"]), levels(f["asks"]))
    if kind == "prediction_trade":
        return PredictionTrade(f["exchange"], f["market"], f["asset_id"], us(f["ts"]), us(f["recv_ts"]),
                               float(f["price"]), float(f["size"]), f["side"], f["tx_hash"], opt_float(f["fee_rate_bps"]))
    if kind == "whale_trade":
        return WhaleTrade(f["trade_id"], f["trader_address"], f["market_id"], f["token_id"], f["side"], float(f["size"]),
                          float(f["price"]), float(f["amount"]), us(f["ts"]), us(f["detected_at"]),
                          opt_str(f["pseudonym"]), opt_str(f["title"]), opt_str(f["outcome"]))
    raise AssertionError(kind)


def read_back(r, kind: str, key: str | None = None) -> list:
    return [record_from(kind, {k.decode(): v.decode() for k, v in fields.items()})
            for _, fields in r.xrange(key or STREAM_OF[kind])]


def entry_ids(r, key: str) -> list[tuple[int, int]]:
    return [tuple(map(int, eid.split(b"-"))) for eid, _ in r.xrange(key)]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture
def stats() -> StatsRegistry:
    return StatsRegistry("test")


@pytest.fixture
def make_sink(redis_url, stats):
    sinks = []

    def make(**kw) -> RedisStreamsSink:
        sink = RedisStreamsSink("redis", RedisSinkConfig(name="redis", type="redis", url=redis_url, **kw), stats=stats)
        sink.open()
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


@pytest.fixture
def sink(make_sink) -> RedisStreamsSink:
    return make_sink()


@pytest.fixture
def r(redis_server):
    client = redis_server.client()
    yield client
    client.close()


def counters(stats: StatsRegistry) -> dict[str, int]:
    return {k.removeprefix("sink.redis."): v for k, v in stats.counters.items()}


# --- round trips ------------------------------------------------------------------------------------


def test_every_kind_round_trips_exactly_in_its_own_stream(sink, r, stats):
    batch = [record for i in range(5) for record in samples.one_of_each_new_kind(i)]
    sink.write(batch)
    assert sorted(k.decode() for k in r.scan_iter(_type="stream")) == sorted(STREAM_OF.values())
    for kind in STREAM_OF:
        expected = [record for record in batch if record.KIND == kind]
        assert read_back(r, kind) == expected, kind
    assert counters(stats)["rows_written"] == 35


def test_fields_are_strings_scope_first_in_documented_order(sink, r):
    sink.write([samples.derivative(0), samples.whale_trade(0)])
    (_, d), = r.xrange(STREAM_OF["derivative"])
    assert list(d) == [b"exchange", b"pair", b"ts", b"funding_rate", b"next_funding_ts", b"open_interest",
                       b"open_interest_value", b"mark_price", b"index_price", b"basis", b"recv_ts"]
    assert d[b"open_interest_value"] == b"3400000000.0" and d[b"ts"] == b"2023-11-14T22:13:20.000000"
    (_, w), = r.xrange(STREAM_OF["whale_trade"])
    assert list(w)[:4] == [b"trader_address", b"trade_id", b"market_id", b"token_id"]
    assert w[b"side"] == b"BUY" and w[b"amount"] == b"540.0" and w[b"detected_at"] == b"2023-11-14T22:13:20.080000"


def test_absent_values_are_empty_strings_and_come_back_as_none(sink, r):
    bare = Derivative("bybit", "BTCUSDT", samples.T0, samples.T0 + 1)
    price = Price("coingecko", "bitcoin", "BTC", samples.T0, samples.T0 + 1)
    sink.write([bare, price])
    assert read_back(r, "derivative") == [bare] and read_back(r, "price") == [price]
    fields = r.xrange(STREAM_OF["derivative"])[0][1]
    assert fields[b"funding_rate"] == b"" and fields[b"next_funding_ts"] == b""


def test_entry_ids_come_from_the_record_time(sink, r):
    t = 1_700_000_000_123_456
    sink.write([Derivative("bybit", "BTCUSDT", t, t), Derivative("bybit", "BTCUSDT", t + 1, t)])
    assert entry_ids(r, STREAM_OF["derivative"]) == [(1_700_000_000_123, 456 * SLOT), (1_700_000_000_123, 457 * SLOT)]


def test_records_of_one_microsecond_are_told_apart_by_their_key(sink, r, stats):
    """All transfers of a block share its time; two book hashes may share a timestamp."""
    flows = [samples.onchain_flow(0) for _ in range(3)]
    flows = [OnchainFlow(f.chain, 19_000_000, "0x" + "ab" * 32, f"0xtx{i}", i, samples.T0, samples.T0 + 9, f.token,
                         f.from_addr, f.to_addr, str(i)) for i, f in enumerate(flows)]
    books = [PredictionBook("polymarket", "m", "42", samples.T0, samples.T0, h, 0.5, 0.6, [], []) for h in ("h1", "h2")]
    sink.write(flows + books)
    sink.write(flows[1:] + books[:1])  # a replay, partly
    key = STREAM_OF["onchain_flow"]
    ms, sub = divmod(samples.T0, 1000)
    assert entry_ids(r, key) == [(ms, sub * SLOT + n) for n in range(3)]
    assert read_back(r, "onchain_flow") == flows
    assert read_back(r, "prediction_book", "polymarket:books:42") == books
    # A fourth transfer of the same block, later: the next number of that microsecond.
    late_in_block = OnchainFlow("ethereum", 19_000_000, "0x" + "ab" * 32, "0xtx3", 3, samples.T0, samples.T0 + 9,
                                flows[0].token, "0x1", "0x2", "3")
    sink.write([late_in_block])
    assert entry_ids(r, key)[-1] == (ms, sub * SLOT + 3)
    c = counters(stats)
    assert c["rows_written"] == 6 and c["duplicates_skipped"] == 3


def test_key_fields_cannot_be_confused_by_where_one_ends(sink, r):
    """(trade_id "ab", token "c") and ("a", "bc") at the same time are two trades."""
    a = WhaleTrade("ab", "0xw", "m", "c", "BUY", 1.0, 0.5, 0.5, samples.T0, samples.T0)
    b = WhaleTrade("a", "0xw", "m", "bc", "BUY", 1.0, 0.5, 0.5, samples.T0, samples.T0)
    sink.write([a, b])
    sink.write([b, a])
    assert read_back(r, "whale_trade", "whales:0xw") == [a, b]


# --- replays -----------------------------------------------------------------------------------------


def test_a_replayed_batch_adds_nothing(sink, r, stats):
    batch = [record for i in range(20) for record in samples.one_of_each_new_kind(i)]
    sink.write(batch)
    before = {key: r.xrange(key) for key in STREAM_OF.values()}
    sink.write(batch)
    sink.write(list(reversed(batch)))  # any order within a batch
    assert {key: r.xrange(key) for key in STREAM_OF.values()} == before
    c = counters(stats)
    assert c["rows_written"] == 140 and c["duplicates_skipped"] == 280 and "late_refused" not in c


def test_a_replay_is_refused_even_after_the_stream_was_trimmed(make_sink, r, stats):
    sink = make_sink(stream_maxlen=10)
    prices = [samples.price(i) for i in range(2000)]
    for k in range(0, 2000, 100):
        sink.write(prices[k : k + 100])
    assert r.xlen(STREAM_OF["price"]) < 2000
    length = r.xlen(STREAM_OF["price"])
    sink.write(prices[-50:])  # still in the stream: duplicates
    sink.write(prices[:50])  # trimmed away: below the stream's last id, refused (never stored twice)
    assert r.xlen(STREAM_OF["price"]) == length
    assert counters(stats)["rows_written"] == 2000


def test_mixed_batches_with_trades_and_checkpoints(sink, r):
    trades = [Trade("binance", "BTCUSDT", i, 1.0, 2.0, "buy", samples.T0 + i, samples.T0) for i in range(1, 4)]
    batch = [*trades, samples.price(0), Checkpoint("binance", "BTCUSDT", 3), samples.derivative(0)]
    sink.write(batch)
    sink.write(batch)
    assert r.xlen("trades:BTCUSDT") == 3 and r.xlen(STREAM_OF["price"]) == 1 and r.xlen(STREAM_OF["derivative"]) == 1
    assert sink.resume_points("binance") == {"BTCUSDT": 3}


# --- late records: stored once, with ids above the top -------------------------------------------


def late_set(kind: str) -> str:
    return "ingestd:late:" + STREAM_OF[kind]


def time_id(ts_us: int) -> tuple[int, int]:
    """The entry id a record at this time takes when it is above its stream's top."""
    return ts_us // 1000, ts_us % 1000 * SLOT


def identities(r, key: str) -> list[tuple]:
    """(ts, every other field) of each entry: what must not appear twice."""
    return [tuple(sorted(fields.items())) for _, fields in r.xrange(key)]


@pytest.mark.parametrize("kind, make", [("prediction_trade", samples.prediction_trade),
                                        ("whale_trade", samples.whale_trade)])
def test_a_late_record_is_stored_once_and_a_replay_adds_nothing(sink, r, stats, kind, make):
    """Polymarket's REST backfill fills a gap after later live trades were stored; a whale trade is
    detected after a later one."""
    key = STREAM_OF[kind]
    live = [make(i) for i in range(10, 20)]
    sink.write(live)
    backfill = [make(i) for i in range(0, 15)]  # 0-9 are new and older than the top, 10-14 stored already
    sink.write(backfill)
    assert sorted(read_back(r, kind), key=lambda x: x.ts_us) == [make(i) for i in range(20)]
    # In-order records keep ids from their times; the late ones follow the top in arrival order, and
    # their own `ts` carries their time.
    ms, sub = divmod(samples.T0 + 19, 1000)
    assert entry_ids(r, key) == [time_id(samples.T0 + i) for i in range(10, 20)] + [(ms, sub * SLOT + n)
                                                                                    for n in range(1, 11)]
    assert read_back(r, kind)[10:] == [make(i) for i in range(10)]
    c = counters(stats)
    assert c["rows_written"] == 20 and c["late_added"] == 10 and c["duplicates_skipped"] == 5
    assert "late_refused" not in c and "records_refused" not in c

    before = r.xrange(key)
    sink.write(backfill)  # the retried batch
    sink.write(list(reversed(live + backfill)))
    sink.write([make(3)])  # a late record alone
    assert r.xrange(key) == before
    c = counters(stats)
    assert c["rows_written"] == 20 and c["late_added"] == 10 and c["duplicates_skipped"] == 5 + 15 + 25 + 1
    assert r.zcard(late_set(kind)) == 10

    sink.write([make(20)])  # the next live record: back on the fast path, id from its time
    assert entry_ids(r, key)[-1] == time_id(samples.T0 + 20)


def test_a_late_derivative_at_an_entrys_time_is_a_duplicate_between_entries_it_is_new(sink, r, stats):
    """Derivatives, DEX metrics and prices: one record per time, so the time is the key."""
    sink.write([samples.derivative(10), samples.derivative(20)])
    other_values = Derivative("bybit", "BTCUSDT", samples.T0 + 10, samples.T0 + 99, funding_rate=0.5)
    sink.write([samples.derivative(10), other_values, samples.derivative(15), samples.derivative(5)])
    stored = read_back(r, "derivative")
    assert stored == [samples.derivative(10), samples.derivative(20), samples.derivative(5), samples.derivative(15)]
    sink.write([samples.derivative(15), samples.derivative(5), samples.derivative(10)])
    sink.write([Derivative("bybit", "BTCUSDT", samples.T0 + 15, samples.T0, funding_rate=0.7)])  # late, same time
    assert read_back(r, "derivative") == stored
    c = counters(stats)
    assert c["rows_written"] == 4 and c["late_added"] == 2 and c["duplicates_skipped"] == 2 + 3 + 1


def test_a_late_record_parked_in_the_tops_microsecond_does_not_hide_a_record_of_that_time(sink, r):
    """A late entry's id is in the top's microsecond, but records are told apart by their ts too."""
    sink.write([samples.prediction_trade(9)])
    t9 = samples.prediction_trade(9)
    late = PredictionTrade(t9.venue, t9.market, t9.asset_id, samples.T0 + 1, samples.T0, 0.4, 5.0, "sell", "0xsame")
    same_hash_at_top = PredictionTrade(t9.venue, t9.market, t9.asset_id, t9.ts_us, samples.T0, 0.4, 5.0, "sell",
                                       "0xsame")
    sink.write([late])
    sink.write([same_hash_at_top])
    sink.write([late, same_hash_at_top, t9])
    assert read_back(r, "prediction_trade") == [t9, late, same_hash_at_top]


def test_after_trimming_only_a_late_record_older_than_what_the_stream_keeps_is_refused(make_sink, r, stats, caplog):
    sink = make_sink(stream_maxlen=10)
    key = STREAM_OF["whale_trade"]
    sink.write([samples.whale_trade(i) for i in range(0, 1000, 2)])
    first = int(r.xrange(key, count=1)[0][1][b"trade_id"], 16)
    assert 0 < first < 990  # trimmed
    with caplog.at_level(logging.WARNING, logger="ingestd.sinks.redis"):
        sink.write([samples.whale_trade(first - 1), samples.whale_trade(first + 1), samples.whale_trade(997)])
    trade_ids = [int(f[b"trade_id"], 16) for _, f in r.xrange(key)]
    assert trade_ids[-2:] == [first + 1, 997] and first - 1 not in trade_ids
    assert "refused 1 whale_trades for stream 'whales:0x1f2d" in caplog.text
    assert "cannot be told apart from records stored before and removed" in caplog.text
    c = counters(stats)
    assert c["late_refused"] == 1 and c["records_refused"] == 1 and c["late_added"] == 2


def test_the_late_set_stays_bounded_as_the_stream_is_trimmed(make_sink, r, stats):
    sink = make_sink(stream_maxlen=10)
    kind, make = "prediction_trade", samples.prediction_trade
    key, late = STREAM_OF[kind], late_set(kind)
    rounds = 60
    for k in range(rounds):
        sink.write([make(100 * k + j) for j in range(0, 20, 2)])  # live
        sink.write([make(100 * k + j) for j in range(1, 19, 2)])  # backfill: older than the top, newer than kept
        sink.write([make(100 * k + j) for j in range(0, 19)])  # a replay: duplicates, or refused if trimmed
        entries = r.xrange(key)
        members = r.zrange(late, 0, -1, withscores=True)
        assert len(members) <= len(entries)
        # Every member belongs to an entry still in the stream.
        stored = {fields[b"ts"].decode() for _, fields in entries}
        for _, score in members:
            assert (EPOCH + timedelta(microseconds=int(score))).strftime("%Y-%m-%dT%H:%M:%S.%f") in stored
    assert len(identities(r, key)) == len(set(identities(r, key)))
    c = counters(stats)
    assert c["late_added"] == rounds * 9 and c["rows_written"] == rounds * 19
    assert c["duplicates_skipped"] + c["late_refused"] == rounds * 19
    assert r.zcard(late) <= r.xlen(key) < rounds * 19 // 4


def test_deleting_a_stream_forgets_its_late_records(sink, r):
    sink.write([samples.price(10), samples.price(20)])
    sink.write([samples.price(15)])
    assert r.zcard(late_set("price")) == 1
    r.delete(STREAM_OF["price"])
    sink.write([samples.price(15)])  # a new stream: stored again, in order
    assert read_back(r, "price") == [samples.price(15)] and r.exists(late_set("price")) == 0
    sink.write([samples.price(15), samples.price(12)])
    assert read_back(r, "price") == [samples.price(15), samples.price(12)]


def test_a_late_set_of_another_type_fails_the_write_before_anything_is_stored(sink, r):
    r.set(late_set("price"), "not a sorted set")
    with pytest.raises(SinkError, match="WRONGTYPE"):
        sink.write([samples.price(0)])
    assert r.exists(STREAM_OF["price"]) == 0


# --- crafted values --------------------------------------------------------------------------------

CRAFTED = ['BTC"USDT', "ETH\nUSDT", "SOL\\USDT", "DOGE\x00\x1f", "ÉTÉ€", "🐋", "A:B:C", "{symbol}", "x" * 10_000,
           "\r\n*3\r\n$4\r\nXADD", "'; DROP TABLE ticks; --", "*", ""]


def test_crafted_names_and_values_are_stored_verbatim(sink, r):
    records = []
    for i, text in enumerate(CRAFTED):
        records.append(Derivative("bybit", text, samples.T0 + i, samples.T0, funding_rate=0.1))
        records.append(PredictionTrade("polymarket", text, text, samples.T0 + i, samples.T0, 0.5, 1.0, text, text))
        records.append(WhaleTrade(text, text, text, text, text, 1.0, 0.5, 0.5, samples.T0 + i, samples.T0,
                                  pseudonym=text or None, title=text or None))
    sink.write(records)
    sink.write(records)
    for i, text in enumerate(CRAFTED):
        assert read_back(r, "derivative", f"derivatives:bybit:{text}") == [records[3 * i]]
        assert read_back(r, "prediction_trade", f"polymarket:trades:{text}") == [records[3 * i + 1]]
        assert read_back(r, "whale_trade", f"whales:{text}") == [records[3 * i + 2]]


def test_records_that_cannot_be_stored_are_refused_with_a_reason_the_rest_stored(sink, r, stats, caplog):
    good = samples.prediction_trade(1)
    batch = [
        samples.prediction_trade(0),
        PredictionTrade("polymarket", "m", "7" * 77, samples.T0 + 5, samples.T0, 0.5, 1.0, "buy", "0x\ud800"),
        Derivative("bybit", "BAD\udfff", samples.T0, samples.T0),  # the stream name is not text
        Derivative("bybit", "BTCUSDT", 0, 0),  # time 0 has no entry id
        Derivative("bybit", "BTCUSDT", 1 << 62, 0),  # beyond the script's exact numbers
        Derivative("bybit", "ETHUSDT", samples.T0, samples.T0, next_funding_us=10**30),  # no calendar has it
        good,
    ]
    with caplog.at_level(logging.WARNING, logger="ingestd.sinks.redis"):
        sink.write(batch)
    assert read_back(r, "prediction_trade") == [samples.prediction_trade(0), good]
    assert sorted(k.decode() for k in r.scan_iter(_type="stream")) == [STREAM_OF["prediction_trade"]]
    assert counters(stats)["records_refused"] == 5
    for reason in ("cannot encode it", "not valid text", "is not in (0, 2**53)"):
        assert reason in caplog.text
    assert len(caplog.text) < 5000


# --- configuration -------------------------------------------------------------------------------


def test_templates_must_name_one_scope_per_stream(redis_url):
    with pytest.raises(ValueError, match=r"must contain \{venue\}"):
        RedisStreamsSink("r", RedisSinkConfig(name="r", type="redis", url=redis_url,
                                              derivatives_stream="derivatives:{symbol}"))
    with pytest.raises(ConfigError) as problem:
        parse_config('[sinks.r]\ntype = "redis"\nwhales_stream = "w:{addr}"\nflows_stream = "f:{chain}"\n')
    text = str(problem.value)
    assert 'sinks.r.whales_stream: expected a stream key pattern with {address}' in text
    assert 'sinks.r.flows_stream: expected a stream key pattern with {chain}, {token}' in text


def test_custom_templates(make_sink, r):
    make_sink(prices_stream="cg:{coin_id}@{source}", whales_stream="{address}").write(
        [samples.price(0), samples.whale_trade(0)])
    assert r.xlen("cg:bitcoin@coingecko") == 1 and r.xlen("0x1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf") == 1


def test_a_key_of_another_type_fails_the_write_before_anything_is_stored(sink, r):
    r.set(STREAM_OF["price"], "not a stream")
    with pytest.raises(SinkError, match="WRONGTYPE"):
        sink.write([samples.price(0)])
    assert r.get(STREAM_OF["price"]) == b"not a stream"


# --- ingestd tail -----------------------------------------------------------------------------------


def tail(*args: str) -> subprocess.CompletedProcess:
    env = {"INGESTD_CONFIG": "/nonexistent/ingestd.toml", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, "-m", "ingestd", "tail", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=30)


def test_tail_lists_every_kinds_streams_and_reads_one_by_its_key(sink, redis_url):
    sink.write([record for i in range(3) for record in samples.one_of_each_new_kind(i)])
    sink.write([Trade("binance", "BTCUSDT", 1, 1.0, 2.0, "buy", samples.T0, samples.T0)])
    listed = tail("--list", "--url", redis_url)
    assert listed.returncode == 0, listed.stderr
    rows = [row.split() for row in listed.stdout.splitlines()]
    assert rows == sorted([[key, "3"] for key in STREAM_OF.values()] + [["trades:BTCUSDT", "1"]])

    shown = tail("derivatives:bybit:BTCUSDT", "-n", "2", "--url", redis_url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("1700000000000-1000000  exchange=bybit pair=BTCUSDT")
    assert "funding_rate=0.0001" in lines[0]
