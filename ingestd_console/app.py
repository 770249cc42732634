"""ingestd-console: a live table of every ingestd instance on this machine, in the manner of `vector top`.

It finds the instances' stats sockets (/run/ingestd/*/stats.sock), subscribes to each with the shared
protocol (ingestd.statsock.protocol) and shows one row per instance; Enter opens an instance. It is
its own process and runs plain asyncio (Textual); the daemons run Trio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterable

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.theme import Theme
from textual.widgets import DataTable, Footer, Header, Sparkline, Static, TabbedContent, TabPane

from ingestd.ctl import ADMIN_GROUP
from ingestd.ctl import describe as describe_result
from ingestd_console import client
from ingestd_console.model import (
    COLUMNS,
    CONNECTING,
    DRAINING,
    GONE,
    PAUSED,
    STARTING,
    UP,
    Instance,
    alert_title,
    alert_when,
    clip,
    fmt_age,
    fmt_bytes,
    fmt_count,
    fmt_lag,
    fmt_rate,
    sparkline_data,
    plain_table,
    row_values,
)

RECONNECT_S = 5.0
RESCAN_S = 5.0
CONFIRM_S = 3.0  # `p` pauses ingestion: it must be pressed twice within this long

MONO_THEME = Theme(
    name="ingestd-mono",
    primary="#c8c8c8",
    secondary="#a0a0a0",
    accent="#e0e0e0",
    warning="#d0d0d0",
    error="#ffffff",
    success="#b0b0b0",
    foreground="#e0e0e0",
    background="#000000",
    surface="#111111",
    panel="#262626",
    dark=True,
)

# Emphasis per state: colour, or (monochrome) weight and reverse video only.
STYLES = {
    "color": {UP: "bold green", CONNECTING: "yellow", GONE: "bold red", STARTING: "yellow", PAUSED: "bold yellow",
              DRAINING: "magenta", "alert": "bold white on red", "trend": "cyan", "dim": "dim"},
    "mono": {UP: "bold", CONNECTING: "italic", GONE: "reverse", STARTING: "italic", PAUSED: "bold underline",
             DRAINING: "italic underline", "alert": "bold reverse", "trend": "", "dim": "dim"},
}


def _fmt_clock(seconds: float) -> str:
    s = int(max(0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class InstancesTable(DataTable):
    BINDINGS = [Binding("enter", "select_cursor", "Details")]


TABS = Binding.Group("Tabs", compact=True)  # one footer entry, "1234 Tabs": room for the verbs at 80 columns


class InstanceScreen(Screen):
    """One instance: its connections, symbols, sinks and alert history."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("q", "app.quit", "Quit"),
        Binding("1", "tab('conns')", "Conns", group=TABS),
        Binding("2", "tab('symbols')", "Symbols", group=TABS),
        Binding("3", "tab('sinks')", "Sinks", group=TABS),
        Binding("4", "tab('alerts')", "Alerts", group=TABS),
        # The stats socket's control verbs (root or the admin group only; the daemon checks).
        Binding("p", "control('pause')", "Pause"),
        Binding("r", "control('resume')", "Resume"),
        Binding("c", "control('reconnect')", "Reconn"),
        Binding("f", "control('flush')", "Flush"),
    ]

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = key
        self.armed_at: float | None = None  # when `p` was pressed once
        self.ready = False  # columns added: snapshots may arrive between push_screen and on_mount
        self.alert_rows: dict[str, dict] = {}

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="summary")
        yield Sparkline([], id="irate")
        with TabbedContent(initial="conns"):
            with TabPane("Connections", id="conns"):
                yield DataTable(id="conns-table", cursor_type="row", zebra_stripes=True)
            with TabPane("Symbols", id="symbols"):
                yield DataTable(id="symbols-table", cursor_type="row", zebra_stripes=True)
            with TabPane("Sinks", id="sinks"):
                yield DataTable(id="sinks-table", cursor_type="row", zebra_stripes=True)
            with TabPane("Alerts", id="alerts"):
                yield DataTable(id="alerts-table", cursor_type="row", zebra_stripes=True)
                yield Static(id="alert-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#conns-table", DataTable).add_columns("ID", "STATE", "MESSAGES", "LAST MSG", "RECONN", "LAST ERROR")
        self.query_one("#symbols-table", DataTable).add_columns("SYMBOL", "LAST EVENT")
        self.query_one("#sinks-table", DataTable).add_columns("SINK", "ROWS", "WRITE ERR", "QUEUE", "SPOOL")
        self.query_one("#alerts-table", DataTable).add_columns("STATE", "ALERT", "SEVERITY", "WHEN")
        self.ready = True
        self.refresh_data()
        self.call_after_refresh(self.refresh_data)  # again once laid out: the sparkline needs its width

    def on_resize(self) -> None:
        self.refresh_data()

    def show_alert_detail(self) -> None:
        """The highlighted alert's whole message, under the table."""
        table = self.query_one("#alerts-table", DataTable)
        detail = self.query_one("#alert-detail", Static)
        if table.row_count == 0:
            detail.update("No alerts seen since the console started.")
            return
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        a = self.alert_rows.get(key, {})
        detail.update(Text(f"{alert_title(a)}: {a.get('message', '')}"))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "alerts-table" and self.ready:
            self.show_alert_detail()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_control(self, verb: str) -> None:
        inst = self.instance
        if verb == "pause":
            now = time.monotonic()
            if self.armed_at is None or now - self.armed_at > CONFIRM_S:
                self.armed_at = now
                self.notify(f"Press p again to pause {inst.name}: it closes its connections and stores nothing"
                            " until resumed (r).", title="Pause?", severity="warning", timeout=CONFIRM_S)
                return
            self.armed_at = None
        self.app.run_worker(self.send_control(verb, inst), group="control", exit_on_error=False)

    async def send_control(self, verb: str, inst: Instance) -> None:
        try:
            result = await client.control(inst.path, verb)
        except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
            self.notify(f"cannot reach {inst.name}: {exc or type(exc).__name__}", title=verb, severity="error")
            return
        if not result.ok:
            hint = (f" (root or the {ADMIN_GROUP} group only)" if result.error == "permission denied" else "")
            self.notify(f"{inst.name} refused: {result.error}{hint}", title=verb, severity="error", timeout=8)
            return
        self.notify(describe_result(verb, inst.name, result.data or {}), title=verb)

    @property
    def instance(self) -> Instance:
        return self.app.instances[self.key]  # type: ignore[attr-defined]

    def refresh_data(self) -> None:
        if not self.ready:
            return
        inst = self.instance
        styles = self.app.styles_map  # type: ignore[attr-defined]
        snap = inst.snapshot or {}
        now_us = snap.get("now_us") or 0
        summary = Text()
        summary.append(f" {inst.name} ", style="bold")
        summary.append(inst.shown_state, style=styles.get(inst.shown_state, ""))
        if inst.state == GONE and inst.reason:
            summary.append(f" ({inst.reason})")
        up = inst.uptime_s()
        cu = inst.conns_up_total()
        summary.append(f"   daemon up {fmt_age(up) if up is not None else '-'}")
        summary.append(f"  conns {cu[0]}/{cu[1]}" if cu else "  conns -")
        summary.append(f"  msg/s {fmt_rate(inst.rate)}")
        p50, p99 = inst.lag_us()
        summary.append(f"  lag p50/p99 {fmt_lag(p50, p99)} ms")
        self.query_one("#summary", Static).update(summary)
        spark = self.query_one("#irate", Sparkline)
        spark.data = sparkline_data(inst.rates, spark.size.width)

        conns = {}
        for c in inst.connections:
            last = c.get("last_message_us") or 0
            state = str(c.get("state", "?"))
            conns[str(c.get("id"))] = (
                clip(str(c.get("id")), 22),
                Text(state, style=styles.get(state, "")),
                Text(fmt_count(c.get("messages") or 0), justify="right"),
                fmt_age((now_us - last) / 1e6) if last else "never",
                Text(str(c.get("reconnects", 0)), justify="right"),
                clip(str(c.get("last_error") or ""), 24),
            )
        _sync_rows(self.query_one("#conns-table", DataTable), conns)
        symbols = {name: (name, fmt_age(age)) for name, age in inst.symbols()}
        _sync_rows(self.query_one("#symbols-table", DataTable), symbols)
        sinks = {}
        for s in inst.sinks():
            queue = f"{s.queue_used}/{s.queue_capacity}" if s.queue_capacity is not None else "-"
            sinks[s.name] = (s.name, Text(fmt_count(s.rows_written), justify="right"),
                             Text(fmt_count(s.write_errors), justify="right",
                                  style=styles["alert"] if s.write_errors else ""),
                             queue, fmt_bytes(s.spool_bytes))
        _sync_rows(self.query_one("#sinks-table", DataTable), sinks)
        alerts = {}
        self.alert_rows = {}
        for (title, since, state), a in reversed(list(inst.alert_history.items())):
            key = f"{title}|{since}|{state}"
            self.alert_rows[key] = a
            alerts[key] = (
                Text(state, style=styles["alert"] if state == "firing" else styles["dim"]),
                clip(title, 34), clip(str(a.get("severity", "")), 8), alert_when(a, now_us),
            )
        _sync_rows(self.query_one("#alerts-table", DataTable), alerts)
        self.show_alert_detail()
        self.query_one(TabbedContent).get_tab("alerts").label = f"Alerts ({len(inst.firing())})"


