"""The stats socket served by Trio on a real AF_UNIX socket, over a real StatsRegistry.

Control-verb authorization is checked with a client running as another uid (nobody), started as a
real process: SO_PEERCRED then reports what the kernel knows, not what the test claims.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import trio

from ingestd.stats import StatsRegistry
from ingestd.statsock import protocol as p
from ingestd.statsock.server import serve_stats_socket

pytestmark = pytest.mark.trio

NOBODY = 65534
NOGROUP = 65534
ADMIN_GROUP = "adm"  # any existing group other than root's and nobody's


class Client:
    """A test client speaking the shared protocol over a trio stream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = p.Connection("client")
        self.pending: list = []

    @classmethod
    async def open(cls, path: Path) -> "Client":
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, message) -> None:
        await self.stream.send_all(p.encode(message))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self, timeout: float = 5.0):
        with trio.fail_after(timeout):
            while not self.pending:
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    raise EOFError("server closed the connection")
                self.pending += self.conn.receive_data(data)
        return self.pending.pop(0)

    async def aclose(self) -> None:
        await self.stream.aclose()


@pytest.fixture
def registry() -> StatsRegistry:
    stats = StatsRegistry("binance")
    stats.incr("binance.trades", 5)
    stats.set_gauge("binance.books_live", 3)
    c = stats.connection("binance/0#1")
    c.state, c.messages = "up", 10
    return stats


async def start(nursery, stats, path, **kw) -> Path:
    return await nursery.start(lambda task_status: serve_stats_socket(stats, path, task_status=task_status, **kw))


async def test_snapshot_mode_and_cleanup(tmp_path, registry):
    path = tmp_path / "run" / "binance" / "stats.sock"  # the parent does not exist yet
    async with trio.open_nursery() as nursery:
        assert await start(nursery, registry, path) == path
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert not [f for f in path.parent.iterdir() if f.name != "stats.sock"]  # no temp file left
        client = await Client.open(path)
        await client.send(p.SnapshotRequest(id=1))
        reply = await client.receive()
        assert isinstance(reply, p.Snapshot) and reply.id == 1
        assert reply.data["instance"] == "binance"
        assert reply.data["counters"]["binance.trades"] == 5
        assert reply.data["connections"][0]["state"] == "up"
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert not path.exists()


async def test_subscribe_sends_a_snapshot_then_one_per_interval(tmp_path, registry):
    path = tmp_path / "stats.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, registry, path)
        slow = await Client.open(path)
        t0 = trio.current_time()
        await slow.send(p.SubscribeRequest(interval_ms=2000, id="s"))
        first = await slow.receive()
        assert first.id == "s" and first.interval_ms == 2000
        assert trio.current_time() - t0 < 1.0  # at once, not after the interval

        client = await Client.open(path)
        await client.send(p.SubscribeRequest(interval_ms=100))
        await client.receive()
        times, trades = [], []
        for i in range(5):
            registry.incr("binance.trades")
            msg = await client.receive(timeout=2)
            assert isinstance(msg, p.Snapshot) and msg.interval_ms == 100 and msg.id is None
            times.append(trio.current_time())
            trades.append(msg.data["counters"]["binance.trades"])
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert 0.07 < sum(gaps) / len(gaps) < 0.2 and max(gaps) < 0.5, gaps
        assert trades == sorted(trades) and trades[-1] > 5  # updates are fresh
        await client.aclose()
        await slow.aclose()
        nursery.cancel_scope.cancel()


class CountingRegistry(StatsRegistry):
    calls = 0

    def snapshot(self) -> dict:
        CountingRegistry.calls += 1
        return super().snapshot()


