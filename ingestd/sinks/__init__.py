"""Sinks by type name: `[sinks.<name>] type = "..."` picks the class that stores that sink's records."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

from ingestd.sinks.base import Sink, SinkError
from ingestd.stats import StatsRegistry

__all__ = ["Sink", "SinkError", "build_sink", "sql_store"]

T = TypeVar("T")


def build_sink(name: str, cfg: Any, *, state_dir: Path, stats: StatsRegistry) -> Sink:
    """Instantiate the configured sink (not yet opened; the pipeline opens it in a worker thread)."""
    if cfg.type == "sqlite":
        from ingestd.sinks.sqlite import SqliteSink

        return SqliteSink(name, cfg.resolved_path(state_dir), synchronous=cfg.synchronous, stats=stats)
    if cfg.type == "postgres":
        from ingestd.sinks.postgres import PostgresSink

        return PostgresSink(name, cfg, stats=stats)
    if cfg.type == "kafka":
        from ingestd.sinks.kafka import KafkaSink

        return KafkaSink(name, cfg, stats=stats)
    if cfg.type == "redis":
        from ingestd.sinks.redis_streams import RedisStreamsSink

        return RedisStreamsSink(name, cfg, stats=stats)
    raise ValueError(f"sinks.{name}: unknown sink type {cfg.type!r}")


def sql_store(sink: Sink, *, sqlite: Callable[[Path], T], postgres: Callable[[Any], T]) -> T | None:
    """A feed's reference-table store (whales, dex_pools) in the database of `sink`, opened or not:
    `sqlite(path of its file)` or `postgres(its config)`, or None for a sink with no SQL database
    (Redis, Kafka)."""
    from ingestd.sinks.postgres import PostgresSink
    from ingestd.sinks.sqlite import SqliteSink

    if isinstance(sink, SqliteSink):
        return sqlite(sink.path)
    if isinstance(sink, PostgresSink):
        return postgres(sink.cfg)
    return None
