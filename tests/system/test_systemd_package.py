"""The Debian package under a real systemd: what a user does, in order, on a bookworm machine.

`apt install ./ingestd_*.deb`, point /etc/ingestd.toml at the simulator (on the host's loopback,
which the namespace shares), `systemctl start ingestd@binance`, read the journal, run
ingestd-console, reload, drill the watchdog, stop, `apt remove`, `apt purge`. The tests run in
file order and share one booted machine: each step starts from where the previous one left it.

First run: about a minute for debootstrap (cached under ~/.cache/ingestd-test), one for the
package build (cached by a hash of the sources) and a minute for the scenario itself.
"""

from __future__ import annotations

import re
import stat
import time

import pytest

from tests.harness import missing_and_extra, start_sim, wait_for
from tests.system.machine import Machine, built_package, cached_rootfs, skip_unless_supported

pytestmark = pytest.mark.slow

UNIT = "ingestd@binance.service"
STORE = "/var/lib/ingestd/binance/ingestd.sqlite"
# A short watchdog, so the stall drill takes seconds rather than the unit's 30 s.
WATCHDOG_DROP_IN = "[Service]\nWatchdogSec=5s\n"
# The systemd-analyze security exposure the unit must stay at or under (Synapse's: 1.3).
MAX_EXPOSURE = 2.0


class Scenario:
    """What the steps hand on to each other."""

    def __init__(self, machine: Machine, sim, deb) -> None:
        self.machine = machine
        self.sim = sim
        self.deb = deb
        symbols = list(sim.truth())
        self.first, self.dropped, self.added = symbols[0], symbols[1], symbols[2]
        self.symbols = [self.first, self.dropped]
        self.main_pid = 0

    def write_config(self) -> None:
        # Written in place: the file keeps the package's owner and mode (root:ingestd 0640).
        # linger_ms is long on purpose: a stop must flush seconds of trades held in memory.
        symbols = ", ".join(f'"{s}"' for s in self.symbols)
        with open(self.machine.path("/etc/ingestd.toml"), "w") as f:
            f.write(
                f"""[daemon]
linger_ms = 1500
http_port = 0

[sinks.local]
type = "sqlite"
path = "ingestd.sqlite"

[feeds.binance]
sinks = ["local"]
ws_url = "{self.sim.ws_url}"
rest_url = "{self.sim.rest_url}"
symbols = [{symbols}]
fallback_pairs = []
book_interval_ms = 200
reconnect_base_s = 0.1
reconnect_cap_s = 1.0
"""
            )

    def start(self) -> None:
        """systemctl start, which returns once the daemon sent READY=1; the journal on failure."""
        started = self.machine.run("systemctl", "start", UNIT, check=False, timeout=90)
        if started.returncode != 0:
            journal = self.machine.run("journalctl", "-u", UNIT, "--no-pager", "-n", "40", check=False).stdout
            raise AssertionError(f"systemctl start {UNIT} failed:\n{started.stderr}\n{journal}")

    def stored(self) -> dict[str, list[int]]:
        """symbol -> every stored trade id, duplicates included."""
        out: dict[str, list[int]] = {}
        for symbol, trade_id in self.machine.query(STORE, "SELECT symbol, trade_id FROM ticks") or []:
            out.setdefault(symbol, []).append(trade_id)
        return out

    def messages(self) -> list[tuple[int, str]]:
        """(PRIORITY, MESSAGE) of every entry in the unit's journal."""
        out = []
        for entry in self.machine.journal(UNIT):
            message = entry.get("MESSAGE")
            if isinstance(message, list):  # journald's JSON for a non-UTF-8 message
                message = bytes(message).decode(errors="replace")
            out.append((int(entry.get("PRIORITY", 6)), message or ""))
        return out

    def wait_for_message(self, pattern: str, timeout: float = 30) -> tuple[int, str]:
        regex = re.compile(pattern)

        def found():
            return next((m for m in self.messages() if regex.search(m[1])), None)

        return wait_for(found, timeout, interval=0.5, what=f"journal line /{pattern}/")


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    skip_unless_supported()
    rootfs = cached_rootfs()
    deb = built_package()
    tmp = tmp_path_factory.mktemp("system")
    sim = start_sim(tmp, "--symbols", "4", "--rate", "200", "--seed", "6")
    machine = Machine(rootfs, tmp / "machine")
    try:
        machine.boot()
        yield Scenario(machine, sim, deb)
    finally:
        machine.shutdown()
        sim.stop()


