"""RedisStreamsSink against a real redis-server: format, trimming, idempotency, checkpoints, outages."""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ingestd.config import RedisSinkConfig, parse_config
from ingestd.model import BookTop, Checkpoint, Trade, spread_bps
from ingestd.pipeline import Router, SinkRunner
from ingestd.sinks import build_sink
from ingestd.sinks.base import SinkError
from ingestd.sinks.redis_streams import RedisStreamsSink, above_key, floors_key
from ingestd.stats import StatsRegistry
from tests.redis_server import RedisServer, redis_server, redis_url  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000_123_456  # 2023-11-14T22:13:20.123456Z
SEED_FIELDS = [b"exchange", b"pair", b"price", b"qty", b"ts", b"side", b"trade_id"]


def trade(trade_id: int, symbol: str = "BTCUSDT", venue: str = "binance", **kw) -> Trade:
    values = dict(price=65_000.5 + trade_id, qty=0.25, side="buy", ts_us=T0 + trade_id * 1000, recv_us=T0 + 1)
    values.update(kw)
    return Trade(venue, symbol, trade_id, values["price"], values["qty"], values["side"], values["ts_us"],
                 values["recv_us"])


def book(update_id: int, symbol: str = "BTCUSDT") -> BookTop:
    bids = [(100.0 - i * 0.5, 1.0 + i) for i in range(3)]
    asks = [(100.5 + i * 0.5, 2.0 + i) for i in range(3)]
    return BookTop("binance", symbol, update_id, T0, T0 + 500, bids[0][0], bids[0][1], asks[0][0], asks[0][1],
                   spread_bps(bids[0][0], asks[0][0]), bids, asks)


def config(url: str, **kw) -> RedisSinkConfig:
    return RedisSinkConfig(name="redis", type="redis", url=url, **kw)


@pytest.fixture
def stats() -> StatsRegistry:
    return StatsRegistry("test")


@pytest.fixture
def make_sink(redis_url, stats):
    sinks = []

    def make(url: str = redis_url, stats: StatsRegistry | None = stats, **kw) -> RedisStreamsSink:
        sink_kw = {k: kw.pop(k) for k in ("dedup_window", "timeout_s") if k in kw}
        sink = RedisStreamsSink("redis", config(url, **kw), stats=stats, **sink_kw)
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


def stored_ids(r, key: str = "trades:BTCUSDT") -> list[int]:
    return [int(fields[b"trade_id"]) for _, fields in r.xrange(key)]


def counters(stats: StatsRegistry) -> tuple[int, int, int]:
    c = stats.counters
    return c["sink.redis.rows_written"], c["sink.redis.duplicates_skipped"], c["sink.redis.batches"]


# --- format ----------------------------------------------------------------------------------------


def test_trades_use_the_seed_stream_names_and_all_string_fields(sink, r):
    sink.write([trade(1, qty=0.00001, price=45123.5), trade(2, side="sell", qty=1e-7, price=2.5e16),
                trade(1, symbol="ETHUSDT")])
    assert sorted(r.scan_iter(match="trades:*", _type="stream")) == [b"trades:BTCUSDT", b"trades:ETHUSDT"]
    (_, first), (_, second) = r.xrange("trades:BTCUSDT")
    assert list(first) == SEED_FIELDS  # the seed's names, in its order; no raw_json unless asked
    assert first == {
        b"exchange": b"binance", b"pair": b"BTCUSDT", b"price": b"45123.5", b"qty": b"0.00001",
        b"ts": b"2023-11-14T22:13:20.124456", b"side": b"buy", b"trade_id": b"1",
    }
    # Never exponent notation, even where Python's repr would use it.
    assert (second[b"qty"], second[b"price"], second[b"side"]) == (b"0.0000001", b"25000000000000000", b"sell")
    ts = datetime.fromisoformat(first[b"ts"].decode()).replace(tzinfo=timezone.utc)
    assert int(ts.timestamp() * 1_000_000) == T0 + 1000


def test_ts_always_has_microseconds(sink, r):
    sink.write([trade(1, ts_us=1_700_000_000_000_000)])
    assert r.xrange("trades:BTCUSDT")[0][1][b"ts"] == b"2023-11-14T22:13:20.000000"


