"""`ingestd db migrate [--config PATH] [--sink NAME]`: apply pending migrations to the postgres sinks.

Output, one line per sink (stdout):
    sinks.pg: applied 0001_reference_tables, 0002_time_series (postgres), ..., 0004_more_record_kinds (postgres); schema v4 (postgres)
    sinks.pg: up to date (schema v4, postgres)
Problems go to stderr as `ingestd: sinks.pg: ...`. Every sink is attempted even when one fails.
Exit status: 0 all done, 1 a server could not be reached or a migration failed, 2 config problem.
"""

from __future__ import annotations

import argparse
import sys

import psycopg

from ingestd.config import ConfigError, load_config
from ingestd.db import connect, describe_target
from ingestd.db.migrate import MigrationError, migrate

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2


def _error(message: str) -> None:
    print(f"ingestd: {message}", file=sys.stderr)


def run_migrate(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as error:
        for problem in error.problems:
            print(f"{error.source}: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    postgres = {name: cfg for name, cfg in config.sinks.items() if cfg.type == "postgres"}
    wanted = getattr(args, "sink", None)
    if wanted is not None:
        if wanted not in config.sinks:
            _error(f"{args.config} has no [sinks.{wanted}]")
            return EXIT_CONFIG
        if wanted not in postgres:
            _error(f"sinks.{wanted} is a {config.sinks[wanted].type} sink, not postgres: nothing to migrate")
            return EXIT_CONFIG
        postgres = {wanted: postgres[wanted]}
    if not postgres:
        _error(f'{args.config} has no [sinks.NAME] with type = "postgres": nothing to migrate')
        return EXIT_CONFIG
    status = EXIT_OK
    for name, cfg in postgres.items():
        if not _migrate_one(name, cfg):
            status = EXIT_FAILURE
    return status


def _migrate_one(name: str, cfg) -> bool:
    target = describe_target(cfg)
    try:
        conn = connect(cfg)
    except psycopg.Error as exc:
        _error(f"sinks.{name}: cannot connect to {target}: {' '.join(str(exc).split())}")
        return False
    try:
        result = migrate(conn, cfg.timescale)
    except (MigrationError, psycopg.Error) as exc:
        _error(f"sinks.{name}: migration of {target} failed: {' '.join(str(exc).split())}")
        return False
    finally:
        conn.close()
    for warning in result.warnings:
        _error(f"sinks.{name}: warning: {warning}")
    if result.up_to_date:
        print(f"sinks.{name}: up to date (schema v{result.version}, {result.mode}) at {target}")
    else:
        applied = ", ".join(m.label for m in result.applied)
        print(f"sinks.{name}: applied {applied}; schema v{result.version} ({result.mode}) at {target}")
    return True
