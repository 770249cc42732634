"""`ingestd tail`: read the trades the Redis sink stored, like the seed's test_consumer.py did.

    ingestd tail BTCUSDT              the last 10 trades, oldest first      (test_consumer.py BTCUSDT)
    ingestd tail BTCUSDT -n 0 -f      only new trades, until Ctrl-C         (test_consumer.py BTCUSDT 0)
    ingestd tail --list               every stream the sink writes, with its length (test_consumer.py list)
    ingestd tail derivatives:bybit:BTCUSDT -f    any stream --list shows, by its key

The server is --url, else $REDIS_URL, else the url of the first redis sink in the config file, else
redis://localhost:6379/0; the stream names come from that sink's templates (trades_stream
"trades:{symbol}", derivatives_stream, ...: see ingestd.sinks.redis_streams). An argument with a
colon that names an existing stream is that stream; anything else is a pair of the trades streams.
Trades print as one readable line each, other entries as their fields (`ts=... funding_rate=...`).
Everything read is printed with control characters escaped, so a crafted symbol or field cannot drive
the terminal. Lines go out as soon as they are read (a pipe gets them without buffering delays).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Mapping, TextIO

DEFAULT_URL = "redis://localhost:6379/0"
BLOCK_MS = 1000  # one XREAD BLOCK; short so the process notices a dead server within a second or so
READ_COUNT = 1000
RECONNECT_S = 1.0

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


class TailError(Exception):
    """A message for the user; exit 1."""


def stream_templates(sink_config: Any | None) -> dict[str, str]:
    """Record kind -> stream key template, from a redis sink's config (or the defaults)."""
    from ingestd.config import RedisSinkConfig
    from ingestd.sinks.redis_streams import ENTRY_KINDS, STREAM_KINDS

    cfg = sink_config if sink_config is not None else RedisSinkConfig(name="tail", type="redis")
    return {kind.kind: getattr(cfg, kind.template_option) for kind in [*STREAM_KINDS.values(), *ENTRY_KINDS.values()]}


def resolve_target(url_flag: str | None, config_path: str | None, environ: Mapping[str, str],
                   err: TextIO) -> tuple[str, dict[str, str]]:
    """(url, stream key template per record kind). Raises SystemExit(2) for a config file that exists
    but is invalid when the URL depends on it."""
    from ingestd.config import ConfigError, load_config
    from ingestd.secrets import reveal

    url = url_flag or environ.get("REDIS_URL") or None
    templates = stream_templates(None)
    if config_path:
        try:
            config = load_config(config_path, environ=environ)
        except ConfigError as error:
            missing = not os.path.exists(config_path)
            if not missing and url is None:
                for problem in error.problems:
                    print(f"{error.source}: {problem}", file=err)
                print("ingestd tail: fix the config, or give the server with --url or $REDIS_URL", file=err)
                raise SystemExit(EXIT_CONFIG)
            if not missing:
                print(f"ingestd tail: ignoring {config_path}, which has problems (check-config lists them)",
                      file=err)
        else:
            sink = next((s for s in config.sinks.values() if s.type == "redis"), None)
            if sink is not None:
                templates = stream_templates(sink)
                if url is None:
                    url = reveal(sink.url)
    return url or DEFAULT_URL, templates