async def test_one_snapshot_per_interval_is_shared_by_all_subscribers(tmp_path):
    stats = CountingRegistry("x")
    path = tmp_path / "stats.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, stats, path)
        clients = [await Client.open(path) for _ in range(5)]
        for c in clients:
            await c.send(p.SubscribeRequest(interval_ms=100))
        for c in clients:
            await c.receive()
        CountingRegistry.calls = 0
        updates = [{(await c.receive(timeout=2)).data["now_us"] for _ in range(4)} for c in clients]
        assert len(set.intersection(*updates)) >= 2  # the very same snapshots went to everyone
        assert CountingRegistry.calls <= 6  # one per tick (4, and one in flight, one spare), not 20
        for c in clients:
            await c.aclose()
        nursery.cancel_scope.cancel()


async def test_malformed_lines_get_errors_and_the_connection_survives(tmp_path, registry):
    path = tmp_path / "stats.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, registry, path)
        client = await Client.open(path)
        await client.send_raw(b"hello\n")
        await client.send_raw(b'{"v":1,"type":"nope"}\n')
        await client.send_raw(b'{"v":7,"type":"snapshot","id":4}\n')
        await client.send_raw(b"x" * (p.MAX_REQUEST_LINE + 10) + b"\n")  # over the limit: refused, not buffered
        await client.send(p.SnapshotRequest())
        errors = [await client.receive() for _ in range(4)]
        assert all(isinstance(e, p.Error) for e in errors), errors
        assert "malformed JSON" in errors[0].error
        assert "unknown message type" in errors[1].error
        assert "unsupported protocol version 7" in errors[2].error and errors[2].id == 4
        assert "longer than" in errors[3].error
        assert isinstance(await client.receive(), p.Snapshot)
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_control_verbs_for_root(tmp_path, registry):
    calls = []

    async def flush(args: dict) -> dict:
        calls.append(args)
        return {"flushed": 3}

    async def broken(args: dict) -> dict:
        raise RuntimeError("feed is not running")

    path = tmp_path / "stats.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, registry, path, controls={"flush": flush, "reconnect": broken}, admin_group=None)
        client = await Client.open(path)
        await client.send(p.ControlRequest(verb="flush", args={"sink": "local"}, id=1))
        assert await client.receive() == p.Result(ok=True, error=None, verb="flush", data={"flushed": 3}, id=1)
        assert calls == [{"sink": "local"}]
        await client.send(p.ControlRequest(verb="pause"))
        res = await client.receive()
        assert not res.ok and "unknown verb 'pause'" in res.error and "flush, reconnect" in res.error
        await client.send(p.ControlRequest(verb="reconnect"))
        res = await client.receive()
        assert not res.ok and res.error == "feed is not running"
        await client.aclose()
        nursery.cancel_scope.cancel()


async def test_a_slow_subscriber_is_dropped_and_others_keep_their_cadence(tmp_path):
    stats = StatsRegistry("big")
    for i in range(4000):  # ~150 kB snapshots: a reader that stops reading fills its buffers fast
        stats.last_event_us[("binance", f"SYM{i:05d}USDT")] = 1_700_000_000_000_000 + i
    path = tmp_path / "stats.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, stats, path)
        slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(str(path))
        slow.sendall(p.encode(p.SubscribeRequest(interval_ms=100)))  # ...and never reads
        fast = await Client.open(path)
        await fast.send(p.SubscribeRequest(interval_ms=100))
        await fast.receive()
        t0 = trio.current_time()
        received = 0
        while trio.current_time() - t0 < 1.5:
            await fast.receive(timeout=0.5)  # never stalls behind the slow one
            received += 1
        assert received >= 7
        # The slow one was dropped: once it drains what is queued, it sees EOF.
        slow.setblocking(False)
        with trio.fail_after(5):
            while True:
                await trio.sleep(0.01)
                try:
                    if slow.recv(1 << 20) == b"":
                        break
                except BlockingIOError:
                    pass
        slow.close()
        await fast.aclose()
        nursery.cancel_scope.cancel()


