"""The per-instance stats socket: `StatsRegistry.snapshot()` over AF_UNIX, JSON Lines (see protocol.py).

    async with trio.open_nursery() as nursery:
        await nursery.start(serve_stats_socket, stats, Path("/run/ingestd/binance/stats.sock"))

Who may do what:
  * connecting at all is decided by the file mode: 0660, so the daemon's user and group (and root);
  * `snapshot` and `subscribe` are for everyone who can connect;
  * `control` verbs only for a peer that is uid 0 or whose gid or supplementary groups include
    `admin_group`, checked with SO_PEERCRED and SO_PEERGROUPS before any verb is looked up. Both
    are the kernel's record of the peer at connect(), mapped into our user namespace, so they hold
    under the unit's PrivateUsers=yes and ProtectProc=invisible, where /proc/<pid>/status of the
    peer is hidden from us (that is only the fallback, for kernels older than 4.13).
    Others get ok=false, "permission denied", and the daemon logs the refusal.

What each verb does is the daemon's business (`controls`, see ingestd.controls); a handler that
raises ControlRefused answers ok=false with its message. `describe()` adds top-level fields to every
snapshot (the supervisor's "state": starting, running, paused, draining).

A slow reader never stalls the daemon: each connection has a small outbox; a subscriber whose outbox
is full when an update is due is dropped (it may reconnect). A subscription's snapshot is built and
encoded once per interval and the same bytes go to every subscriber of that interval.
"""

from __future__ import annotations

import grp
import logging
import os
import socket
import stat
import struct
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import msgspec
import trio

from ingestd.digits import is_ascii_digits
from ingestd.stats import StatsRegistry
from ingestd.statsock import protocol as p

log = logging.getLogger("ingestd.statsock")

ControlHandler = Callable[[dict], Awaitable[dict]]


class ControlRefused(Exception):
    """Raised by a control handler for a verb that does not apply (now, or to this feed): the reply
    is ok=false with this message, logged as a refusal rather than a failure."""

SOCKET_MODE = 0o660
DIR_MODE = 0o750
OUTBOX_MESSAGES = 4  # per connection: a subscriber this many updates behind is dropped
MAX_CONNECTIONS = 64  # each may hold up to OUTBOX_MESSAGES snapshots and a 1 MiB request line
CONTROL_TIMEOUT_S = 30.0
ONE_SHOT_CACHE_S = 0.05  # a burst of `snapshot` requests shares one registry walk
RECEIVE_BYTES = 65536

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)  # Linux >= 4.13; Python's socket module lacks it
_GID = struct.Struct("I")
_PEERGROUPS_BYTES = _GID.size * 65536  # NGROUPS_MAX: one call always has room


# --- peer credentials ----------------------------------------------------------------------------