def _sync_rows(table: DataTable, rows: dict[str, tuple]) -> None:
    """Make `table` show `rows` (key -> cells) in that order, keeping the cursor where it is."""
    existing = [k.value for k in table.rows]
    if existing == list(rows):
        for key, cells in rows.items():
            for col, value in zip(table.columns, cells):
                table.update_cell(key, col, value, update_width=True)
        return
    cursor = table.cursor_row
    table.clear()
    for key, cells in rows.items():
        table.add_row(*cells, key=key)
    if rows:
        table.move_cursor(row=min(cursor, len(rows) - 1))


class ConsoleApp(App):
    """The console. `sockets` are watched always; `runtime_dir` is rescanned for */stats.sock.

    connect=False (tests) watches nothing: feed it with `add_instance` and `apply_snapshot`."""

    TITLE = "ingestd-console"
    CSS = """
    #instances { height: 1fr; width: 100%; padding-left: 1; scrollbar-size-vertical: 1; }
    #trend-label { height: 1; padding: 0 1; color: $text-muted; }
    #trend { height: 2; margin: 0 1; }
    #alerts { height: auto; max-height: 7; padding: 0 1; border-top: solid $panel; }
    InstanceScreen #summary { height: 1; }
    InstanceScreen TabPane { padding: 0; }
    InstanceScreen #alerts-table { height: auto; max-height: 1fr; }
    InstanceScreen #alert-detail { height: auto; padding: 1 1 0 1; color: $text-muted; }
    InstanceScreen #irate { height: 2; margin: 0 1; }
    """
    BINDINGS = [Binding("q", "quit", "Quit")]

    def __init__(
        self,
        *,
        sockets: Iterable[Path] = (),
        runtime_dir: Path | None = client.DEFAULT_RUNTIME_DIR,
        interval_ms: int = 1000,
        mono: bool = False,
        connect: bool = True,
        clock: Callable[[], float] = time.monotonic,
        reconnect_s: float = RECONNECT_S,
        rescan_s: float = RESCAN_S,
    ) -> None:
        self.mono = mono or "NO_COLOR" in os.environ
        if mono and "NO_COLOR" not in os.environ:
            # Textual reads NO_COLOR once, here: it then renders every colour as grey.
            os.environ["NO_COLOR"] = "1"
            try:
                super().__init__()
            finally:
                del os.environ["NO_COLOR"]
        else:
            super().__init__()
        self.styles_map = STYLES["mono" if self.mono else "color"]
        self.explicit = [Path(s) for s in sockets]
        self.runtime_dir = runtime_dir
        self.interval_ms = interval_ms
        self.connect = connect
        self.clock = clock
        self.reconnect_s = reconnect_s
        self.rescan_s = rescan_s
        self.started = clock()
        self.instances: dict[str, Instance] = {}

    # --- layout ---

    def compose(self) -> ComposeResult:
        yield Header()
        yield InstancesTable(id="instances", cursor_type="row", cell_padding=0, zebra_stripes=False)
        yield Static(id="trend-label")
        yield Sparkline([], id="trend")
        yield Static(id="alerts")
        yield Footer()

    def on_mount(self) -> None:
        if self.mono:
            self.register_theme(MONO_THEME)
            self.theme = MONO_THEME.name
        table = self.query_one("#instances", DataTable)
        for key, label, width, right in COLUMNS:
            table.add_column(Text(label, justify="right" if right else "left"), width=width + 1, key=key)
        self.update_title()
        self.update_panels()
        self.set_interval(1.0, self.update_title)
        if self.connect:
            self.rescan()
            self.set_interval(self.rescan_s, self.rescan)

    # --- instances ---

    def rescan(self) -> None:
        for path in client.discover(self.runtime_dir, self.explicit):
            if str(path) not in self.instances:
                self.add_instance(path)
                if self.connect:
                    self.run_worker(self._follow(path), group="sockets", exit_on_error=False)
        self.update_title()

    def add_instance(self, path: Path, name: str = "") -> Instance:
        inst = Instance(Path(path), name=name)
        self.instances[inst.key] = inst
        self.query_one("#instances", DataTable).add_row(*self._cells(inst), key=inst.key)
        self.update_panels()
        return inst

    async def _follow(self, path: Path) -> None:
        await client.follow(
            path,
            self.interval_ms,
            lambda data: self.apply_snapshot(path, data),
            lambda reason: self.mark_lost(path, reason),
            reconnect_s=self.reconnect_s,
        )

    def apply_snapshot(self, path: Path | str, data: dict[str, Any]) -> None:
        inst = self.instances[str(path)]
        inst.apply(data)
        self.refresh_instance(inst)

    def mark_lost(self, path: Path | str, reason: str) -> None:
        inst = self.instances[str(path)]
        inst.lost(reason)
        self.refresh_instance(inst)

    # --- drawing ---

    def _cells(self, inst: Instance) -> list[Text]:
        values = row_values(inst)
        styles = self.styles_map
        cells = []
        for key, _, width, right in COLUMNS:
            text = clip(values[key], width)
            style = ""
            if key == "state":
                style = styles.get(inst.shown_state, "")
            elif key == "alerts" and values[key] != "-":
                style = styles["alert"]
            elif key == "werr" and values[key] not in ("-", "0"):
                style = styles["alert"]
            elif key == "trend":
                style = styles["trend"]
            cells.append(Text(text, style=style, justify="right" if right else "left"))
        return cells

    def refresh_instance(self, inst: Instance) -> None:
        table = self.query_one("#instances", DataTable)
        for (key, *_), cell in zip(COLUMNS, self._cells(inst)):
            table.update_cell(inst.key, key, cell)
        self.update_panels()
        self.update_title()
        screen = self.screen
        if isinstance(screen, InstanceScreen) and screen.key == inst.key:
            try:
                screen.refresh_data()
            except Exception:  # a drawing bug must not stop this instance's updates
                self.log.error(f"refreshing {inst.name}'s screen failed:\n{traceback.format_exc()}")

    def selected(self) -> Instance | None:
        table = self.query_one("#instances", DataTable)
        if not self.instances or table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        return self.instances.get(key)

    def update_title(self) -> None:
        n = len(self.instances)
        up = sum(1 for i in self.instances.values() if i.state == UP)
        self.sub_title = (f"{n} socket{'' if n == 1 else 's'} ({up} up) · every {self.interval_ms / 1000:g}s"
                          f" · up {_fmt_clock(self.clock() - self.started)}")

    def update_panels(self) -> None:
        inst = self.selected()
        label = self.query_one("#trend-label", Static)
        spark = self.query_one("#trend", Sparkline)
        if inst is None:
            where = ", ".join(str(p) for p in self.explicit)
            if self.runtime_dir is not None:
                where = ", ".join(filter(None, [where, f"{self.runtime_dir}/*/stats.sock"]))
            label.update(f"No instances found ({where or 'nothing to watch'}); rescanning every {self.rescan_s:g} s.")
            spark.data = []
        else:
            rates = list(inst.rates)
            peak = max(rates) if rates else None
            label.update(f"msg/s {inst.name}: now {fmt_rate(inst.rate)}, peak {fmt_rate(peak)}"
                         f" over the last {len(rates)} sample{'' if len(rates) == 1 else 's'}")
            spark.data = sparkline_data(rates, spark.size.width)
        lines = Text()
        firing = [(i, a) for i in self.instances.values() for a in i.firing()]
        if not firing:
            lines.append("No alerts firing.", style=self.styles_map["dim"])
        for n, (i, a) in enumerate(firing):
            now_us = (i.snapshot or {}).get("now_us") or 0
            if n:
                lines.append("\n")
            lines.append(" ALERT ", style=self.styles_map["alert"])
            lines.append(clip(f" {i.name} {alert_title(a)} [{a.get('severity', '?')}] {alert_when(a, now_us)}: "
                              f"{a.get('message', '')}", 70))
        self.query_one("#alerts", Static).update(lines)

    # --- events ---

    def on_resize(self) -> None:
        self.call_after_refresh(self.update_panels)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "instances":
            self.update_panels()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "instances" and event.row_key.value in self.instances:
            self.push_screen(InstanceScreen(event.row_key.value))