def test_raw_json_holds_the_normalized_record(make_sink, r):
    make_sink(raw_json=True).write([trade(7)])
    fields = r.xrange("trades:BTCUSDT")[0][1]
    assert list(fields) == SEED_FIELDS + [b"raw_json"]
    raw = json.loads(fields[b"raw_json"])
    assert raw["trade_id"] == 7 and raw["ts_us"] == T0 + 7000 and raw["symbol"] == "BTCUSDT"


def test_books_go_to_their_own_stream(sink, r, stats):
    sink.write([book(100), book(101), book(100), trade(1)])
    entries = r.xrange("books:BTCUSDT")
    assert [f[b"update_id"] for _, f in entries] == [b"100", b"101"]
    fields = entries[0][1]
    assert list(fields) == [b"exchange", b"pair", b"ts", b"update_id", b"bid_px", b"bid_sz", b"ask_px", b"ask_sz",
                            b"spread_bps", b"bids", b"asks"]
    assert json.loads(fields[b"bids"]) == [[100.0, 1.0], [99.5, 2.0], [99.0, 3.0]]
    assert fields[b"bid_px"] == b"100.0" and fields[b"ts"] == b"2023-11-14T22:13:20.123456"
    # A replay, and a snapshot older than the last stored one, are skipped.
    sink.write([book(99), book(101)])
    assert r.xlen("books:BTCUSDT") == 2
    assert counters(stats) == (3, 3, 2)


def test_templates_from_the_config(make_sink, r):
    make_sink(trades_stream="md:{venue}:{symbol}:t", books_stream="md:{symbol}:b").write([trade(1), book(5)])
    assert r.xlen("md:binance:BTCUSDT:t") == 1 and r.xlen("md:BTCUSDT:b") == 1
    with pytest.raises(ValueError, match="trades_stream"):
        RedisStreamsSink("redis", config("redis://127.0.0.1:1/0", trades_stream="trades:{pair}"))


def test_maxlen_trims_approximately(make_sink, r):
    sink = make_sink(stream_maxlen=1000)
    for start in range(1, 20_001, 2000):
        sink.write([trade(i) for i in range(start, start + 2000)])
    length = r.xlen("trades:BTCUSDT")
    assert 1000 <= length <= 1000 + 200  # ~: Redis drops whole nodes (100 entries by default)
    assert stored_ids(r)[-1] == 20_000  # the newest are kept


# --- idempotency -----------------------------------------------------------------------------------


def test_the_same_batch_twice_is_stored_once(sink, r, stats):
    batch = [trade(i) for i in range(1, 101)] + [trade(i, symbol="ETHUSDT") for i in range(1, 51)]
    sink.write(batch)
    sink.write(batch)
    assert stored_ids(r) == list(range(1, 101))
    assert r.xlen("trades:ETHUSDT") == 50
    assert counters(stats) == (150, 150, 2)


def test_one_stored_row_does_not_discard_the_rest_of_the_batch(sink, r, stats):
    sink.write([trade(5)])
    sink.write([trade(i) for i in range(1, 11)])
    assert sorted(stored_ids(r)) == list(range(1, 11))
    assert counters(stats) == (10, 1, 2)


def test_duplicates_inside_one_batch(sink, r):
    sink.write([trade(5), trade(5), trade(6), trade(5), book(3), book(3)])
    assert stored_ids(r) == [5, 6]
    assert r.xlen("books:BTCUSDT") == 1


