"""A throwaway PostgreSQL server for tests and benchmarks: real `postgres`, loopback only, temp dir.

How it works
------------
1. `initdb` creates a cluster in a fresh temp dir (`/tmp/ingestd-pg-XXXX/data`) with superuser
   `ingestd`, UTF-8, and `trust` authentication (nothing but loopback can reach it: it listens on
   127.0.0.1 only and its Unix socket lives in the temp dir, not in /var/run/postgresql).
2. `postgres -D data -p PORT` is started directly as our child process, on a free loopback port
   picked by binding port 0. PostgreSQL refuses to run as root, so when the tests run as root both
   programs run as the `postgres` system user (`subprocess.Popen(user=..., group=...)`, i.e. what
   `runuser -u postgres --` does, without a wrapper process in between) and the temp dir is chowned
   to it. As any other user they simply run as that user.
3. Readiness is "a psycopg connection succeeds", polled for up to 30 s; if the postmaster exits
   early its log (`/tmp/ingestd-pg-XXXX/postgres.log`) is put into the error.

Stopping, restarting, no orphans
--------------------------------
`stop()` sends the postmaster SIGINT (fast shutdown: sessions are terminated, data is flushed) or,
with `immediate=True`, SIGQUIT (a crash, as a power cut would look to clients); `start()` starts it
again on the same port and data dir, so a test can take the database away for N seconds and bring
it back. `destroy()` stops it and deletes the temp dir.

An orphaned postmaster is prevented three ways: the session fixture's finalizer destroys the server
even when tests fail; an `atexit` hook destroys every server this process started (covers scripts
such as the benchmark); and the postmaster is started with the Linux parent-death signal set to
SIGQUIT, so even a `kill -9` of pytest takes it down (immediate shutdown, its backends follow). That
signal follows the thread that forked, so every start forks from one lasting spawner thread: a
restart from a short-lived thread (a trio worker thread, say) does not die with that thread.

Speed: test servers run with `fsync=off` (commits still reach the kernel, so even a killed postmaster
loses nothing committed; only a machine crash could); `PgServer(durable=True)` keeps PostgreSQL's
defaults (the benchmark uses it).

Use in tests
------------
    from tests.pg_server import pg_server, pg_database  # noqa: F401  (pytest fixtures)

    def test_x(pg_database):        # a fresh, empty database per test, dropped afterwards
        conn = psycopg.connect(pg_database.conninfo)

`pg_server` is session-scoped and shared by every module that imports it (one server per pytest
process); tests that stop it must restart it (the `pg_database` fixture restarts it if a failing
test left it down). Set INGESTD_TEST_PG_BINDIR to use another PostgreSQL installation.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import ctypes
import glob
import itertools
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psycopg
import pytest

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
SUPERUSER = "ingestd"

_PR_SET_PDEATHSIG = 1


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin dir (Debian: /usr/lib/postgresql/N/bin), or None."""
    env = os.environ.get("INGESTD_TEST_PG_BINDIR")
    if env:
        return Path(env)
    candidates = glob.glob("/usr/lib/postgresql/*/bin/postgres")

    def version(path: str) -> float:
        try:
            return float(Path(path).parent.parent.name)
        except ValueError:
            return 0.0

    if candidates:
        return Path(max(candidates, key=version)).parent
    found = shutil.which("postgres")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """preexec_fn: SIGQUIT (immediate shutdown) the postmaster when the process that started it dies.

    Runs after the switch to the postgres user (a credential change would clear the setting)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGQUIT, 0, 0, 0)
    except (OSError, AttributeError):
        pass


_spawn_requests: "queue.Queue[tuple[Callable[[], subprocess.Popen], concurrent.futures.Future]]" = queue.Queue()
_spawner: threading.Thread | None = None
_spawner_lock = threading.Lock()


def _spawn_from_lasting_thread(start: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    """Run `start` on one daemon thread that lives as long as the process.

    The parent-death signal fires when the *thread* that forked the child exits, so a postmaster
    started (or restarted) from a short-lived thread, such as a trio worker thread, would die with
    that thread. Forking from one lasting thread ties it to the process instead."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = threading.Thread(target=_serve_spawns, name="pg-server-spawner", daemon=True)
            _spawner.start()
    done: concurrent.futures.Future = concurrent.futures.Future()
    _spawn_requests.put((start, done))
    return done.result()


def _serve_spawns() -> None:
    while True:
        start, done = _spawn_requests.get()
        try:
            done.set_result(start())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            done.set_exception(exc)


_live: list["PgServer"] = []


@atexit.register
def _destroy_all() -> None:
    for server in list(_live):
        server.destroy()


@dataclass
class Database:
    """Connection parameters of one database on a test server."""

    host: str
    port: int
    dbname: str
    user: str
    server: "PgServer"

    @property
    def conninfo(self) -> str:
        return f"host={self.host} port={self.port} dbname={self.dbname} user={self.user}"