def test_apt_install_sets_up_user_config_links_and_target(scenario):
    m = scenario.machine
    (m.path("/tmp") / scenario.deb.name).write_bytes(scenario.deb.read_bytes())
    install = ("apt-get", "install", "-y", "-q", f"/tmp/{scenario.deb.name}")
    if m.run(*install, check=False, timeout=300).returncode != 0:
        m.run("apt-get", "update", "-qq", timeout=300)  # the cached package lists went stale
        m.run(*install, timeout=300)

    assert m.run("id", "-nG", "ingestd").stdout.split() == ["ingestd"]
    conf = m.path("/etc/ingestd.toml").stat()
    assert stat.S_IMODE(conf.st_mode) == 0o640 and conf.st_uid == 0
    assert m.run("stat", "-c", "%G", "/etc/ingestd.toml").stdout.strip() == "ingestd"
    assert "/etc/ingestd.toml" in m.run("dpkg-query", "-W", "-f=${Conffiles}", "ingestd").stdout
    for command in ("ingestd", "ingestd-console"):
        assert m.run("readlink", f"/usr/bin/{command}").stdout.strip() == f"/opt/venvs/ingestd/bin/{command}"
        assert m.path(f"/usr/share/man/man1/{command}.1.gz").exists()
    assert m.run("ingestd", "--version").stdout.strip()
    assert m.run("systemctl", "is-enabled", "ingestd.target").stdout.strip() == "enabled"
    assert m.run("systemctl", "is-active", "ingestd.target").stdout.strip() == "active"


def test_unit_scores_within_the_hardening_budget(scenario):
    report = scenario.machine.run("systemd-analyze", "security", "--offline=true", UNIT, check=False).stdout
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", report)
    assert match, report
    assert float(match.group(1)) <= MAX_EXPOSURE, report


def test_start_is_active_and_status_shows_the_status_line(scenario):
    m = scenario.machine
    scenario.write_config()
    drop_in = m.path(f"/etc/systemd/system/{UNIT}.d")
    drop_in.mkdir(parents=True)
    (drop_in / "watchdog.conf").write_text(WATCHDOG_DROP_IN)
    m.run("systemctl", "daemon-reload")

    scenario.start()
    assert m.run("systemctl", "is-active", UNIT).stdout.strip() == "active"
    scenario.main_pid = int(m.show(UNIT, "MainPID"))
    status_line = re.compile(r'Status: "binance: 1/1 conns, [\d.k]+ msg/s, lag p99 [\d-]+( ms)?, \d+ alerts"')

    def status():
        out = m.run("systemctl", "status", "--no-pager", UNIT, check=False).stdout
        return status_line.search(out)

    wait_for(status, 20, interval=0.5, what="the STATUS line in systemctl status")


def test_journal_has_the_start_up_lines_at_their_priorities(scenario):
    scenario.wait_for_message(r"^ingestd\.supervisor: ready instance=binance")
    messages = scenario.messages()
    expected = {
        r"^OK: /etc/ingestd\.toml \(1 feed, 1 sink\)": 6,  # ExecStartPre's check-config
        r"^ingestd\.supervisor: instance started instance=binance": 6,
        r"^ingestd\.statsock: stats socket listening path=/run/ingestd/binance/stats\.sock": 6,
        r"^ingestd\.binance: connected conn=": 6,
        r"^ingestd\.supervisor: ready instance=binance": 6,
    }
    for pattern, priority in expected.items():
        found = [p for p, text in messages if re.search(pattern, text)]
        assert found and set(found) == {priority}, (pattern, found, messages)
    # A clean start logs nothing at warning or worse.
    assert not [(p, t) for p, t in messages if p <= 4], messages


def test_rows_arrive_in_the_store(scenario):
    def both_symbols_stored():
        stored = scenario.stored()
        return all(len(stored.get(s, [])) >= 20 for s in scenario.symbols)

    wait_for(both_symbols_stored, 30, what=f"trades of {scenario.symbols} in {STORE}")
    assert scenario.machine.query(STORE, "SELECT COUNT(*) FROM books")[0][0] > 0


def test_console_lists_the_instance_for_members_of_the_ingestd_group(scenario):
    m = scenario.machine
    m.run("useradd", "--no-create-home", "--groups", "ingestd", "watcher")
    m.run("useradd", "--no-create-home", "outsider")

    shown = m.run("ingestd-console", "--once", "--mono", user="watcher", timeout=30)
    rows = [line.split() for line in shown.stdout.splitlines()]
    assert ["binance", "up", "1/1"] in [row[:3] for row in rows], shown.stdout

    refused = m.run("ingestd-console", "--once", "--mono", user="outsider", check=False, timeout=30)
    assert refused.returncode == 1 and "binance" not in refused.stdout


