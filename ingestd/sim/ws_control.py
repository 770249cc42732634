"""Live control messages on a Binance market-data WebSocket (sans-I/O).

Handles SUBSCRIBE, UNSUBSCRIBE, LIST_SUBSCRIPTIONS, SET_PROPERTY and GET_PROPERTY as documented in
binance-spot-api-docs web-socket-streams.md ("Live Subscribing/Unsubscribing to streams"), including
its error replies. The caller applies the returned changes and sends the reply.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

METHODS = ("SUBSCRIBE", "UNSUBSCRIBE", "LIST_SUBSCRIPTIONS", "SET_PROPERTY", "GET_PROPERTY")
_ID_STRING = re.compile(r"[A-Za-z0-9]{1,36}")
_INT64 = range(-(2**63), 2**63)


@dataclass
class ControlOutcome:
    reply: dict[str, Any]
    subscribe: list[str] = field(default_factory=list)
    unsubscribe: list[str] = field(default_factory=list)
    combined: bool | None = None  # a new value for the connection's "combined" property


def _error(code: int, msg: str, request_id: Any = None) -> ControlOutcome:
    return ControlOutcome({"code": code, "msg": msg, "id": request_id})


def _valid_id(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value in _INT64
    return isinstance(value, str) and _ID_STRING.fullmatch(value) is not None


def handle_control_message(
    text: str | bytes,
    *,
    subscriptions: Sequence[str],
    combined: bool,
    is_known_stream: Callable[[str], bool],
    max_streams: int,
) -> ControlOutcome:
    try:
        request = msgspec.json.decode(text)
    except msgspec.DecodeError as exc:
        return _error(3, f"Invalid JSON: {exc}")
    if not isinstance(request, dict):
        return _error(2, "Invalid request: expected a JSON object")
    if "method" not in request:
        return _error(2, "Invalid request: missing field `method`")
    request_id = request.get("id")
    if "id" not in request or not _valid_id(request_id):
        return _error(2, "Invalid request: request ID must be an unsigned integer")
    method = request["method"]
    if method not in METHODS:
        expected = ", ".join(f"`{m}`" for m in METHODS)
        return _error(2, f"Invalid request: unknown variant `{method}`, expected one of {expected}", request_id)
    params = request.get("params", [])
    if not isinstance(params, list):
        return _error(2, "Invalid request: params must be an array", request_id)

    if method == "LIST_SUBSCRIPTIONS":
        return ControlOutcome({"result": list(subscriptions), "id": request_id})
    if method in ("SET_PROPERTY", "GET_PROPERTY"):
        return _property(method, params, combined, request_id)

    if not all(isinstance(name, str) for name in params):
        return _error(2, "Invalid request: stream names must be strings", request_id)
    unknown = [name for name in params if not is_known_stream(name)]
    if unknown:
        return _error(2, f"Invalid request: unknown stream name(s): {', '.join(unknown)}", request_id)
    if method == "UNSUBSCRIBE":
        return ControlOutcome({"result": None, "id": request_id}, unsubscribe=list(dict.fromkeys(params)))
    new = [name for name in dict.fromkeys(params) if name not in subscriptions]
    if len(subscriptions) + len(new) > max_streams:
        return _error(2, f"Invalid request: too many streams; at most {max_streams} per connection", request_id)
    return ControlOutcome({"result": None, "id": request_id}, subscribe=new)


def _property(method: str, params: list[Any], combined: bool, request_id: Any) -> ControlOutcome:
    if not params or not isinstance(params[0], str):
        return _error(2, "Invalid request: property name must be a string", request_id)
    if params[0] != "combined":
        return _error(0, "Unknown property", request_id)
    if method == "GET_PROPERTY":
        if len(params) != 1:
            return _error(2, "Invalid request: too many parameters", request_id)
        return ControlOutcome({"result": combined, "id": request_id})
    if len(params) != 2:
        return _error(2, "Invalid request: too many parameters", request_id)
    if not isinstance(params[1], bool):
        return _error(1, "Invalid value type: expected Boolean", request_id)
    return ControlOutcome({"result": None, "id": request_id}, combined=params[1])