class PgServer:
    """One throwaway PostgreSQL cluster. `host`, `port`, `dbname`, `user` point at its default database."""

    host = "127.0.0.1"
    user = SUPERUSER
    dbname = "ingestd"

    def __init__(self, *, durable: bool = False, bindir: Path | None = None, settings: dict[str, str] | None = None):
        self.bindir = bindir or find_bindir()
        if self.bindir is None or not (self.bindir / "postgres").exists():
            raise FileNotFoundError("no PostgreSQL server binaries found (apt-get install postgresql)")
        self.durable = durable
        self.settings = dict(settings or {})
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._as_user = _postgres_user() if os.geteuid() == 0 else None
        self.tmp = Path(tempfile.mkdtemp(prefix="ingestd-pg-"))
        self.data_dir = self.tmp / "data"
        self.log_path = self.tmp / "postgres.log"
        self._counter = itertools.count(1)
        _live.append(self)
        try:
            if self._as_user is not None:
                os.chmod(self.tmp, 0o700)
                os.chown(self.tmp, self._as_user.pw_uid, self._as_user.pw_gid)
            self._run(
                [
                    str(self.bindir / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
                    "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-sync",
                ]
            )
            self.start()
            with self.connect("postgres") as conn:
                conn.execute(f'CREATE DATABASE "{self.dbname}"')
        except BaseException:
            self.destroy()
            raise

    # --- processes -----------------------------------------------------------------------------

    def _popen_kwargs(self) -> dict:
        kwargs: dict = {"cwd": self.tmp}
        if self._as_user is not None:
            kwargs.update(user=self._as_user.pw_uid, group=self._as_user.pw_gid, extra_groups=[])
        return kwargs

    def _run(self, args: list[str]) -> None:
        result = subprocess.run(args, capture_output=True, text=True, **self._popen_kwargs())
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")

    def start(self) -> None:
        """Start the postmaster (again) on the same port and data dir; return once it accepts connections."""
        if self.running:
            return
        settings = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.tmp),
            "max_connections": "50",
            "shared_buffers": "128MB",
            "log_min_messages": "warning",
        }
        if not self.durable:
            # A killed postmaster (stop(immediate=True)) still loses nothing committed: WAL is written
            # to the kernel at each commit, only not fsynced. A machine crash could lose it.
            settings.update(fsync="off", full_page_writes="off")
        settings.update(self.settings)
        args = [str(self.bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        log = open(self.log_path, "ab")
        try:
            self.proc = _spawn_from_lasting_thread(
                lambda: subprocess.Popen(
                    args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent, **self._popen_kwargs(),
                )
            )
        finally:
            log.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited during startup; log:\n{self.log_tail()}")
            try:
                psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres not ready after {READY_TIMEOUT_S} s; log:\n{self.log_tail()}")
                time.sleep(0.05)

    def stop(self, *, immediate: bool = False) -> None:
        """Shut the postmaster down (fast, or immediate = a crash) and wait for it to exit."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGQUIT if immediate else signal.SIGINT)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()  # SIGKILL the postmaster; its backends notice and exit
            proc.wait()

    def destroy(self) -> None:
        """Stop the server and delete its files. Idempotent."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if self in _live:
                _live.remove(self)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- databases -----------------------------------------------------------------------------

    def conninfo(self, dbname: str | None = None) -> str:
        return f"host={self.host} port={self.port} dbname={dbname or self.dbname} user={self.user}"

    def connect(self, dbname: str | None = None) -> psycopg.Connection:
        return psycopg.connect(self.conninfo(dbname), autocommit=True)

    def create_database(self, prefix: str = "t") -> Database:
        name = f"{prefix}_{os.getpid()}_{next(self._counter)}"
        with self.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return Database(self.host, self.port, name, self.user, self)

    def drop_database(self, name: str) -> None:
        with self.connect("postgres") as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def __repr__(self) -> str:
        return f"<PgServer {self.host}:{self.port} {self.tmp} {'running' if self.running else 'stopped'}>"


def _postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root needs a `postgres` system user to run the server as") from None


# --- pytest fixtures ---------------------------------------------------------------------------

_shared: PgServer | None = None


def shared_server() -> PgServer:
    """The one server of this process, started on first use (pytest modules share it)."""
    global _shared
    if _shared is None or not _shared.tmp.exists():
        try:
            _shared = PgServer()
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
    return _shared


@pytest.fixture(scope="session")
def pg_server():
    """A running throwaway PostgreSQL server, shared by the whole test session."""
    server = shared_server()
    yield server
    # Every module importing this fixture registers its own copy; the first teardown destroys the
    # server and the rest find nothing left to do.
    global _shared
    if _shared is server:
        _shared = None
    server.destroy()


@pytest.fixture
def pg_database(pg_server: PgServer):
    """A fresh empty database on the shared server, dropped after the test (restarting a stopped server)."""
    pg_server.start()
    db = pg_server.create_database()
    yield db
    pg_server.start()  # a test that failed while the server was down must not break the next one
    pg_server.drop_database(db.dbname)