def peer_credentials(sock: Any) -> tuple[int, int, int, frozenset[int]]:
    """(pid, uid, gid, supplementary groups) of the process at the other end of a connected AF_UNIX
    socket, as the kernel recorded them at connect()."""
    pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _PEERGROUPS_BYTES)
        groups = frozenset(g for (g,) in _GID.iter_unpack(raw[: len(raw) // _GID.size * _GID.size]))
    except OSError:  # ENOPROTOOPT before Linux 4.13
        groups = frozenset(supplementary_groups(pid))
    return pid, uid, gid, groups


def supplementary_groups(pid: int) -> set[int]:
    """The `Groups:` line of /proc/<pid>/status; empty if the process is gone or hidden from us."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Groups:"):
                    return {int(g) for g in line.split()[1:] if is_ascii_digits(g)}
    except OSError:
        pass
    return set()


def resolve_group(name: str | None) -> int | None:
    if name is None:
        return None
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        log.warning("admin group does not exist: only root may use control verbs", extra={"group": name})
        return None


def may_control(uid: int, gid: int, groups: frozenset[int], admin_gid: int | None) -> bool:
    if uid == 0:
        return True
    if admin_gid is None:
        return False
    return gid == admin_gid or admin_gid in groups


# --- the socket file -----------------------------------------------------------------------------


def _prepare_path(path: Path) -> None:
    if not path.parent.exists():
        path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
    # A socket file left by a crashed predecessor (or a live one being replaced: its existing
    # connections go on, new ones come here). The rename in _bind replaces it atomically.
    log.info("replacing an existing stats socket file", extra={"path": str(path)})


async def _bind(path: Path) -> tuple[trio.socket.SocketType, int]:
    """Bind under a temporary name, chmod, then rename into place: the socket never exists at `path`
    with the umask's mode, and a predecessor's file is replaced atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(tmp))
        os.chmod(tmp, SOCKET_MODE)
        os.rename(tmp, path)
        sock.listen(64)
        return sock, path.stat().st_ino
    except BaseException:
        sock.close()
        tmp.unlink(missing_ok=True)
        raise


def _remove_if_ours(path: Path, ino: int) -> None:
    try:
        if path.lstat().st_ino == ino:  # a successor may have replaced it: leave theirs alone
            path.unlink()
    except FileNotFoundError:
        pass


# --- connections and subscriptions ---------------------------------------------------------------


class _Client:
    __slots__ = ("n", "peer", "outbox", "scope", "interval_ms", "subscribed_at", "dropped")

    def __init__(self, n: int, peer: tuple[int, int, int, frozenset[int]] | None, outbox: trio.MemorySendChannel[bytes]) -> None:
        self.n = n
        self.peer = peer
        self.outbox = outbox
        self.scope: trio.CancelScope | None = None
        self.interval_ms: int | None = None
        self.subscribed_at = 0.0
        self.dropped = False

    def fields(self) -> dict[str, Any]:
        pid, uid, gid, _ = self.peer if self.peer else (None, None, None, None)
        return {"client": self.n, "pid": pid, "uid": uid, "gid": gid}

    def offer(self, data: bytes) -> None:
        """Queue an update without waiting; a subscriber that cannot take it is dropped."""
        if self.dropped:
            return
        try:
            self.outbox.send_nowait(data)
        except trio.WouldBlock:
            self.dropped = True
            log.warning("dropping a stats subscriber that cannot keep up",
                        extra={**self.fields(), "interval_ms": self.interval_ms})
            if self.scope is not None:
                self.scope.cancel()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.dropped = True


class _StatsServer:
    def __init__(self, stats: StatsRegistry, controls: Mapping[str, ControlHandler], admin_gid: int | None,
                 nursery: trio.Nursery, describe: Callable[[], dict] = dict) -> None:
        self.stats = stats
        self.describe = describe
        self.controls = dict(controls)
        self.admin_gid = admin_gid
        self.nursery = nursery
        self.groups: dict[int, set[_Client]] = {}  # interval_ms -> subscribers
        self.clients = 0
        self.serial = 0
        self._cached: tuple[float, dict] | None = None

    # -- snapshots --

    def snapshot_data(self, *, max_age_s: float = 0.0) -> dict:
        now = time.monotonic()
        if max_age_s > 0 and self._cached is not None and now - self._cached[0] <= max_age_s:
            return self._cached[1]
        data = self.stats.snapshot()
        data.update(self.describe())
        self._cached = (now, data)
        return data

    def subscribe(self, client: _Client, interval_ms: int) -> None:
        self.unsubscribe(client)
        client.interval_ms = interval_ms
        client.subscribed_at = trio.current_time()
        group = self.groups.get(interval_ms)
        if group is None:
            group = self.groups[interval_ms] = set()
            self.nursery.start_soon(self._publish, interval_ms, group)
        group.add(client)

    def unsubscribe(self, client: _Client) -> None:
        if client.interval_ms is None:
            return
        group = self.groups.get(client.interval_ms)
        if group is not None:
            group.discard(client)
            if not group:
                del self.groups[client.interval_ms]
        client.interval_ms = None

    async def _publish(self, interval_ms: int, group: set[_Client]) -> None:
        """One task per distinct interval: build and encode once, offer the bytes to every subscriber."""
        period = interval_ms / 1000
        due = trio.current_time() + period
        while True:
            await trio.sleep_until(due)
            if self.groups.get(interval_ms) is not group:  # everyone left (a new group has its own task)
                return
            now = trio.current_time()
            due = due + period if due + period > now else now + period  # fell behind: skip, don't burst
            try:
                data = p.encode_snapshot(self.snapshot_data(), interval_ms=interval_ms)
            except Exception:
                log.exception("stats socket: building a snapshot failed")
                continue
            for client in list(group):
                # The first update was sent at subscribe time; do not send another right after it.
                if now - client.subscribed_at >= period / 2:
                    client.offer(data)

    # -- one connection --

    async def handle(self, stream: trio.SocketStream) -> None:
        try:
            await self._handle(stream)
        except Exception:  # one connection's bug must not take the socket (or the daemon) down
            log.exception("stats socket: connection handler failed")

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            self.serial += 1
            try:
                peer = peer_credentials(stream.socket)
            except OSError:
                peer = None
            outbox_send, outbox_recv = trio.open_memory_channel[bytes](OUTBOX_MESSAGES)
            client = _Client(self.serial, peer, outbox_send)
            if self.clients >= MAX_CONNECTIONS:
                log.warning("stats socket: too many connections, refusing one", extra=client.fields())
                with trio.move_on_after(1):
                    await stream.send_all(p.encode(p.Error(error=f"too many connections (limit {MAX_CONNECTIONS})")))
                return
            self.clients += 1
            try:
                async with trio.open_nursery() as nursery:
                    client.scope = nursery.cancel_scope
                    nursery.start_soon(self._write, stream, outbox_recv, nursery.cancel_scope)
                    async with outbox_send:  # closing it lets the writer drain what is queued and return
                        await self._read(stream, client)
            finally:
                self.clients -= 1
                self.unsubscribe(client)

    async def _write(self, stream: trio.SocketStream, outbox: trio.MemoryReceiveChannel[bytes],
                     scope: trio.CancelScope) -> None:
        async with outbox:
            try:
                async for data in outbox:
                    await stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                scope.cancel()  # the peer is gone: stop reading too

    async def _read(self, stream: trio.SocketStream, client: _Client) -> None:
        conn = p.Connection("server")
        while not conn.closed:
            try:
                data = await stream.receive_some(RECEIVE_BYTES)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return
            for event in conn.receive_data(data):
                await self._dispatch(event, client)
        self.unsubscribe(client)  # EOF: the client may still read what is queued, but gets no more updates

    async def _dispatch(self, event: p.Event, client: _Client) -> None:
        send = client.outbox.send
        if isinstance(event, p.ProtocolError):
            await send(p.encode(event.as_reply()))
        elif isinstance(event, p.SnapshotRequest):
            await send(p.encode_snapshot(self.snapshot_data(max_age_s=ONE_SHOT_CACHE_S), id=event.id))
        elif isinstance(event, p.SubscribeRequest):
            interval_ms = event.effective_interval_ms()
            await send(p.encode_snapshot(self.snapshot_data(max_age_s=ONE_SHOT_CACHE_S), interval_ms=interval_ms,
                                         id=event.id))
            self.subscribe(client, interval_ms)
        elif isinstance(event, p.ControlRequest):
            await send(p.encode(await self._control(event, client)))
        else:  # a reply type can't come out of a server Connection; answer rather than ignore
            await send(p.encode(p.Error(error=f"unexpected message {type(event).__name__}")))

    async def _control(self, req: p.ControlRequest, client: _Client) -> p.Result:
        def result(ok: bool, error: str | None, data: dict | None = None) -> p.Result:
            return p.Result(ok=ok, error=error, verb=req.verb, data=data, id=req.id)

        fields = {**client.fields(), "verb": req.verb[:64]}
        if client.peer is None or not may_control(*client.peer[1:], self.admin_gid):
            log.warning("stats socket: control verb refused: permission denied", extra=fields)
            return result(False, "permission denied")
        handler = self.controls.get(req.verb)
        if handler is None:
            supported = ", ".join(sorted(self.controls)) or "none"
            return result(False, f"unknown verb {req.verb[:64]!r} (this instance supports: {supported})")
        log.info("stats socket: control verb", extra={**fields, "verb_args": _short_json(req.args)})
        try:
            with trio.fail_after(CONTROL_TIMEOUT_S):
                data = await handler(dict(req.args))
        except trio.TooSlowError:
            log.warning("stats socket: control verb timed out", extra=fields)
            return result(False, f"timed out after {CONTROL_TIMEOUT_S:g}s")
        except ControlRefused as exc:
            log.info("stats socket: control verb refused", extra={**fields, "reason": str(exc)})
            return result(False, str(exc))
        except Exception as exc:
            log.warning("stats socket: control verb failed", extra={**fields, "error": repr(exc)})
            return result(False, str(exc) or type(exc).__name__)
        return result(True, None, data if isinstance(data, dict) else None)


def _short_json(value: Any) -> str:
    text = msgspec.json.encode(value).decode()
    return text if len(text) <= 200 else text[:197] + "..."


async def serve_stats_socket(
    stats: StatsRegistry,
    path: Path,
    *,
    controls: Mapping[str, ControlHandler] | None = None,
    admin_group: str | None = "ingestd",
    describe: Callable[[], dict] = dict,
    task_status: trio.TaskStatus[Path] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `stats` on an AF_UNIX stream socket at `path` until cancelled.

    Creates the parent directory (0750) if missing, replaces a stale socket file (never a file of
    another kind), binds with mode 0660, reports `path` via task_status once connectable, removes
    the socket file on exit (unless a successor has replaced it). `controls` maps a verb (see
    protocol.VERBS) to `async def handler(args: dict) -> dict`; verbs not in it are answered with
    ok=false. `admin_group=None`: only root may use control verbs. `describe()`'s fields are added to
    every snapshot.

    Raises OSError from `nursery.start` if the socket cannot be created (e.g. permission denied).
    """
    path = Path(path)
    _prepare_path(path)
    admin_gid = resolve_group(admin_group)
    sock, ino = await _bind(path)
    try:
        async with trio.open_nursery() as nursery:
            server = _StatsServer(stats, controls or {}, admin_gid, nursery, describe)
            listener = trio.SocketListener(sock)
            await nursery.start(trio.serve_listeners, server.handle, [listener])
            log.info("stats socket listening", extra={"path": str(path), "controls": ",".join(sorted(server.controls))})
            task_status.started(path)
    finally:
        sock.close()
        _remove_if_ours(path, ino)


__all__ = ["serve_stats_socket", "peer_credentials", "may_control", "supplementary_groups", "ControlHandler",
           "ControlRefused"]
