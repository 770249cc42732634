"""asyncio client for the stats socket (the console's side of ingestd.statsock.protocol)."""

from __future__ import annotations

import asyncio
import glob
from pathlib import Path
from typing import Any, Callable, Iterable

from ingestd.statsock import protocol as p

DEFAULT_RUNTIME_DIR = Path("/run/ingestd")
SOCKET_NAME = "stats.sock"
CONNECT_TIMEOUT_S = 5.0
READ_BYTES = 1 << 16


def discover(runtime_dir: Path | None, explicit: Iterable[Path] = ()) -> list[Path]:
    """Explicit --socket paths first, then <runtime_dir>/*/stats.sock, in name order, no duplicates."""
    found: list[Path] = [Path(x) for x in explicit]
    if runtime_dir is not None:
        found += [Path(x) for x in sorted(glob.glob(str(Path(runtime_dir) / "*" / SOCKET_NAME)))]
    seen: set[str] = set()
    out = []
    for path in found:
        if str(path) not in seen:
            seen.add(str(path))
            out.append(path)
    return out


class Subscription:
    """One connection subscribed to one instance; `updates()` yields snapshot data dicts."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = p.Connection("client")
        self.errors: list[str] = []

    @classmethod
    async def open(cls, path: Path, interval_ms: int, *, timeout: float = CONNECT_TIMEOUT_S) -> "Subscription":
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout)
        sub = cls(reader, writer)
        writer.write(p.encode(p.SubscribeRequest(interval_ms=interval_ms)))
        await writer.drain()
        return sub

    async def updates(self, *, stale_after_s: float | None = None):
        """Snapshot data dicts as they arrive. Ends (ConnectionError) when the daemon closes the
        connection; TimeoutError if nothing arrives for `stale_after_s`."""
        while True:
            data = await asyncio.wait_for(self.reader.read(READ_BYTES), stale_after_s)
            for event in self.conn.receive_data(data):
                if isinstance(event, p.Snapshot):
                    yield event.data
                elif isinstance(event, (p.Error, p.ProtocolError)):
                    self.errors.append(event.error)
            if not data:
                raise ConnectionError("closed by the daemon")

    async def aclose(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (OSError, ConnectionError):
            pass


async def follow(
    path: Path,
    interval_ms: int,
    on_snapshot: Callable[[dict[str, Any]], None],
    on_lost: Callable[[str], None],
    *,
    reconnect_s: float = 5.0,
) -> None:
    """Subscribe to one socket forever: on failure report why, wait `reconnect_s`, try again."""
    stale_after_s = max(5.0, 3 * interval_ms / 1000)
    while True:
        sub = None
        try:
            sub = await Subscription.open(path, interval_ms)
            async for data in sub.updates(stale_after_s=stale_after_s):
                on_snapshot(data)
        except FileNotFoundError:
            on_lost("no socket")
        except ConnectionRefusedError:
            on_lost("refused (daemon not running)")
        except PermissionError:
            on_lost("permission denied (join the socket's group)")
        except asyncio.TimeoutError:
            on_lost("no update (timed out)")
        except (OSError, ConnectionError) as exc:
            on_lost(str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug on our side: show it and start over rather than freeze as "up"
            on_lost(f"console error: {exc!r}")
        finally:
            if sub is not None:
                await sub.aclose()
        await asyncio.sleep(reconnect_s)


async def control(path: Path, verb: str, args: dict | None = None, *, timeout: float = 40.0) -> p.Result:
    """Send one control verb on a fresh connection and return the daemon's result (ok or refused).
    Raises OSError/ConnectionError/TimeoutError when the daemon cannot be reached."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), CONNECT_TIMEOUT_S)
    try:
        writer.write(p.encode(p.ControlRequest(verb=verb, args=args or {}, id="console")))
        await writer.drain()
        conn = p.Connection("client")
        async with asyncio.timeout(timeout):
            while True:
                data = await reader.read(READ_BYTES)
                for event in conn.receive_data(data):
                    if isinstance(event, p.Result):
                        return event
                    if isinstance(event, (p.Error, p.ProtocolError)):
                        raise ConnectionError(f"the daemon did not understand the request: {event.error}")
                if not data:
                    raise ConnectionError("closed by the daemon without an answer")
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ConnectionError):
            pass


async def sample(path: Path, interval_ms: int, count: int = 2, *, timeout: float = 5.0) -> list[dict[str, Any]]:
    """Up to `count` consecutive snapshots (fewer if the time runs out)."""
    out: list[dict[str, Any]] = []
    sub = await Subscription.open(path, interval_ms, timeout=timeout)
    try:
        async with asyncio.timeout(timeout + count * interval_ms / 1000):
            async for data in sub.updates():
                out.append(data)
                if len(out) >= count:
                    break
    except (asyncio.TimeoutError, ConnectionError, OSError):
        if not out:
            raise
    finally:
        await sub.aclose()
    return out
