"""The packaging sources agree with the code: version, man pages. Quick; no root needed."""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

import pytest

from ingestd import __version__
from tests.harness import REPO


def test_debian_changelog_is_at_the_package_version():
    # A native package: the Debian version is the upstream one (bump both, `dch -v X` then
    # ingestd/__init__.py), else `make deb` names the .deb after a version it does not hold.
    first = (REPO / "debian/changelog").read_text().splitlines()[0]
    version = re.match(r"ingestd \(([^)]+)\)", first)
    assert version and version.group(1) == __version__, (first, __version__)


def test_man_pages_render_every_command_and_option_without_groff_warnings(tmp_path):
    if shutil.which("man") is None:
        pytest.skip("man (man-db) is not installed")
    subprocess.run([sys.executable, str(REPO / "packaging/manpage.py"), str(tmp_path)], check=True)
    from ingestd.cli import build_parser
    from ingestd.sim import cli as sim_cli
    from ingestd_console.app import build_parser as console_parser

    for page, parser in (("ingestd.1", build_parser(sim_cli)), ("ingestd-console.1", console_parser())):
        shown = subprocess.run(["man", "--warnings", "-l", str(tmp_path / page)], capture_output=True, text=True,
                               env={"MANWIDTH": "80", "LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin", "MAN_KEEP_FORMATTING": ""})
        assert shown.returncode == 0 and not shown.stderr.strip(), shown.stderr
        text = re.sub(r"\s*‐\n\s*|\s+", " ", shown.stdout)  # undo filling and hyphenation
        options = [o for a in parser._actions for o in a.option_strings]
        commands = [name for a in parser._actions if isinstance(a, argparse._SubParsersAction) for name in a.choices]
        for word in options + commands:
            assert word in text, f"{page}: {word!r} missing"
        assert f"ingestd {__version__}" in text
