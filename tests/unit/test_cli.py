"""The `ingestd` command line, run as users run it (a subprocess), plus logging helpers."""

from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

import ingestd
from ingestd import cli
from ingestd.logs import RateLimitedLog, setup_logging

REPO = Path(__file__).resolve().parents[2]
SHIPPED = "etc/ingestd.toml"

# Variables that would change what the CLI reads; tests must not depend on the caller's shell.
_AMBIENT = (
    "INGESTD_CONFIG", "STATE_DIRECTORY", "CREDENTIALS_DIRECTORY", "JOURNAL_STREAM",
    "PAIRS_PER_CONNECTION", "FALLBACK_PAIRS", "BINANCE_WS_URL", "HEALTH_PORT",
)  # fmt: skip

BROKEN = """\
[daemon]
batch_size = 0

[feeds.binance]
pairs_per_connection = "fifty"
trade_stream = "trades"
sinks = ["local", "warehouse"]
pairs_per_conection = 3
"""
BROKEN_KEYS = (
    "daemon.batch_size",
    "feeds.binance.pairs_per_connection",
    "feeds.binance.trade_stream",
    "feeds.binance.sinks",
    "feeds.binance.pairs_per_conection",
)


def clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in _AMBIENT}
    env.update(extra)
    return env


def ingestd_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ingestd", *args],
        cwd=REPO,
        env=env or clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    return path


# --- help and version --------------------------------------------------------------------------


def test_help_teaches_what_ingestd_is_and_how_to_use_it():
    result = ingestd_cli("--help")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "market data" in out and "systemd" in out
    for command in ("check-config", "run", "demo", "sim"):
        assert f"    {command} " in out, f"{command} has no one-line purpose in --help"
    for example in (
        "ingestd demo --duration 20",
        "ingestd check-config --config etc/ingestd.toml",
        "ingestd run binance",
        "systemctl start ingestd@binance",
    ):
        assert example in out
    assert "$INGESTD_CONFIG" in out and "/etc/ingestd.toml" in out


@pytest.mark.parametrize("command, phrase", [("run", "shard"), ("demo", "simulator"), ("check-config", "every problem")])
def test_command_help_explains_the_command(command, phrase):
    result = ingestd_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert phrase in result.stdout


def test_version():
    result = ingestd_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ingestd {ingestd.__version__}"


def test_no_command_shows_help_and_fails():
    result = ingestd_cli()
    assert result.returncode == 2
    assert "commands:" in result.stderr


# --- check-config ------------------------------------------------------------------------------


def test_check_config_accepts_the_shipped_file():
    result = ingestd_cli("check-config", "--config", SHIPPED)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(rf"OK: {re.escape(SHIPPED)} \(\d+ feeds, 1 sink\)", result.stdout.strip()), result.stdout


def test_config_option_works_before_the_command_and_from_the_environment():
    assert ingestd_cli("--config", SHIPPED, "check-config").returncode == 0
    result = ingestd_cli("check-config", env=clean_env(INGESTD_CONFIG=SHIPPED))
    assert result.returncode == 0 and SHIPPED in result.stdout


def test_check_config_reports_every_bad_key_prefixed_with_the_file(broken):
    result = ingestd_cli("check-config", "--config", str(broken))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == len(BROKEN_KEYS)
    for key in BROKEN_KEYS:
        assert any(line.startswith(f"{broken}: {key}: ") for line in lines), f"{key} not reported:\n{result.stderr}"


def test_check_config_on_a_missing_file(tmp_path):
    result = ingestd_cli("check-config", "--config", str(tmp_path / "absent.toml"))
    assert result.returncode == 2
    assert "config file not found" in result.stderr


# --- run ---------------------------------------------------------------------------------------


def test_run_with_a_broken_config_reports_the_same_problems_and_starts_nothing(broken, tmp_path):
    state_dir = tmp_path / "state"
    checked = ingestd_cli("check-config", "--config", str(broken))
    result = ingestd_cli("run", "binance", "--config", str(broken), "--state-dir", str(state_dir), timeout=10)
    assert result.returncode == 2
    problems = result.stderr.splitlines()
    assert problems[:-1] == checked.stderr.splitlines()
    assert problems[-1] == "ingestd: not starting binance: the configuration has problems"
    assert not state_dir.exists()


