"""A real `redis-server` for tests and benchmarks: free loopback port, private temp dir, no orphans.

    from tests.redis_server import redis_server, redis_url  # noqa: F401  (makes the fixtures visible)

    def test_something(redis_url): ...                 # a running, empty server (FLUSHALL before)
    def test_outage(redis_server, redis_url):
        redis_server.stop(); ...; redis_server.start()  # same port, same data

`redis_server` is session-scoped: one process for the whole run, shared by every module that imports
the fixtures (they share one RedisServer object, so importing them in several modules still starts
one server). `redis_url` is per test: it restarts the server if an earlier test left it down, and
empties it.

Persistence: `appendonly yes`, `appendfsync everysec`, `save ""`. The append-only file is what
makes stop()/start() keep the data (a SIGTERM'd Redis fsyncs it before exiting) and it is how a
production Redis for ingestd should run, so what the tests and the benchmark measure is the real
path, including the AOF write after every event-loop turn. everysec rather than always: always
would measure this disk's fsync, not Redis. No RDB snapshots: a background save forks the server in
the middle of a measurement for nothing (the AOF already holds everything).

No orphans: the server is killed at session teardown (even when tests failed), at interpreter exit
(atexit), and, should the test process itself be SIGKILLed, by the kernel (PR_SET_PDEATHSIG, set
from one long-lived spawner thread, since the kernel ties it to the forking thread).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
START_TIMEOUT_S = 15.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# PR_SET_PDEATHSIG fires when the THREAD that forked the child exits, not the process: a server
# started from a short-lived thread (trio.to_thread's, say) would be killed when that thread idles
# out. So every server is forked by this one thread, which lives as long as the process.
_spawner: ThreadPoolExecutor | None = None


def _spawn(args: list[str]) -> subprocess.Popen:
    global _spawner
    if _spawner is None:
        _spawner = ThreadPoolExecutor(max_workers=1, thread_name_prefix="redis-server-spawner")
    return _spawner.submit(
        subprocess.Popen, args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent
    ).result()


class RedisServer:
    """One redis-server process. start() and stop() may alternate; the port and data stay."""

    def __init__(self, directory: str | Path | None = None, *, port: int | None = None) -> None:
        self._own_dir = directory is None
        self.dir = Path(directory or tempfile.mkdtemp(prefix="ingestd-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "redis.log"
        atexit.register(self.kill)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _config(self) -> str:
        return "\n".join([
            f"port {self.port}",
            "bind 127.0.0.1",
            f'dir "{self.dir}"',
            'save ""',
            "appendonly yes",
            "appendfsync everysec",
            f'logfile "{self.log_path}"',
            "daemonize no",
            "",
        ])

    def start(self) -> "RedisServer":
        """Start (or restart) on the same port with the same data dir; returns when it answers PING."""
        if self.running:
            return self
        conf = self.dir / "redis.conf"
        conf.write_text(self._config())
        attempts = 1 if self.proc is not None else 5  # a first start may pick another free port
        for attempt in range(attempts):
            self.proc = _spawn([REDIS_SERVER, str(conf)])
            if self._wait_ready():
                return self
            self.kill()
            if attempt + 1 < attempts:
                self.port = _free_port()
                conf.write_text(self._config())
        log = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise RuntimeError(f"redis-server did not start on port {self.port}:\n{log}")

    def _wait_ready(self) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):  # "-LOADING ..." while it reads the AOF
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def stop(self, timeout: float = 10.0) -> None:
        """Clean shutdown (SIGTERM): Redis fsyncs the append-only file, so start() finds all data."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Crash it (SIGKILL): with appendfsync everysec, up to the last second of writes is lost."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    @contextlib.contextmanager
    def down(self, seconds: float = 0.0) -> Iterator[None]:
        """Stopped inside the block (for at least `seconds`), running again after it."""
        self.stop()
        started = time.monotonic()
        try:
            yield
            time.sleep(max(0.0, seconds - (time.monotonic() - started)))
        finally:
            self.start()

    def client(self, **kwargs):
        import redis

        return redis.Redis.from_url(self.url, **kwargs)

    def close(self) -> None:
        """Stop for good and remove the data dir (if this object created it)."""
        self.stop()
        atexit.unregister(self.kill)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- pytest fixtures ------------------------------------------------------------------------------

_shared: RedisServer | None = None


def shared_server() -> RedisServer:
    """The session's server, started on first use (one per test process)."""
    global _shared
    if shutil.which(REDIS_SERVER) is None:
        pytest.skip("redis-server is not installed (scripts/bootstrap.sh --test installs it)")
    if _shared is None:
        _shared = RedisServer().start()
    return _shared


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    global _shared
    server = shared_server()
    yield server
    if _shared is server:  # the first module's teardown stops it; the others find nothing left
        _shared = None
        server.close()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL of a running, empty server."""
    redis_server.start()  # an earlier test may have left it stopped
    with contextlib.closing(redis_server.client()) as client:
        client.flushall()
        client.script_flush()
    return redis_server.url