# --- command line ------------------------------------------------------------------------------------

DESCRIPTION = """\
Watch every ingestd instance on this machine, live: one row per instance (ingestd@binance, ...),
in the manner of `vector top`. Each instance serves its statistics on a Unix socket,
/run/ingestd/<instance>/stats.sock (mode 0660, group ingestd): run this as root or as a member
of that group (`sudo adduser $USER ingestd`, then log in again)."""

EPILOG = """\
columns:
  STATE   up: updates arriving; connecting: first attempt; gone: unreachable, retried every 5 s;
          starting (not READY yet), paused (by an operator), draining (stopping): as the daemon says
  CONNS   venue connections up / planned
  MSG/S   venue messages received per second; TREND: the last 8 samples (Sparkline below the table)
  LAG ms  exchange-to-receive latency, p50/p99 over the last 30-60 s
  ROWS    rows written by all sinks;  WERR: sink write errors (retried; rows are not lost)
  SPOOL   bytes spooled to local disk while a sink is down;  ALRT: alerts firing

keys: Up/Down choose an instance, Enter opens it (connections, symbols, sinks, alert history),
      1-4 switch its tabs, Esc goes back, q quits. In an instance: p p pauses its feed (twice, to
      be sure), r resumes it, c replaces its connections, f flushes its sinks (root or the
      ingestd group only: the daemon checks).

examples:
  ingestd-console                                     every instance under /run/ingestd
  ingestd-console --socket /tmp/ingestd/stats.sock    one socket, e.g. a daemon run by hand
  ingestd-console --once                              print the table once (for scripts) and exit
  ingestd-console --mono                              no colour (so does NO_COLOR=1)

exit status: 0 ok; 1 no instance found or none answered (--once); 2 usage error"""


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0.1 <= value <= 60:
        raise argparse.ArgumentTypeError("the interval must be between 0.1 and 60 seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ingestd-console", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runtime-dir", type=Path, default=client.DEFAULT_RUNTIME_DIR, metavar="DIR",
                        help="watch DIR/*/stats.sock, rescanned every 5 s for new instances (default: %(default)s)")
    parser.add_argument("--socket", type=Path, action="append", default=[], metavar="PATH",
                        help="also watch this stats socket (repeatable)")
    parser.add_argument("--no-discover", action="store_true",
                        help="watch only the --socket paths, not the runtime dir")
    parser.add_argument("--interval", type=_interval, default=1.0, metavar="SECONDS",
                        help="sampling interval asked of each instance (default: %(default)s)")
    parser.add_argument("--once", action="store_true",
                        help="print the instances table as plain text and exit (MSG/S needs two samples, "
                             "so this takes one interval)")
    parser.add_argument("--mono", action="store_true", help="monochrome: no colour (also: NO_COLOR=1)")
    return parser