async def test_a_stale_socket_is_replaced_but_not_a_regular_file(tmp_path, registry):
    path = tmp_path / "stats.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a crashed predecessor's file
    async with trio.open_nursery() as nursery:
        await start(nursery, registry, path)
        client = await Client.open(path)
        await client.send(p.SnapshotRequest())
        assert isinstance(await client.receive(), p.Snapshot)
        await client.aclose()
        nursery.cancel_scope.cancel()
    other = tmp_path / "not-a-socket"
    other.write_text("keep me")
    with pytest.raises(FileExistsError):
        await serve_stats_socket(registry, other)
    assert other.read_text() == "keep me"


# --- authorization, with a client running as another uid -----------------------------------------

# stdlib only: it runs as nobody with the system python, which cannot read the test's virtualenv.
CLIENT = textwrap.dedent("""
    import json, socket, sys
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(sys.argv[1])
    s.sendall(b'{"v":1,"type":"snapshot"}\\n{"v":1,"type":"control","verb":"flush","args":{}}\\n')
    f = s.makefile("rb")
    out = [json.loads(f.readline()) for _ in range(2)]
    print(json.dumps({"types": [m["type"] for m in out], "result": out[1]}))
""")


@pytest.fixture
def shared_dir():
    """A directory another uid can reach (pytest's tmp_path is under a 0700 directory)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another uid")
    d = Path(tempfile.mkdtemp(prefix="statsock-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


async def run_client_as_nobody(path: Path, extra_groups: list[int]) -> dict:
    proc = await trio.run_process(
        ["/usr/bin/python3", "-I", "-c", CLIENT, str(path)],
        user=NOBODY, group=NOGROUP, extra_groups=extra_groups,
        capture_stdout=True, capture_stderr=True, check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


async def test_control_is_refused_for_a_peer_outside_the_admin_group(shared_dir, registry, caplog):
    flushed = []

    async def flush(args):
        flushed.append(args)
        return {}

    path = shared_dir / "stats.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, registry, path, controls={"flush": flush}, admin_group=ADMIN_GROUP)
        os.chown(path, -1, NOGROUP)  # nobody may connect (mode 0660, group nogroup) but is no admin
        with caplog.at_level(logging.WARNING, logger="ingestd.statsock"):
            out = await run_client_as_nobody(path, extra_groups=[])
        assert out["types"] == ["snapshot", "result"]  # reading is allowed
        assert out["result"]["ok"] is False and out["result"]["error"] == "permission denied"
        assert flushed == []
        refusals = [r for r in caplog.records if "refused" in r.getMessage()]
        assert refusals and refusals[0].uid == NOBODY and refusals[0].verb == "flush"
        nursery.cancel_scope.cancel()


async def test_control_is_accepted_for_a_supplementary_admin_group_member(shared_dir, registry):
    flushed = []

    async def flush(args):
        flushed.append(args)
        return {"ok": 1}

    path = shared_dir / "stats.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, registry, path, controls={"flush": flush}, admin_group=ADMIN_GROUP)
        os.chown(path, -1, NOGROUP)
        out = await run_client_as_nobody(path, extra_groups=[grp.getgrnam(ADMIN_GROUP).gr_gid])
        assert out["result"] == {"v": 1, "type": "result", "ok": True, "error": None, "verb": "flush",
                                 "data": {"ok": 1}}
        assert flushed == [{}]
        nursery.cancel_scope.cancel()


async def test_a_peer_that_cannot_open_the_socket_gets_nothing(shared_dir, registry):
    path = shared_dir / "stats.sock"
    async with trio.open_nursery() as nursery:
        await start(nursery, registry, path)
        proc = await trio.run_process(["/usr/bin/python3", "-I", "-c", CLIENT, str(path)], user=NOBODY,
                                      group=NOGROUP, extra_groups=[], capture_stdout=True, capture_stderr=True,
                                      check=False)
        assert proc.returncode != 0 and b"PermissionError" in proc.stderr  # 0660 root:root
        nursery.cancel_scope.cancel()
