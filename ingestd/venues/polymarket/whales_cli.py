"""`ingestd whales add|list|enable|disable`: the whales table, which replaces the legacy
service's scripts/seed_whales.py (its FAMOUS_WHALES list becomes a JSON file for `add --file`).

The table lives in the SQL store the polymarket instance writes to (see ingestd.venues.polymarket.
whales): `--sink NAME`, else `feeds.polymarket.whales_sink`, else the first sqlite or postgres sink
of `feeds.polymarket.sinks` (or of the whole config when it has no polymarket feed). A running
daemon picks changes up within `whales_reload_s`.

Only argparse is imported here; the stores load when a command runs, so `ingestd --help` stays quick.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

EPILOG = """\
examples:
  ingestd whales add 0x1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf --pseudonym Theo --tier MEGA --enable
  ingestd whales add --file famous_whales.json      a JSON list of objects with the table's fields
  ingestd whales list --enabled
  ingestd whales disable 0x1f2dd6d473f3e824cd2f8a89d9c69fb96f6ad0cf

fields (as the legacy seed_whales.py wrote them): address, pseudonym, tier, notes, cluster_name,
is_famous, estimated_pnl, primary_category, win_rate, total_volume, is_confirmed, is_copying_enabled.
A whale is watched while is_copying_enabled is true. `add` on a known address changes only the
fields given (and, from a file, the fields present).

