"""The per-instance stats socket: `protocol` (sans-I/O, shared with ingestd-console) and `server` (Trio).

Import `ingestd.statsock.server` for `serve_stats_socket`; this package itself imports nothing, so
the console can use the protocol without pulling in Trio.
"""