def test_late_lower_ids_after_higher_ones_are_stored_once(sink, r, stats):
    """A gap backfilled over REST after later live trades were stored."""
    sink.write([trade(i) for i in range(1, 11)] + [Checkpoint("binance", "BTCUSDT", 10)])
    sink.write([trade(i) for i in range(21, 31)])  # live, after a gap 11..20
    assert r.zcard(above_key("trades:BTCUSDT", "binance", "BTCUSDT")) == 10  # remembered above the floor
    sink.write([trade(i) for i in range(11, 16)])  # the backfill, in two pages
    sink.write([trade(i) for i in range(14, 21)] + [Checkpoint("binance", "BTCUSDT", 30)])
    ids = stored_ids(r)
    assert sorted(ids) == list(range(1, 31)) and len(ids) == 30
    assert ids[10:20] == list(range(21, 31))  # stored in arrival order: the late ones after them
    # The hole is closed: the floor is at the top and nothing is remembered above it.
    assert r.hget(floors_key("trades:BTCUSDT"), "binance:BTCUSDT") == b"30"
    assert not r.exists(above_key("trades:BTCUSDT", "binance", "BTCUSDT"))
    # Replaying everything, in any order, adds nothing.
    everything = [trade(i) for i in range(1, 31)]
    random.Random(1).shuffle(everything)
    sink.write(everything)
    assert len(stored_ids(r)) == 30
    assert counters(stats)[0] == 30


def test_in_order_trades_take_the_fast_path(sink, r):
    """Dense ids in order, once a floor is known: no per-id state in Redis at all."""
    sink.write([trade(1), Checkpoint("binance", "BTCUSDT", 1)])
    for start in range(2, 5002, 1000):
        sink.write([trade(i) for i in range(start, start + 1000)])
    assert r.hget(floors_key("trades:BTCUSDT"), "binance:BTCUSDT") == b"5001"
    assert not r.exists(above_key("trades:BTCUSDT", "binance", "BTCUSDT"))


def test_sparse_ids_are_folded_into_the_floor_by_checkpoints(sink, r, stats):
    """Venues whose ids are not consecutive: remembered until a checkpoint covers them."""
    sink.write([trade(i) for i in (10, 20, 30)])
    assert r.zcard(above_key("trades:BTCUSDT", "binance", "BTCUSDT")) == 3
    sink.write([trade(40), Checkpoint("binance", "BTCUSDT", 40)])
    assert not r.exists(above_key("trades:BTCUSDT", "binance", "BTCUSDT"))
    sink.write([trade(i) for i in (10, 20, 30, 40, 50)])
    assert stored_ids(r) == [10, 20, 30, 40, 50]
    assert counters(stats)[:2] == (5, 4)


def test_venues_and_symbols_are_separate_id_spaces(make_sink, r):
    sink = make_sink(trades_stream="all-trades")  # one stream for every market
    sink.write([trade(1), trade(1, symbol="ETHUSDT"), trade(1, venue="bybit"), trade(1)])
    pairs = [(f[b"exchange"], f[b"pair"]) for _, f in r.xrange("all-trades")]
    assert pairs == [(b"binance", b"BTCUSDT"), (b"binance", b"ETHUSDT"), (b"bybit", b"BTCUSDT")]


def test_window_overflow_gives_up_on_the_hole_and_says_so(make_sink, r, stats, caplog):
    sink = make_sink(dedup_window=10)
    sink.write([trade(1), Checkpoint("binance", "BTCUSDT", 1)])
    with caplog.at_level(logging.WARNING, logger="ingestd.sinks.redis"):
        sink.write([trade(i) for i in range(5, 25)])  # 20 ids ahead of the hole 2..4
    assert "floor moved from 1 to 24" in caplog.text and "refused as duplicates" in caplog.text
    assert stats.counters["sink.redis.dedup_window_overflows"] == 10
    assert not r.exists(above_key("trades:BTCUSDT", "binance", "BTCUSDT"))
    sink.write([trade(i) for i in range(2, 5)])  # too late: the documented limit
    assert sorted(stored_ids(r)) == [1] + list(range(5, 25))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_sequence_of_retries_replays_and_late_pages_stores_each_trade_once(sink, r, data):
    r.flushall()
    ids = list(range(1, 61))
    written: set[int] = set()
    batches = data.draw(st.lists(st.lists(st.sampled_from(ids), max_size=25), min_size=1, max_size=12))
    for batch in batches:
        records: list = [trade(i) for i in batch]
        written.update(batch)
        prefix = 0
        while prefix + 1 in written:
            prefix += 1
        if prefix and data.draw(st.booleans()):
            records.append(Checkpoint("binance", "BTCUSDT", prefix))  # true: all <= prefix emitted
        sink.write(records)
        if data.draw(st.booleans()):
            sink.write(records)  # a retry of the same batch
    got = stored_ids(r)
    assert sorted(got) == sorted(written)
    sink.write([trade(i) for i in sorted(written)])  # a full replay
    assert len(stored_ids(r)) == len(written)