exit status: 0 done, 1 an address was not found or the store failed, 2 usage or config problem"""

# option dest -> table field, for `add`
_TEXT_OPTIONS = {"pseudonym": "pseudonym", "tier": "tier", "notes": "notes", "cluster_name": "cluster_name",
                 "category": "primary_category"}
_NUMBER_OPTIONS = {"estimated_pnl": "estimated_pnl", "win_rate": "win_rate", "total_volume": "total_volume"}


def add_command(commands: Any, add_parser: Callable[..., argparse.ArgumentParser]) -> None:
    """Mount `whales` on the ingestd command parser (`add_parser` is ingestd.cli._add_command)."""
    parser = add_parser(commands, "whales", "manage the whales table the polymarket feed watches",
                        "Add, list, enable and disable the wallets the polymarket feed polls.\n\n" + EPILOG)
    sub = parser.add_subparsers(dest="whales_command", title="commands", metavar="COMMAND", required=True)

    def command(name: str, summary: str, handler) -> argparse.ArgumentParser:
        p = add_parser(sub, name, summary, summary[0].upper() + summary[1:] + ".\n\n" + EPILOG)
        p.add_argument("--sink", metavar="NAME", help="the sqlite or postgres sink whose database holds the table")
        p.add_argument("--state-dir", metavar="DIR",
                       help="where a relative sqlite path lives (default: $STATE_DIRECTORY, else daemon.state_dir)")
        p.set_defaults(handler=handler)
        return p

    add = command("add", "add whales, or change fields of known ones", run_add)
    add.add_argument("addresses", metavar="ADDRESS", nargs="*", help="wallet address(es), 0x + 40 hex digits")
    add.add_argument("--file", type=Path, help="a JSON list of whale objects (the seed's FAMOUS_WHALES)")
    add.add_argument("--pseudonym")
    add.add_argument("--tier", help="MEGA, LARGE, MEDIUM or SMALL")
    add.add_argument("--notes")
    add.add_argument("--cluster-name", dest="cluster_name")
    add.add_argument("--category", help="primary category (politics, sports, crypto, ...)")
    add.add_argument("--estimated-pnl", dest="estimated_pnl", type=float, metavar="USDC")
    add.add_argument("--win-rate", dest="win_rate", type=float, metavar="PERCENT")
    add.add_argument("--total-volume", dest="total_volume", type=float, metavar="USDC")
    add.add_argument("--famous", dest="is_famous", action=argparse.BooleanOptionalAction, default=None)
    add.add_argument("--confirmed", dest="is_confirmed", action=argparse.BooleanOptionalAction, default=None)
    switch = add.add_mutually_exclusive_group()
    switch.add_argument("--enable", dest="is_copying_enabled", action="store_const", const=True, default=None,
                        help="watch it (is_copying_enabled = true)")
    switch.add_argument("--disable", dest="is_copying_enabled", action="store_const", const=False,
                        help="do not watch it (the default for a new whale)")

    listing = command("list", "list the whales", run_list)
    listing.add_argument("--enabled", action="store_true", help="only the watched ones")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")

    for name, flag in (("enable", True), ("disable", False)):
        p = command(name, f"{name} watching wallets (is_copying_enabled = {str(flag).lower()})",
                    run_enable if flag else run_disable)
        p.add_argument("addresses", metavar="ADDRESS", nargs="+")


# --- running -------------------------------------------------------------------------------------

class _Usage(Exception):
    pass


def _open_store(args: argparse.Namespace):
    from ingestd.cli import resolve_state_dir
    from ingestd.config import load_config
    from ingestd.venues.polymarket.whales import store_for_sink

    config = load_config(args.config)
    feed = config.feeds.get("polymarket")
    name = args.sink or (feed.whales_sink if feed is not None else "")
    if not name:
        candidates = list(feed.sinks) if feed is not None else list(config.sinks)
        name = next((n for n in candidates if config.sinks[n].type in ("sqlite", "postgres")), "")
        if not name:
            raise _Usage("no sqlite or postgres sink to keep the whales table in"
                         + (" among feeds.polymarket.sinks" if feed is not None else "") + "; name one with --sink")
    sink = config.sinks.get(name)
    if sink is None:
        raise _Usage(f'no [sinks.{name}] in {config.source} (sinks: {", ".join(config.sinks) or "none"})')
    try:
        store = store_for_sink(sink, resolve_state_dir(args.state_dir, config))
    except ValueError as exc:
        raise _Usage(str(exc)) from None
    store.ensure_schema()
    return store


def _run(args: argparse.Namespace, body) -> int:
    from ingestd.config import ConfigError

    try:
        return body(_open_store(args))
    except ConfigError as error:
        for problem in error.problems:
            print(f"{error.source}: {problem}", file=sys.stderr)
        return 2
    except _Usage as error:
        print(f"ingestd whales: {error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"ingestd whales: {error}", file=sys.stderr)
        return 2
    except Exception as error:  # the database: unreachable, locked, refused
        print(f"ingestd whales: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


def _from_options(args: argparse.Namespace) -> dict[str, Any]:
    given: dict[str, Any] = {}
    for dest, fld in {**_TEXT_OPTIONS, **_NUMBER_OPTIONS}.items():
        value = getattr(args, dest)
        if value is not None:
            given[fld] = value
    for flag in ("is_famous", "is_confirmed", "is_copying_enabled"):
        if getattr(args, flag) is not None:
            given[flag] = getattr(args, flag)
    if "tier" in given:
        given["tier"] = given["tier"].upper()
    return given


def _from_file(path: Path) -> list[dict[str, Any]]:
    from ingestd.venues.polymarket.whales import FIELDS

    try:
        items = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise _Usage(f"{path}: {exc}") from None
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise _Usage(f"{path}: expected a JSON list of objects")
    for i, item in enumerate(items):
        unknown = sorted(set(item) - set(FIELDS))
        if unknown:
            raise _Usage(f"{path}: item {i}: unknown field(s) {', '.join(unknown)} (fields: {', '.join(FIELDS)})")
        if "address" not in item:
            raise _Usage(f"{path}: item {i}: no address")
    return items


def run_add(args: argparse.Namespace) -> int:
    def body(store) -> int:
        import msgspec

        from ingestd.venues.polymarket.whales import Whale, normalize_address

        wanted: list[dict[str, Any]] = []
        if args.file is not None:
            wanted.extend(_from_file(args.file))
        given = _from_options(args)
        wanted.extend({**given, "address": a} for a in args.addresses)
        if not wanted:
            raise _Usage("give ADDRESS(es) or --file")
        known = {w.address: w for w in store.load(enabled_only=False)}
        merged: dict[str, Whale] = {}
        for item in wanted:
            address = normalize_address(item["address"])
            base = msgspec.structs.asdict(known[address]) if address in known else {"address": address}
            base.update({k: v for k, v in item.items() if k != "address"}, address=address)
            try:
                merged[address] = msgspec.convert(base, Whale)
            except msgspec.ValidationError as exc:
                raise _Usage(f"{address}: {exc}") from None
        store.upsert(merged.values())
        for address, whale in merged.items():
            verb = "updated" if address in known else "added"
            print(f"{verb} {address}{' (watched)' if whale.is_copying_enabled else ''}")
        return 0

    return _run(args, body)


def run_list(args: argparse.Namespace) -> int:
    def body(store) -> int:
        import msgspec

        whales = store.load(enabled_only=args.enabled)
        if args.json:
            for w in whales:
                print(msgspec.json.encode(w).decode())
            return 0
        rows = [("ADDRESS", "PSEUDONYM", "TIER", "WATCHED", "FAMOUS", "CONFIRMED", "CATEGORY", "EST_PNL", "WIN_%",
                 "VOLUME")]
        for w in whales:
            rows.append((w.address, w.pseudonym or "-", w.tier or "-", "yes" if w.is_copying_enabled else "no",
                         "yes" if w.is_famous else "no", "yes" if w.is_confirmed else "no",
                         w.primary_category or "-", _num(w.estimated_pnl), _num(w.win_rate), _num(w.total_volume)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip())
        print(f"{len(whales)} whale{'' if len(whales) == 1 else 's'}"
              f"{' watched' if args.enabled else ''} in {store.description}")
        return 0

    return _run(args, body)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if abs(value) >= 1000 else f"{value:g}"


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    def body(store) -> int:
        from ingestd.venues.polymarket.whales import normalize_address

        addresses = [normalize_address(a) for a in args.addresses]
        found = set(store.set_enabled(addresses, enabled))
        for address in addresses:
            if address in found:
                print(f"{'enabled' if enabled else 'disabled'} {address}")
            else:
                print(f"ingestd whales: {address} is not in the whales table (add it first)", file=sys.stderr)
        return 0 if len(found) == len(set(addresses)) else 1

    return _run(args, body)


def run_enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, True)


def run_disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, False)