def printable(text: str) -> str:
    """The text with control and other unprintable characters escaped (\\n, \\x1b, ...)."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def _decode(value: bytes) -> str:
    return printable(value.decode("utf-8", "backslashreplace"))


def format_entry(entry_id: bytes, fields: Mapping[bytes, bytes]) -> str:
    """One readable line: `2024-11-14T17:30:00.123456  buy      0.123 @ 45123.5  #12345678`.

    Entries written by something else, without these fields, are shown as their raw fields."""
    f = {_decode(k): _decode(v) for k, v in fields.items()}
    if all(k in f for k in ("ts", "side", "qty", "price", "trade_id")):
        return f"{f['ts']}  {f['side']:<4} {f['qty']:>12} @ {f['price']:<12} #{f['trade_id']}"
    return f"{_decode(entry_id)}  " + " ".join(f"{k}={v}" for k, v in f.items())


def _connect(url: str) -> Any:
    import redis

    try:
        return redis.Redis.from_url(url, socket_timeout=BLOCK_MS / 1000 + 5, socket_connect_timeout=5)
    except ValueError:
        raise TailError("the Redis URL is not valid (expected redis://HOST:PORT/DB or rediss://...)") from None


def list_streams(client: Any, templates: Mapping[str, str], out: TextIO, err: TextIO) -> int:
    """Every stream whose key matches one of the templates with its placeholders as `*`, with its
    length (SCAN, not KEYS), sorted by name."""
    patterns = sorted({_pattern(template) for template in templates.values()})
    keys: set[bytes] = set()
    for pattern in patterns:
        keys.update(client.scan_iter(match=pattern, count=1000, _type="stream"))
    if not keys:
        print(f"no streams match {printable(' '.join(patterns))}", file=err)
        return EXIT_OK
    ordered = sorted(keys)
    pipe = client.pipeline(transaction=False)
    for key in ordered:
        pipe.xlen(key)
    lengths = pipe.execute()
    names = [_decode(k) for k in ordered]
    width = max(len(n) for n in names)
    for name, length in zip(names, lengths):
        print(f"{name:<{width}}  {length:>10}", file=out)
    out.flush()
    return EXIT_OK


def _pattern(template: str) -> str:
    """A SCAN MATCH pattern for a template: literal text escaped, each {placeholder} a `*`."""
    import string

    return "".join(
        _glob_escape(literal) + ("*" if name is not None else "")
        for literal, name, _, _ in string.Formatter().parse(template)
    )


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH pattern characters."""
    out = []
    for c in text:
        out.append("\\" + c if c in "*?[]\\" else c)
    return "".join(out)


def tail_stream(client_factory, key: str, count: int, follow: bool, out: TextIO, err: TextIO) -> int:
    import redis

    client = client_factory()
    entries = client.xrevrange(key, "+", "-", count=count) if count > 0 else []
    for entry_id, fields in reversed(entries):
        print(format_entry(entry_id, fields), file=out)
    out.flush()
    if not follow:
        if not entries and client.exists(key) == 0:
            print(f"ingestd tail: no stream {printable(key)} (yet); --list shows what there is", file=err)
        return EXIT_OK
    # Continue right after the last entry shown, or after the current top (-n 0), or from the start
    # of an empty stream: never "$", which would miss entries added between the two calls.
    if entries:
        last = entries[0][0]
    else:
        top = client.xrevrange(key, "+", "-", count=1)
        last = top[0][0] if top else b"0-0"
    lost = False
    while True:
        try:
            reply = client.xread({key: last}, count=READ_COUNT, block=BLOCK_MS)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not lost:
                print(f"ingestd tail: lost the connection ({exc}); reconnecting", file=err)
                err.flush()
                lost = True
            time.sleep(RECONNECT_S)
            continue
        if lost:
            print("ingestd tail: reconnected", file=err)
            err.flush()
            lost = False
        for _stream, messages in reply or ():
            for entry_id, fields in messages:
                print(format_entry(entry_id, fields), file=out)
                last = entry_id
        out.flush()


def run_tail(args: Any, *, environ: Mapping[str, str] | None = None, out: TextIO | None = None,
             err: TextIO | None = None) -> int:
    """The `ingestd tail` command (args from ingestd.cli)."""
    import redis

    from ingestd.sinks.redis_streams import describe_url, stream_key

    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    err = err or sys.stderr
    if not args.list and not args.pair:
        print("ingestd tail: give a PAIR (e.g. BTCUSDT) or --list", file=err)
        return EXIT_CONFIG
    if args.count < 0:
        print("ingestd tail: -n must be 0 or more", file=err)
        return EXIT_CONFIG
    try:
        url, templates = resolve_target(args.url, args.config, environ, err)
    except SystemExit as stop:
        return int(stop.code)
    where = describe_url(url)
    try:
        if args.list:
            return list_streams(_connect(url), templates, out, err)
        key = stream_key(templates["trade"], args.venue, args.pair)
        if ":" in args.pair and key != args.pair and _connect(url).exists(args.pair):
            key = args.pair  # a stream key as --list shows it
        return tail_stream(lambda: _connect(url), key, args.count, args.follow, out, err)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `ingestd tail ... | head`: the reader has gone, which is fine
        try:
            sys.stdout = open(os.devnull, "w")  # so the interpreter's final flush does not complain
        except OSError:
            pass
        return EXIT_OK
    except TailError as exc:
        print(f"ingestd tail: {exc}", file=err)
        return EXIT_FAILURE
    except redis.AuthenticationError as exc:
        print(f"ingestd tail: {where} refused the login: {exc}", file=err)
        return EXIT_FAILURE
    except redis.RedisError as exc:
        print(f"ingestd tail: {where}: {exc}", file=err)
        return EXIT_FAILURE
