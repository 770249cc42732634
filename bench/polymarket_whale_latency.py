"""Whale trade seen -> event in Kafka, for `ingestd run polymarket` against the loopback simulator.

    .venv/bin/python bench/polymarket_whale_latency.py                    # 30 s, linger_ms 5
    .venv/bin/python bench/polymarket_whale_latency.py --seconds 60 --linger-ms 5,50 --poll-interval 1

Real processes: a Tansu broker (tests/kafka_server.py, the tests' own fixture code), the Polymarket
simulator (`python -m ingestd.sim.polymarket`), and `ingestd run polymarket` with only a Kafka sink,
watching the simulator's whales through `whale_addresses`. A consumer in this process reads
`whale_activity` with assign() (consumer groups do not deliver on Tansu 0.6) and notes when each
event arrives.

What is measured (the legacy service's target: whale trade seen -> event in Kafka, p99 < 100 ms,
excluding the poll period):
  detected -> in Kafka   the event's `detected_at` (stamped when the poll's HTTP response was
                         received) to the moment the consumer here has it: parse, the feed's state
                         task, the router, the batcher's linger, the sink's produce + acks=all flush,
                         and the broker-to-consumer fetch (fetch_max_wait_ms 5, so up to ~5 ms of the
                         figure is the reader's, not the daemon's). This is the figure for the target.
  detected -> produced   `detected_at` to the Kafka message's CreateTime, which the sink stamps when it
                         hands the record to the producer (excludes the broker round trip).
  visible -> in Kafka    when the trade became visible at the simulator's Data API (its trade time;
                         --data-lag-ms 0) to arrival: includes the wait for the next poll, so about
                         poll_interval/2 on average; shown for context, not for the target.
Times are ms; detected_at is truncated to the millisecond by the event format. The first
--warmup seconds are left out (connections, the first polls, and trades made before them). Figures are
printed, never judged.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.kafka_server import start_kafka_server  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


def summary(values: list[float]) -> str:
    if not values:
        return "no samples"
    return (f"n={len(values):4d}  p50 {pct(values, 0.5):7.1f}  p90 {pct(values, 0.9):7.1f}  "
            f"p99 {pct(values, 0.99):7.1f}  max {max(values):7.1f}")


def iso_to_ms(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000


def start_sim(tmp: Path, args) -> tuple[subprocess.Popen, dict]:
    ports = tmp / "sim.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingestd.sim.polymarket", "--ports-file", str(ports), "--seed", "1",
         "--markets", str(args.markets), "--whales", str(args.whales), "--rate", str(args.rate),
         "--whale-share", "0.5", "--data-lag-ms", "0", "--log-level", "WARNING"],
        cwd=REPO, stdout=open(tmp / "sim.log", "wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while not ports.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError((tmp / "sim.log").read_text())
        time.sleep(0.05)
    return proc, json.loads(ports.read_text())


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def write_config(tmp: Path, bootstrap: str, topics: dict, urls: dict, whales: list[str], args, linger_ms: int) -> Path:
    path = tmp / f"ingestd-{linger_ms}.toml"
    path.write_text(textwrap.dedent(f"""
        [daemon]
        linger_ms = {linger_ms}
        http_port = 0
        stats_socket = "{tmp / f'stats-{linger_ms}.sock'}"

        [sinks.kafka]
        type = "kafka"
        bootstrap_servers = ["{bootstrap}"]
        whales_topic = "{topics['whales']}"
        prediction_trades_topic = "{topics['trades']}"
        prediction_books_topic = "{topics['books']}"

        [feeds.polymarket]
        sinks = ["kafka"]
        ws_url = "{urls['ws_url']}"
        data_api_url = "{urls['data_api_url']}"
        whale_addresses = {json.dumps(whales)}
        follow_whale_markets = {str(not args.no_markets).lower()}
        poll_interval_s = {args.poll_interval}
        whale_history_s = 0
        """))
    return path


def consume(bootstrap: str, topic: str, seconds: float, on_message) -> None:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, auto_offset_reset="earliest",
                             fetch_max_wait_ms=5, max_poll_records=10000, request_timeout_ms=10000)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or {0})]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for messages in consumer.poll(timeout_ms=50).values():
                arrived = time.time() * 1000
                for m in messages:
                    on_message(m, arrived)
    finally:
        consumer.close()


def run_once(tmp: Path, server, urls: dict, whales: list[str], args, linger_ms: int) -> None:
    stamp = f"{os.getpid()}-{linger_ms}-{time.strftime('%H%M%S')}"
    topics = {k: f"bench-pm-{k}-{stamp}" for k in ("whales", "trades", "books")}
    server.create_topic(topics["whales"], partitions=1)
    config = write_config(tmp, server.bootstrap, topics, urls, whales, args, linger_ms)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "ingestd", "--config", str(config), "run", "polymarket",
         "--state-dir", str(tmp / f"state-{linger_ms}"), "--log-level", "warning"],
        cwd=REPO, stdout=open(tmp / f"daemon-{linger_ms}.log", "wb"), stderr=subprocess.STDOUT)
    started_ms = time.time() * 1000
    events: list[tuple[dict, float, float]] = []
    try:
        consume(server.bootstrap, topics["whales"], args.seconds,
                lambda m, arrived: events.append((json.loads(m.value), arrived, float(m.timestamp))))
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(20)
    visible = {t["tx_hash"]: t["ts_ms"] for t in get(urls["control_url"] + "/_sim/truth")["trades"]}
    warm = started_ms + args.warmup * 1000
    kafka, produced, since_visible, poll_wait = [], [], [], []
    for event, arrived, created in events:
        detected = iso_to_ms(event["detected_at"])
        shown = visible.get(event["trade_id"])
        # Trades made before the warm-up ended (or before the daemon ran: the first polls' lookback
        # reaches back to them) would measure the start, not the steady state.
        if detected < warm or shown is None or shown < warm:
            continue
        kafka.append(arrived - detected)
        produced.append(created - detected)
        since_visible.append(arrived - shown)
        poll_wait.append(detected - shown)
        if args.samples:
            print(f"  visible at +{(shown - started_ms) / 1000:6.2f} s  detected {detected - shown:7.1f} ms later,"
                  f" in Kafka {arrived - detected:6.1f} ms after that  {event['trader_address']}")
    print(f"\nlinger_ms = {linger_ms}, poll_interval_s = {args.poll_interval}, {args.whales} whales, "
          f"{len(events)} whale events in {args.seconds:g} s ({len(kafka)} after the warm-up), "
          f"markets followed: {'no' if args.no_markets else 'yes'}")
    print(f"  detected -> in Kafka   {summary(kafka)}")
    print(f"  detected -> produced   {summary(produced)}")
    print(f"  visible  -> detected   {summary(poll_wait)}   (the poll wait + request)")
    print(f"  visible  -> in Kafka   {summary(since_visible)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measurement time per run (default: 30)")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds left out at the start (default: 3)")
    parser.add_argument("--linger-ms", default="5", help="comma-separated [daemon] linger_ms values (default: 5)")
    parser.add_argument("--poll-interval", type=float, default=1.0, help="poll_interval_s (default: 1.0)")
    parser.add_argument("--whales", type=int, default=5, help="simulated whales, all watched (default: 5)")
    parser.add_argument("--markets", type=int, default=6, help="simulated markets (default: 6)")
    parser.add_argument("--rate", type=float, default=40.0,
                        help="market events per second; 30%% are trades, half of those by whales (default: 40)")
    parser.add_argument("--no-markets", action="store_true", help="do not follow the whales' markets' books and trades")
    parser.add_argument("--samples", action="store_true", help="print every sample, not only the summary")
    args = parser.parse_args()
    try:
        load = os.getloadavg()
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    except OSError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="bench-pm-"))
    (tmp / "tansu").mkdir()
    server = start_kafka_server(tmp / "tansu")
    sim, urls = start_sim(tmp, args)
    try:
        whales = [w["address"] for w in get(urls["control_url"] + "/_sim/truth")["whales"]]
        for linger in [int(x) for x in args.linger_ms.split(",")]:
            run_once(tmp, server, urls, whales, args, linger)
    finally:
        sim.send_signal(signal.SIGTERM)
        sim.wait(10)
        server.close()
    print(f"\nlogs in {tmp}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