def test_run_with_a_broken_config_never_imports_the_supervisor(broken):
    probe = (
        "import sys; from ingestd.cli import main; "
        f"code = main(['run', 'binance', '--config', {str(broken)!r}]); "
        "assert 'ingestd.supervisor' not in sys.modules and 'trio' not in sys.modules; "
        "sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=clean_env(), capture_output=True, text=True)
    assert result.returncode == 2, result.stderr


def test_run_an_instance_the_config_does_not_have(tmp_path):
    state_dir = tmp_path / "state"
    result = ingestd_cli("run", "kraken", "--config", SHIPPED, "--state-dir", str(state_dir))
    assert result.returncode == 2
    assert 'instance "kraken": no [feeds.kraken] table (configured feeds: binance, ' in result.stderr
    assert not state_dir.exists()


@pytest.fixture
def fake_supervisor(monkeypatch):
    calls = []

    def run_instance(config, instance, *, state_dir):
        calls.append((config, instance, state_dir))
        return 0

    monkeypatch.setitem(sys.modules, "ingestd.supervisor", types.SimpleNamespace(run_instance=run_instance))
    return calls


@pytest.mark.parametrize("source", ["flag", "systemd", "config"])
def test_run_resolves_and_creates_the_state_dir(source, tmp_path, monkeypatch, fake_supervisor):
    config = tmp_path / "ingestd.toml"
    config.write_text(f'[daemon]\nstate_dir = "{tmp_path / "from-config"}"\n[feeds.binance]\n')
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    argv = ["run", "binance", "--config", str(config)]
    if source == "flag":
        argv += ["--state-dir", str(tmp_path / "from-flag")]
    if source in ("flag", "systemd"):
        monkeypatch.setenv("STATE_DIRECTORY", f"{tmp_path / 'from-systemd'}:{tmp_path / 'other'}")
    assert cli.main(argv) == 0
    (loaded, instance, state_dir), = fake_supervisor
    assert instance == "binance"
    assert state_dir == tmp_path / f"from-{source}"
    assert state_dir.is_dir()
    assert loaded.daemon.state_dir == str(state_dir)


def test_demo_passes_its_options_through(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setitem(sys.modules, "ingestd.demo", types.SimpleNamespace(run_demo=lambda **kw: calls.append(kw) or 0))
    argv = ["demo", "--duration", "20", "--state-dir", str(tmp_path), "--symbols", "3", "--rate", "50", "--seed", "7"]
    assert cli.main(argv) == 0
    assert calls == [dict(duration=20.0, state_dir=tmp_path, symbols=3, rate=50.0, seed=7)]


def test_demo_defaults(monkeypatch):
    calls = []
    monkeypatch.setitem(sys.modules, "ingestd.demo", types.SimpleNamespace(run_demo=lambda **kw: calls.append(kw) or 0))
    assert cli.main(["demo"]) == 0
    assert calls == [dict(duration=None, state_dir=Path("ingestd-demo"), symbols=10, rate=500.0, seed=1)]


def test_demo_rejects_a_nonpositive_duration():
    result = ingestd_cli("demo", "--duration", "0")
    assert result.returncode == 2
    assert "expected a positive number, got '0'" in result.stderr


def test_sim_mounts_the_simulators_own_arguments(monkeypatch):
    import ingestd.sim

    seen = []
    fake = types.SimpleNamespace(
        add_arguments=lambda parser: parser.add_argument("--port", type=int, default=0),
        run=lambda args: seen.append(args.port) or 0,
    )
    monkeypatch.setitem(sys.modules, "ingestd.sim.cli", fake)
    monkeypatch.setattr(ingestd.sim, "cli", fake, raising=False)
    assert cli.main(["sim", "--port", "9443"]) == 0
    assert seen == [9443]


# --- logging -----------------------------------------------------------------------------------


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_log_lines_carry_key_value_fields(restore_logging, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    setup_logging("info", stream=stream)
    logging.getLogger("ingestd.test").info("connected", extra={"conn": "binance-0", "note": "two words"})
    logging.getLogger("ingestd.test").debug("hidden at info")
    line = stream.getvalue()
    assert line.endswith(' info    ingestd.test: connected conn=binance-0 note="two words"\n')
    assert line[:4].isdigit()  # timestamped when not under journald


def test_under_journald_lines_carry_syslog_priorities_and_no_timestamp(restore_logging, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    stream = io.StringIO()
    setup_logging("debug", stream=stream)
    log = logging.getLogger("ingestd.test")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    assert stream.getvalue().splitlines() == ["<7>ingestd.test: d", "<6>ingestd.test: i", "<4>ingestd.test: w", "<3>ingestd.test: e"]


def test_rate_limited_log_counts_what_it_suppressed(caplog):
    now = [100.0]
    limited = RateLimitedLog(interval_s=10, clock=lambda: now[0])
    log = logging.getLogger("ingestd.test")
    with caplog.at_level(logging.WARNING):
        assert limited.log(log, logging.WARNING, "decode", "bad frame", conn="c0")
        for _ in range(412):
            assert not limited.log(log, logging.WARNING, "decode", "bad frame", conn="c0")
        assert limited.log(log, logging.WARNING, "gap", "other kind is independent")
        now[0] += 10
        assert limited.log(log, logging.WARNING, "decode", "bad frame", conn="c1", name="clashes with LogRecord")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == ["bad frame", "other kind is independent", "bad frame (412 more since last report)"]
    assert caplog.records[-1].conn == "c1"
