"""`ingestd pause|resume|reconnect|flush|trigger INSTANCE`: an operator's control verbs, sent to the
running instance over its stats socket with the shared protocol (ingestd.statsock.protocol).

    $ sudo ingestd pause binance
    binance: paused since 2026-11-21T19:30:00.123Z; `ingestd resume binance` resumes it

The socket is --socket PATH, else the one the config names for the instance (daemon.stats_socket),
else /run/ingestd/<instance>/stats.sock (systemd's RuntimeDirectory=). Exit status: 0 done, 1 the
instance refused (not root nor in the admin group, the verb does not apply) or cannot be reached,
2 usage. Plain sockets and no Trio: this runs in a terminal, once.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, Callable

from ingestd.config import ConfigError, load_config
from ingestd.statsock import protocol as p
from ingestd.statsock.paths import DEFAULT_RUNTIME_DIR, default_socket_path, stats_socket_path

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
ADMIN_GROUP = "ingestd"  # the stats socket's default admin group (ingestd.statsock.server)
REPLY_TIMEOUT_S = 40.0  # the daemon gives a verb 30 s

VERBS: dict[str, tuple[str, str]] = {  # verb -> (summary, description)
    "pause": (
        "pause an instance's feed: close its connections, keep its state",
        "Close the feed's connections (polling feeds stop polling) and keep them closed until `resume`.\n"
        "The feed keeps its state; nothing is stored meanwhile, and no WebSocketDown/NoDataReceived\n"
        "alert fires for it. STATUS= and ingestd-console show \"paused\".",
    ),
    "resume": (
        "resume a paused feed: reconnect and catch up",
        "Reconnect a paused feed. It catches up as after any gap: Binance fetches the trades made\n"
        "meanwhile over REST and resyncs its books from fresh snapshots, so every trade is stored once.",
    ),
    "reconnect": (
        "replace an instance's venue connections",
        "Replace every venue connection, make-before-break where the venue allows it (no gap).",
    ),
    "flush": (
        "make an instance's sinks write what they hold now",
        "Make every sink write what it holds now instead of waiting out linger_ms (a sink that is down:\n"
        "its spool), and print how many records each held and whether they are stored.",
    ),
    "trigger": (
        "run one poll of a polling feed now (coingecko, uniswap, ...)",
        "Run one poll now, outside the schedule, and print what it stored. Only polling feeds have one;\n"
        "the others answer which families do.",
    ),
}

EPILOG = """\
The verbs need root or membership in the {group} group (the daemon checks the peer's credentials).
The socket is --socket PATH, else daemon.stats_socket from the config, else
{runtime}/INSTANCE/stats.sock.

examples:
  sudo ingestd pause binance          ... and later: sudo ingestd resume binance
  sudo ingestd trigger coingecko      one price poll now
  ingestd flush binance --socket /tmp/ingestd/stats.sock

exit status: 0 done; 1 refused, failed, or the instance could not be reached; 2 usage"""


class Unreachable(Exception):
    """The instance's socket cannot be reached; the message says why and what to do."""


def add_commands(commands: Any, add_command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register one subcommand per verb (`add_command` is ingestd.cli's helper)."""
    epilog = EPILOG.format(group=ADMIN_GROUP, runtime=DEFAULT_RUNTIME_DIR)
    for verb, (summary, description) in VERBS.items():
        parser = add_command(commands, verb, summary, f"{description}\n\n{epilog}")
        parser.add_argument("instance", metavar="INSTANCE", help='the instance, as in `ingestd run INSTANCE` ("binance")')
        parser.add_argument("--socket", type=Path, metavar="PATH", help="the instance's stats socket")
        parser.add_argument("--json", action="store_true", help="print the daemon's reply as one JSON line")
        if verb == "flush":
            parser.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                                help="wait at most this long for the sinks (default: %(default)s, at most 25)")
        parser.set_defaults(handler=run_verb, verb=verb)


# --- talking to the daemon -----------------------------------------------------------------------


def send_control(path: Path, verb: str, args: dict, *, timeout_s: float = REPLY_TIMEOUT_S) -> p.Result:
    """One control request on a fresh connection, and its result. Raises Unreachable."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise Unreachable(f"no stats socket at {path}: is the instance running?") from None
        except ConnectionRefusedError:
            raise Unreachable(f"nothing answers at {path}: the instance is not running (a stale socket file)") from None
        except PermissionError:
            raise Unreachable(f"cannot open {path}: permission denied (it is mode 0660: run as root or as a member"
                              " of its group)") from None
        conn = p.Connection("client")
        sock.sendall(p.encode(p.ControlRequest(verb=verb, args=args, id=1)))
        while True:
            data = sock.recv(1 << 16)
            for event in conn.receive_data(data):
                if isinstance(event, p.Result) and event.id == 1:
                    return event
                if isinstance(event, (p.Error, p.ProtocolError)):
                    raise Unreachable(f"the instance did not understand the request: {event.error}")
            if not data:
                raise Unreachable(f"{path}: the instance closed the connection without answering")
    except socket.timeout:
        raise Unreachable(f"{path}: no answer within {timeout_s:g} s") from None
    except OSError as exc:
        raise Unreachable(f"{path}: {exc.strerror or exc}") from None
    finally:
        sock.close()


def find_socket(instance: str, explicit: Path | None, config_path: str | None) -> tuple[Path, str]:
    """(path, where it came from). The config is only a hint: one that cannot be read (not there,
    secrets only the service can resolve) leaves the default path."""
    if explicit is not None:
        return explicit, "--socket"
    if config_path and os.path.exists(config_path):
        try:
            return stats_socket_path(load_config(config_path), instance), f"the config {config_path}"
        except (ConfigError, OSError) as exc:
            problem = exc.problems[0] if isinstance(exc, ConfigError) and exc.problems else str(exc)
            return default_socket_path(instance), f"the default (the config {config_path} is unusable: {problem})"
    return default_socket_path(instance), "the default"


# --- the command ---------------------------------------------------------------------------------


def run_verb(args: argparse.Namespace) -> int:
    verb, instance = args.verb, args.instance
    request: dict[str, Any] = {}
    if verb == "flush":
        if not 0 < args.timeout <= 25:
            print("ingestd: --timeout must be in (0, 25] seconds", file=sys.stderr)
            return EXIT_USAGE
        request["timeout_s"] = args.timeout
    path, origin = find_socket(instance, args.socket, getattr(args, "config", None))
    try:
        result = send_control(path, verb, request)
    except Unreachable as exc:
        print(f"ingestd: {verb} {instance}: {exc}", file=sys.stderr)
        if origin != "--socket":
            print(f"ingestd: (socket path from {origin}; another one: --socket PATH)", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print(json.dumps({"ok": result.ok, "error": result.error, "verb": result.verb, "data": result.data}))
    if not result.ok:
        print(f"ingestd: {verb} {instance} refused: {result.error}", file=sys.stderr)
        if result.error == "permission denied":
            print(f"ingestd: control verbs need root or membership in the {ADMIN_GROUP} group: run it with sudo,"
                  f" or `sudo adduser $USER {ADMIN_GROUP}` and log in again", file=sys.stderr)
        return EXIT_FAILURE
    if not args.json:
        print(describe(verb, instance, result.data or {}))
    if verb == "flush" and not all(s.get("done") for s in (result.data or {}).get("sinks", {}).values()):
        return EXIT_FAILURE  # said which sink did not finish in time
    return EXIT_OK


def describe(verb: str, instance: str, data: dict) -> str:
    """The reply in a sentence or a few lines."""
    if verb == "pause":
        already = "already " if data.get("already") else ""
        return f"{instance}: {already}paused since {data.get('since')}; `ingestd resume {instance}` resumes it"
    if verb == "resume":
        if data.get("already"):
            return f"{instance}: not paused ({data.get('state')})"
        return f"{instance}: resumed after {_seconds(data.get('paused_for_s'))}; reconnecting and catching up"
    if verb == "reconnect":
        n = data.get("replacing")
        return f"{instance}: replacing {n} connection{'' if n == 1 else 's'}"
    if verb == "flush":
        lines = [f"{instance}: flushed {data.get('records', 0)} records"]
        for name, sink in (data.get("sinks") or {}).items():
            where = "to the spool" if sink.get("state") == "spooling" else "to the sink"
            status = f"written {where}" if sink.get("done") else f"NOT all written yet ({sink.get('state')})"
            lines.append(f"  {name}: {sink.get('records', 0)} records, {status}")
        return "\n".join(lines)
    fields = " ".join(f"{k}={json.dumps(v) if isinstance(v, (dict, list)) else v}" for k, v in data.items())
    return f"{instance}: {verb} done" + (f": {fields}" if fields else "")


def _seconds(value: Any) -> str:
    try:
        s = float(value)
    except (TypeError, ValueError):
        return "?"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"
