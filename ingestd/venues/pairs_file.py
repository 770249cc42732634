"""The pair list file: written by the CoinGecko discovery, followed by Binance instances.

    {"version": 1, "source": "coingecko", "generated_us": 1732200000000000,
     "pairs": ["BTCUSDT", "ETHUSDT", ...], ...}

The writer replaces the file atomically (a temporary file in the same directory, fsync, rename), so
a reader sees the old list or the new one, never half of one. A reader follows it by its stat
signature (inode, mtime, size): a rename always gives a new inode, so no change is missed even
within one mtime tick. A missing, unreadable or invalid file yields no pairs, and the Binance feed
then follows its configured symbols and fallback pairs, as the service this replaces did when
discovery failed.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import trio

from ingestd.stats import now_us

log = logging.getLogger("ingestd.pairs_file")

VERSION = 1
MAX_PAIRS = 10_000
_SYMBOL = re.compile(r"[A-Z0-9]{2,20}")


class PairsFileError(Exception):
    """The file is missing or not a valid pair list; the message says which."""


def write_pairs_file(path: str | Path, pairs: list[str], **meta: Any) -> None:
    """Replace the file atomically. Blocking: call it from a worker thread."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"version": VERSION, **meta, "generated_us": now_us(), "pairs": list(pairs)}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # readable by the Binance instances (mkstemp makes it 0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def parse_pairs(data: bytes) -> list[str]:
    """The pairs of a pair list document; raises PairsFileError saying what is wrong."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PairsFileError(f"not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("pairs"), list):
        raise PairsFileError('expected an object with a "pairs" list')
    pairs = doc["pairs"]
    if len(pairs) > MAX_PAIRS:
        raise PairsFileError(f"{len(pairs)} pairs, more than {MAX_PAIRS}")
    bad = [p for p in pairs if not isinstance(p, str) or not _SYMBOL.fullmatch(p)]
    if bad:
        raise PairsFileError(f"invalid symbols {bad[:5]!r} (expected 2 to 20 characters A-Z, 0-9)")
    return list(dict.fromkeys(pairs))


def read_pairs_file(path: str | Path) -> list[str]:
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise PairsFileError("missing") from None
    except OSError as exc:
        raise PairsFileError(f"unreadable: {exc.strerror or exc}") from None
    return parse_pairs(data)


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class PairsFileFollower:
    """The pairs of a file as of its last change, re-read only when its signature changes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None | bool = False  # False: never looked
        self._pairs: list[str] = []
        self.problem: str | None = None

    async def pairs(self) -> list[str]:
        """The current pairs ([] when the file is missing or invalid), re-reading it if it changed."""
        signature = await trio.to_thread.run_sync(_signature, self.path)
        if signature != self._seen:
            self._seen = signature
            try:
                self._pairs = await trio.to_thread.run_sync(read_pairs_file, self.path)
                self.problem = None
                log.info("pairs file read", extra={"path": str(self.path), "pairs": len(self._pairs)})
            except PairsFileError as exc:
                self._pairs = []
                self.problem = str(exc)
                log.warning("pairs file unusable; following the configured symbols and fallback pairs",
                            extra={"path": str(self.path), "problem": str(exc)})
        return list(self._pairs)

    async def wait_for_change(self, check_s: float) -> None:
        """Return once the file's signature differs from the one last read (checked every check_s)."""
        while True:
            await trio.sleep(check_s)
            if await trio.to_thread.run_sync(_signature, self.path) != self._seen:
                return