def test_reload_applies_a_symbol_list_change_without_a_restart(scenario):
    m = scenario.machine
    scenario.symbols = [scenario.first, scenario.added]
    scenario.write_config()
    m.run("systemctl", "reload", UNIT)

    scenario.wait_for_message(r"symbol list changed")
    wait_for(lambda: len(scenario.stored().get(scenario.added, [])) >= 10, 30,
             what=f"trades of {scenario.added}, added by the reload")
    assert m.run("systemctl", "is-active", UNIT).stdout.strip() == "active"
    assert int(m.show(UNIT, "MainPID")) == scenario.main_pid
    assert m.show(UNIT, "NRestarts") == "0"


def test_a_forced_stall_ends_in_a_watchdog_restart(scenario):
    m = scenario.machine
    # SIGUSR2 wedges the feed on purpose: the loop lives on, but the feed makes no progress.
    m.run("systemctl", "kill", "--signal=SIGUSR2", "--kill-whom=main", UNIT)

    wait_for(lambda: m.show(UNIT, "NRestarts") == "1", 40, interval=0.5, what="a restart by the watchdog")
    messages = scenario.messages()
    assert (4, "ingestd.supervisor: SIGUSR2: wedging the feed on purpose (watchdog drill)") in messages
    assert any(p == 3 and "Watchdog timeout" in t for p, t in messages), messages
    assert any(p == 3 and "a feed stopped making progress" in t for p, t in messages), messages

    wait_for(lambda: m.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "active", 60,
             what="the restarted instance to be active")
    restarted_pid = int(m.show(UNIT, "MainPID"))
    assert restarted_pid != scenario.main_pid
    scenario.main_pid = restarted_pid
    scenario.wait_for_message(r"resuming from stored checkpoints")


def test_stop_drains_and_nothing_is_lost(scenario):
    m = scenario.machine
    sim = scenario.sim
    time.sleep(3)  # trading goes on after the restart
    # Pause the market and stop at once: trades still held by the batcher (linger 1.5 s) must be
    # flushed by the drain, and the ones the SIGABRT of the watchdog drill lost refetched.
    sim.post("/_sim/pause")
    time.sleep(0.5)
    truth = sim.truth()
    m.run("systemctl", "stop", UNIT, timeout=60)

    assert m.run("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
    assert m.show(UNIT, "Result") == "success"
    assert any(p == 6 and t.startswith("ingestd.supervisor: stopped cleanly") for p, t in scenario.messages())

    stored = scenario.stored()
    followed = {s: stored[s] for s in scenario.symbols}
    since = {s: min(ids) for s, ids in followed.items()}
    assert missing_and_extra(followed, {s: truth[s] for s in followed}, since) == {}
    # The one dropped by the reload: stored up to then, each trade once.
    assert len(stored[scenario.dropped]) == len(set(stored[scenario.dropped]))
    checkpoints = dict(m.query(STORE, "SELECT symbol, trade_id FROM checkpoints"))
    for symbol in scenario.symbols:
        assert checkpoints[symbol] == max(truth[symbol]), symbol


def test_apt_remove_keeps_the_data_and_apt_purge_deletes_it(scenario):
    m = scenario.machine
    scenario.sim.post("/_sim/resume")
    scenario.start()
    rows_before = len(sum(scenario.stored().values(), []))

    m.run("apt-get", "remove", "-y", "-q", "ingestd", timeout=120)
    # Stopping ingestd.target (the package's prerm) stopped the instance: PartOf=ingestd.target.
    assert m.run("systemctl", "is-active", UNIT, check=False).stdout.strip() != "active"
    assert m.run("dpkg-query", "-W", "-f=${db:Status-Abbrev}", "ingestd").stdout.strip() == "rc"
    assert not m.path("/opt/venvs/ingestd").exists() and not m.path("/usr/bin/ingestd").exists()
    assert m.path("/etc/ingestd.toml").exists()
    assert len(sum(scenario.stored().values(), [])) >= rows_before

    m.run("apt-get", "purge", "-y", "-q", "ingestd", timeout=120)
    assert not m.path("/var/lib/ingestd").exists()
    assert not m.path("/etc/ingestd.toml").exists()
    assert m.run("dpkg-query", "-W", "ingestd", check=False).returncode != 0
    # The system user stays (files it owned may outlive the package; policy 9.2.2).
    assert m.run("id", "ingestd", check=False).returncode == 0