async def _once(paths: list[Path], interval_ms: int) -> tuple[list[Instance], list[str]]:
    instances = [Instance(path) for path in paths]

    async def one(inst: Instance) -> None:
        try:
            for data in await client.sample(inst.path, interval_ms, count=2):
                inst.apply(data)
        except FileNotFoundError:
            inst.lost("no socket")
        except PermissionError:
            inst.lost("permission denied (join the socket's group)")
        except ConnectionRefusedError:
            inst.lost("refused (daemon not running)")
        except (OSError, ConnectionError, asyncio.TimeoutError) as exc:
            inst.lost(str(exc) or type(exc).__name__)

    await asyncio.gather(*(one(i) for i in instances))
    problems = [f"{i.name} ({i.path}): {i.reason}" for i in instances if i.state != UP]
    return instances, problems


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runtime_dir = None if args.no_discover else args.runtime_dir
    interval_ms = round(args.interval * 1000)
    if args.once:
        paths = client.discover(runtime_dir, args.socket)
        if not paths:
            where = f"{runtime_dir}/*/stats.sock" if runtime_dir else "no --socket given"
            print(f"ingestd-console: no instance found ({where}); is ingestd@<family> running? "
                  "Or point at a socket with --socket PATH.", file=sys.stderr)
            return 1
        instances, problems = asyncio.run(_once(paths, interval_ms))
        print(plain_table(instances))
        for problem in problems:
            print(f"ingestd-console: {problem}", file=sys.stderr)
        if not any(i.state == UP for i in instances):
            print("ingestd-console: no instance answered", file=sys.stderr)
            return 1
        return 0
    app = ConsoleApp(sockets=args.socket, runtime_dir=runtime_dir, interval_ms=interval_ms, mono=args.mono)
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