def test_two_writers_on_the_same_market_store_each_trade_once(make_sink, r):
    """A successor taking over while its predecessor still writes: the scripts are atomic."""
    a, b = make_sink(stats=None, stream_maxlen=10**9), make_sink(stats=None, stream_maxlen=10**9)
    errors = []

    def run(sink, seed):
        rng = random.Random(seed)
        try:
            for start in range(1, 20_001, 500):
                batch = [trade(i) for i in range(start, start + 500)]
                rng.shuffle(batch)
                sink.write(batch)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s, n)) for n, s in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    ids = stored_ids(r)
    assert len(ids) == 20_000 and set(ids) == set(range(1, 20_001))


WRITER = textwrap.dedent(
    """
    import sys
    from ingestd.config import RedisSinkConfig
    from ingestd.model import Checkpoint, Trade
    from ingestd.sinks.redis_streams import RedisStreamsSink
    sink = RedisStreamsSink("redis", RedisSinkConfig(name="redis", type="redis", url=sys.argv[1],
                                                      stream_maxlen=10**9))
    sink.open()
    symbols = ["S%d" % k for k in range(5)]
    for start in range(1, 1_000_000, 200):
        batch = []
        for s in symbols:
            batch += [Trade("binance", s, i, 1.0, 1.0, "buy", i, i) for i in range(start, start + 200)]
            batch.append(Checkpoint("binance", s, start + 199))
        sink.write(batch)
    """
)


