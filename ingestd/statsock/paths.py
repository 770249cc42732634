"""Where an instance's stats socket is: shared by the daemon (ingestd.ops) and `ingestd pause` & co."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from ingestd.secrets import reveal

DEFAULT_RUNTIME_DIR = "/run/ingestd"
SOCKET_NAME = "stats.sock"


def default_socket_path(instance: str, runtime_dir: str = DEFAULT_RUNTIME_DIR) -> Path:
    """<runtime_dir>/<instance>/stats.sock: /run/ingestd/binance/stats.sock under systemd."""
    return Path(runtime_dir) / instance / SOCKET_NAME


def stats_socket_path(config: Any, instance: str, environ: Mapping[str, str] | None = None) -> Path:
    """daemon.stats_socket, else $RUNTIME_DIRECTORY/stats.sock (systemd's RuntimeDirectory=ingestd/%i),
    else <daemon.runtime_dir>/<instance>/stats.sock; the console looks in /run/ingestd/*/."""
    environ = os.environ if environ is None else environ
    explicit = reveal(config.daemon.stats_socket)
    if explicit:
        return Path(explicit)
    runtime = environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / SOCKET_NAME
    return default_socket_path(instance, reveal(config.daemon.runtime_dir))
