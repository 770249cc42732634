"""Write the man pages ingestd(1) and ingestd-console(1) from the programs' own argparse parsers.

    python packaging/manpage.py OUTDIR

Each page is a template in docs/man/ (NAME and the hand-written sections: signals, systemd,
files, ...) with the line `@ARGPARSE@` replaced by SYNOPSIS, DESCRIPTION, COMMANDS, OPTIONS and
NOTES made from the parser: the same text as `--help`, so the pages cannot fall behind the
commands. debian/rules runs this with the package's own virtualenv, at build time.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[1] / "docs" / "man"
GLOBAL_GROUP = "global options"


def esc(text: str) -> str:
    """Text for roff: backslashes escaped, hyphens as the ASCII minus commands need."""
    return text.replace("\\", "\\e").replace("-", "\\-")


def line(text: str) -> str:
    text = esc(text)
    return "\\&" + text if text.startswith((".", "'")) else text


def paragraphs(text: str | None) -> list[str]:
    """Blank-line separated paragraphs, filled, except runs of indented lines (examples,
    tables), kept verbatim as argparse's RawDescriptionHelpFormatter shows them."""
    out: list[str] = []
    for block in (text or "").strip("\n").split("\n\n"):
        rows = [r.rstrip() for r in block.splitlines() if r.strip()]
        if not rows:
            continue
        out.append(".PP")
        verbatim = False
        for row in rows:
            indented = row.startswith((" ", "\t"))
            if indented != verbatim:
                out.append(".nf" if indented else ".fi")
                verbatim = indented
            out.append(line(row if indented else row.strip()))
        if verbatim:
            out.append(".fi")
    return out


def documented(groups: list, with_help: bool) -> list[argparse.Action]:
    return [a for g in groups for a in g._group_actions
            if a.help != argparse.SUPPRESS and not isinstance(a, argparse._SubParsersAction)
            and (with_help or not isinstance(a, argparse._HelpAction))]


def options(parser: argparse.ArgumentParser, groups: list, with_help: bool = True) -> list[str]:
    formatter = parser._get_formatter()
    out: list[str] = []
    for action in documented(groups, with_help):
        out += [".TP", ".B " + esc(formatter._format_action_invocation(action))]
        out.append(line(" ".join(formatter._expand_help(action).split())) if action.help else "")
    return out


def subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line summary, parser) of every command, depth first ("db", "db migrate", ...)."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                out.append((name, summaries.get(name, ""), sub))
                out += [(f"{name} {n}", s, p) for n, s, p in subcommands(sub)]
    return out


def own_groups(parser: argparse.ArgumentParser) -> list:
    return [g for g in parser._action_groups if g.title != GLOBAL_GROUP and g._group_actions]


def usage(parser: argparse.ArgumentParser) -> list[str]:
    words = parser.format_usage().strip().removeprefix("usage: ").split()
    return [".B " + esc(words[0]), line(" ".join(words[1:]))]


def generated(parser: argparse.ArgumentParser) -> str:
    out = [".SH SYNOPSIS", *usage(parser), ".SH DESCRIPTION", *paragraphs(parser.description)]
    commands = subcommands(parser)
    if commands:
        out.append(".SH COMMANDS")
        for name, summary, sub in commands:
            out += [".SS " + esc(name), line(summary[:1].upper() + summary[1:] + ".") if summary else "",
                    ".PP", *usage(sub), *paragraphs(sub.description)]
            groups = own_groups(sub)
            if documented(groups, with_help=False):
                out += [".PP", "Options:", ".RS", *options(sub, groups, with_help=False), ".RE"]
            out += paragraphs(sub.epilog)
    out += [".SH OPTIONS", *options(parser, own_groups(parser) + [g for g in parser._action_groups
                                                                   if g.title == GLOBAL_GROUP])]
    if parser.epilog:
        out += [".SH NOTES", *paragraphs(parser.epilog)]
    return "\n".join(x for x in out if x != "") + "\n"


def render(template: Path, parser: argparse.ArgumentParser, version: str) -> str:
    # SOURCE_DATE_EPOCH (dpkg-buildpackage sets it from debian/changelog): reproducible dates.
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    day = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) if epoch else datetime.datetime.now(datetime.timezone.utc)
    text = template.read_text()
    text = text.replace("@VERSION@", version).replace("@DATE@", day.strftime("%Y-%m-%d"))
    return text.replace("@ARGPARSE@\n", generated(parser))


def parsers() -> dict[str, argparse.ArgumentParser]:
    from ingestd import cli
    from ingestd_console import app

    try:
        from ingestd.sim import cli as sim_cli  # `ingestd sim`'s options, when the simulator is there
    except ImportError:
        sim_cli = None
    main = cli.build_parser(sim_cli)
    console = app.build_parser()
    console.prog = "ingestd-console"
    return {"ingestd": main, "ingestd-console": console}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    outdir = Path(argv[0])
    outdir.mkdir(parents=True, exist_ok=True)
    from ingestd import __version__

    for name, parser in parsers().items():
        (outdir / f"{name}.1").write_text(render(TEMPLATES / f"{name}.1.in", parser, __version__))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