def test_replay_after_a_crash_of_the_writer(redis_url, r, make_sink):
    """kill -9 in the middle of writing, then what a restart does: resume from the checkpoints and
    replay the spooled batches (some of them stored already, some halfway)."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, redis_url], cwd=REPO)
    try:
        deadline = time.monotonic() + 30
        while sum(r.xlen(f"trades:S{k}") for k in range(5)) < 30_000:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    sink = make_sink(stream_maxlen=10**9)
    resume = sink.resume_points("binance")
    assert set(resume) == {f"S{k}" for k in range(5)}
    for symbol, checkpoint in resume.items():
        ids = stored_ids(r, f"trades:{symbol}")
        assert set(range(1, checkpoint + 1)) <= set(ids)  # a checkpoint never runs ahead of its data
    top = max(max(stored_ids(r, f"trades:S{k}")) for k in range(5))
    # The spool replays from before the crash; the feed refetches from each resume point on.
    replay = []
    for symbol, checkpoint in resume.items():
        replay += [Trade("binance", symbol, i, 1.0, 1.0, "buy", i, i) for i in range(max(1, checkpoint - 1000), top + 400)]
    sink.write(replay)
    for k in range(5):
        ids = stored_ids(r, f"trades:S{k}")
        assert sorted(ids) == list(range(1, top + 400)), f"S{k}"


def test_a_crash_of_redis_loses_data_and_floors_together(redis_server, redis_url, make_sink, r):
    """appendfsync everysec: a kill -9 of the server may lose the last second, but never a stream
    entry without its de-duplication state, so the replay stores each trade exactly once."""
    sink = make_sink()
    first = [trade(i) for i in range(1, 2001)] + [Checkpoint("binance", "BTCUSDT", 2000)]
    sink.write(first)
    time.sleep(1.5)  # fsynced by now
    second = [trade(i) for i in range(2001, 4001)] + [Checkpoint("binance", "BTCUSDT", 4000)]
    sink.write(second)
    redis_server.kill()
    redis_server.start()
    resume = sink.resume_points("binance")["BTCUSDT"]
    assert resume in (2000, 4000)
    sink.write(first[:-1] + second[:-1])  # spool replay
    assert sorted(stored_ids(r)) == list(range(1, 4001)) and len(stored_ids(r)) == 4000


# --- checkpoints -----------------------------------------------------------------------------------


def test_checkpoints_round_trip_and_only_move_forward(sink, r):
    assert sink.resume_points("binance") == {}
    sink.write([trade(1), trade(2), Checkpoint("binance", "BTCUSDT", 2), Checkpoint("binance", "ETHUSDT", 7),
                Checkpoint("bybit", "BTCUSDT", 99)])
    assert sink.resume_points("binance") == {"BTCUSDT": 2, "ETHUSDT": 7}
    assert sink.resume_points("bybit") == {"BTCUSDT": 99}
    sink.write([Checkpoint("binance", "BTCUSDT", 1), Checkpoint("binance", "ETHUSDT", 9),
                Checkpoint("binance", "ETHUSDT", 8)])
    assert sink.resume_points("binance") == {"BTCUSDT": 2, "ETHUSDT": 9}
    assert r.hgetall("ingestd:checkpoints:binance") == {b"BTCUSDT": b"2", b"ETHUSDT": b"9"}


def test_a_checkpoint_covers_what_came_before_it(sink, r, stats):
    """Every trade <= a checkpoint was emitted before it, so a later one is a replay."""
    sink.write([Checkpoint("binance", "BTCUSDT", 100)])
    sink.write([trade(99), trade(100), trade(101)])
    assert stored_ids(r) == [101]


def test_resume_points_from_a_fresh_sink_object(make_sink):
    make_sink().write([trade(5), Checkpoint("binance", "BTCUSDT", 5)])
    assert make_sink().resume_points("binance") == {"BTCUSDT": 5}


# --- hostile names and values ----------------------------------------------------------------------

CRAFTED = [
    "BTC USDT", "A\r\nB", "*", "*3\r\n$3\r\nDEL\r\n$1\r\nx\r\n", "$-1", "\x00nul", "🚀币/USDT", "trades:*",
    "{symbol}", "x" * 100_000,
]


def test_crafted_symbols_and_values_are_stored_verbatim(sink, r):
    """RESP frames every argument with its length, and the records travel as one msgpack string:
    nothing in a value can end a frame or start a command."""
    r.set("x", "untouched")
    hostile_side = "buy\r\n*1\r\n$8\r\nFLUSHALL\r\n"
    batch = [trade(1, symbol=s, side=hostile_side) for s in CRAFTED] + [Checkpoint("binance", s, 1) for s in CRAFTED]
    sink.write(batch)
    for s in CRAFTED:
        ((_, fields),) = r.xrange(f"trades:{s}".encode())
        assert fields[b"pair"] == s.encode() and fields[b"side"] == hostile_side.encode()
    assert r.get("x") == b"untouched"
    streams = set(r.scan_iter(match="trades:*", _type="stream", count=1000))
    assert streams == {f"trades:{s}".encode() for s in CRAFTED}
    assert sink.resume_points("binance") == {s: 1 for s in CRAFTED}
    sink.write(batch)
    assert all(r.xlen(f"trades:{s}".encode()) == 1 for s in CRAFTED)


def test_unencodable_records_are_refused_with_a_reason_and_the_rest_stored(sink, r, stats, caplog):
    with caplog.at_level(logging.WARNING, logger="ingestd.sinks.redis"):
        sink.write([trade(1), trade(2, side="b\udc80y"), trade(3), trade(1, symbol="BAD\udcff"),
                    trade(2 ** 53), trade(-1), trade(4)])
    assert stored_ids(r) == [1, 3, 4]
    assert stats.counters["sink.redis.records_refused"] == 4
    assert caplog.text.count("refused") == 4
    assert "surrogates not allowed" in caplog.text and "2**53" in caplog.text


# --- failures --------------------------------------------------------------------------------------


def test_server_down_raises_sink_error_then_the_retry_succeeds(redis_server, make_sink, r, stats):
    sink = make_sink()
    sink.write([trade(i) for i in range(1, 101)])
    batch = [trade(i) for i in range(50, 201)] + [Checkpoint("binance", "BTCUSDT", 200)]
    with redis_server.down(seconds=1.0):
        started = time.monotonic()
        with pytest.raises(SinkError, match="write of 152 records"):
            sink.write(batch)
        assert time.monotonic() - started < 2.0  # fails fast: retrying is the pipeline's job
        with pytest.raises(SinkError):
            sink.resume_points("binance")
    sink.write(batch)  # reconnects; the server restarted with an empty script cache
    assert stored_ids(r) == list(range(1, 201))
    assert sink.resume_points("binance") == {"BTCUSDT": 200}


def test_open_with_the_server_down_is_not_fatal(redis_server, redis_url, r, caplog):
    with redis_server.down():
        sink = RedisStreamsSink("redis", config(redis_url))
        with caplog.at_level(logging.WARNING, logger="ingestd.sinks.redis"):
            sink.open()
        assert "not reachable yet" in caplog.text
        with pytest.raises(SinkError):
            sink.write([trade(1)])
    sink.write([trade(1)])
    sink.close()
    assert stored_ids(r) == [1]


def test_a_key_of_another_type_fails_the_batch_before_writing_that_stream(sink, r):
    r.set("trades:ETHUSDT", "not a stream")
    batch = [trade(1), trade(1, symbol="ETHUSDT")]
    with pytest.raises(SinkError, match="WRONGTYPE"):
        sink.write(batch)
    assert r.get("trades:ETHUSDT") == b"not a stream"
    r.delete("trades:ETHUSDT")
    sink.write(batch)  # the retry: BTCUSDT is a duplicate now, ETHUSDT new
    assert stored_ids(r) == [1] and stored_ids(r, "trades:ETHUSDT") == [1]


def test_the_password_never_reaches_logs_or_errors(redis_server, redis_url, r, caplog):
    url = f"redis://:hunter2secret@127.0.0.1:{redis_server.port}/0"
    parsed = parse_config(f'[sinks.r]\ntype = "redis"\nurl = {{ env = "RURL" }}\n', environ={"RURL": url})
    sink = build_sink("r", parsed.sinks["r"], state_dir=Path("."), stats=StatsRegistry("t"))
    assert isinstance(sink, RedisStreamsSink)
    r.config_set("requirepass", "another-password")
    try:
        with caplog.at_level(logging.DEBUG):
            with pytest.raises(SinkError) as caught:
                sink.open()
    finally:
        r.config_set("requirepass", "")
    assert "hunter2secret" not in str(caught.value) and "hunter2secret" not in caplog.text
    assert f"127.0.0.1:{redis_server.port}" in str(caught.value)
    sink.close()


def test_the_pipeline_rides_out_an_outage_without_duplicates(redis_server, redis_url, r):
    """SinkRunner retries the failing batch with backoff; after the restart every trade is there once."""
    stats = StatsRegistry("t")
    sink = RedisStreamsSink("redis", config(redis_url, stream_maxlen=10**9), stats=stats)

    async def main():
        runner = SinkRunner(sink, stats, batch_size=500, linger_s=0.01, retry_base_s=0.05, retry_cap_s=0.3)
        async with trio.open_nursery() as nursery:
            await nursery.start(runner.run)
            async with Router([runner]) as router:
                for start in range(1, 20_001, 100):
                    await router.send([trade(i) for i in range(start, start + 100)]
                                      + [Checkpoint("binance", "BTCUSDT", start + 99)])
                    if start == 5001:
                        await trio.to_thread.run_sync(redis_server.stop)
                        nursery.start_soon(restart_later)
                    await trio.sleep(0.001)

    async def restart_later():
        await trio.sleep(1.5)
        await trio.to_thread.run_sync(redis_server.start)

    trio.run(main)
    assert stats.counters["sink.redis.write_errors"] > 0
    ids = stored_ids(r)
    assert len(ids) == 20_000 and sorted(ids) == list(range(1, 20_001))
    assert r.hget("ingestd:checkpoints:binance", "BTCUSDT") == b"20000"


def test_a_server_of_its_own_restarts_on_the_same_port_with_its_data(tmp_path):
    with RedisServer(tmp_path / "own") as server:
        port = server.port
        client = server.client()
        client.xadd("s", {"a": "1"})
        server.stop()
        assert not server.running
        server.start()
        assert server.port == port and client.xlen("s") == 1
        client.close()
    assert not server.running
