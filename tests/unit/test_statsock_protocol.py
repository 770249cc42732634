"""The stats-socket protocol without I/O: framing, versions, errors, limits; random bytes never raise."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ingestd.statsock import protocol as p


def lines(*objs) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def test_requests_are_typed():
    conn = p.Connection("server")
    events = conn.receive_data(lines(
        {"v": 1, "type": "snapshot"},
        {"v": 1, "type": "subscribe", "interval_ms": 250, "id": 7},
        {"v": 1, "type": "control", "verb": "flush", "args": {"sink": "local"}, "id": "c1"},
    ))
    assert events == [
        p.SnapshotRequest(),
        p.SubscribeRequest(interval_ms=250, id=7),
        p.ControlRequest(verb="flush", args={"sink": "local"}, id="c1"),
    ]


def test_every_message_carries_the_version_and_type():
    for msg in (p.Snapshot(data={"a": 1}), p.Result(ok=True, error=None), p.Error(error="x"), p.SnapshotRequest()):
        line = p.encode(msg)
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        obj = json.loads(line)
        assert obj["v"] == 1 and obj["type"]
    assert json.loads(p.encode(p.Result(ok=True, error=None))) == {"v": 1, "type": "result", "ok": True, "error": None}


def test_replies_round_trip_through_a_client_connection():
    server, client = p.Connection("server"), p.Connection("client")
    data = server.send(p.Snapshot(data={"instance": "x", "counters": {"a.b": 3}}, interval_ms=1000))
    data += server.send(p.Result(ok=False, error="permission denied", verb="flush"))
    data += server.send(p.Error(error="nope", id=3))
    assert client.receive_data(data) == [
        p.Snapshot(data={"instance": "x", "counters": {"a.b": 3}}, interval_ms=1000),
        p.Result(ok=False, error="permission denied", verb="flush"),
        p.Error(error="nope", id=3),
    ]


def test_unknown_fields_are_skipped():
    conn = p.Connection("client")
    [msg] = conn.receive_data(b'{"v":1,"type":"snapshot","data":{},"future":[1,2],"interval_ms":5}\n')
    assert msg == p.Snapshot(data={}, interval_ms=5)


@pytest.mark.parametrize("line, fragment", [
    (b"{not json", "malformed JSON"),
    (b"[1,2]", "expected a JSON object"),
    (b'{"type":"snapshot"}', 'missing protocol version "v"'),
    (b'{"v":2,"type":"snapshot"}', "unsupported protocol version 2"),
    (b'{"v":true,"type":"snapshot"}', "unsupported protocol version"),
    (b'{"v":1}', 'missing message "type"'),
    (b'{"v":1,"type":5}', 'must be a string'),
    (b'{"v":1,"type":"frobnicate"}', "unknown message type 'frobnicate'"),
    (b'{"v":1,"type":"subscribe","interval_ms":"fast"}', "invalid 'subscribe' message"),
    (b'{"v":1,"type":"control"}', "invalid 'control' message"),
    (b"\xff\xfe", "malformed JSON"),
])
def test_bad_lines_become_protocol_errors(line, fragment):
    conn = p.Connection("server")
    events = conn.receive_data(line + b"\n" + lines({"v": 1, "type": "snapshot"}))
    assert len(events) == 2
    assert isinstance(events[0], p.ProtocolError) and fragment in events[0].error, events[0]
    assert events[1] == p.SnapshotRequest()  # the stream goes on after a bad line
    reply = json.loads(p.encode(events[0].as_reply()))
    assert reply["type"] == "error" and reply["v"] == 1


def test_error_echoes_the_request_id():
    [event] = p.Connection("server").receive_data(b'{"v":9,"type":"snapshot","id":"abc"}\n')
    assert event.id == "abc"


def test_split_lines_crlf_and_blank_lines():
    conn = p.Connection("server")
    data = b'\n\r\n{"v":1,"type":"snapshot"}\r\n{"v":1,"ty' + b'pe":"subscribe","interval_ms":100}\n'
    events = []
    for i in range(len(data)):  # one byte at a time
        events += conn.receive_data(data[i:i + 1])
    assert events == [p.SnapshotRequest(), p.SubscribeRequest(interval_ms=100)]
    assert conn.buffered == 0


def test_an_unterminated_last_line_is_read_at_eof():
    conn = p.Connection("server")
    assert conn.receive_data(b'{"v":1,"type":"snapshot"}') == []
    assert conn.receive_data(b"") == [p.SnapshotRequest()]
    assert conn.closed and conn.receive_data(b"more") == []


def test_over_long_lines_are_rejected_not_buffered():
    conn = p.Connection("server", max_line=1000)
    events = []
    for _ in range(50):  # 50 kB without a newline
        events += conn.receive_data(b"x" * 1000)
        assert conn.buffered <= 1000
    assert len(events) == 1 and "longer than 1000 bytes" in events[0].error
    # the rest of the long line is dropped; the next line is read normally
    assert conn.receive_data(b"yyy\n" + lines({"v": 1, "type": "snapshot"})) == [p.SnapshotRequest()]
    # a long line arriving whole, newline included
    events = conn.receive_data(b"z" * 5000 + b"\n" + lines({"v": 1, "type": "snapshot"}))
    assert isinstance(events[0], p.ProtocolError) and events[1] == p.SnapshotRequest()


def test_the_default_request_limit_is_one_mebibyte():
    assert p.Connection("server").max_line == 1 << 20
    assert p.Connection("client").max_line > 1 << 20  # snapshots grow with the symbol count


def test_subscribe_interval_is_clamped():
    assert p.SubscribeRequest(interval_ms=1).effective_interval_ms() == p.MIN_INTERVAL_MS
    assert p.SubscribeRequest(interval_ms=10**9).effective_interval_ms() == p.MAX_INTERVAL_MS
    assert p.SubscribeRequest().effective_interval_ms() == 1000


def test_the_protocol_module_does_no_io():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(p))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [ast.alias(n.module or "")])}
    assert not imported & {"trio", "asyncio", "socket", "selectors", "anyio"}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
near_messages = st.fixed_dictionaries(
    {},
    optional={
        "v": st.sampled_from([1, 2, 0, "1", None, True, 1.0]),
        "type": st.sampled_from(["snapshot", "subscribe", "control", "result", "error", "x", 3]),
        "interval_ms": json_values,
        "verb": json_values,
        "args": json_values,
        "id": json_values,
        "data": json_values,
        "ok": json_values,
        "error": json_values,
    },
).map(lambda d: json.dumps(d).encode())


@settings(max_examples=300, deadline=None)
@given(role=st.sampled_from(["server", "client"]),
       chunks=st.lists(st.binary(max_size=200) | near_messages | st.just(b"\n"), max_size=20))
def test_random_bytes_never_raise(role, chunks):
    conn = p.Connection(role, max_line=256)
    for chunk in chunks:
        for event in conn.receive_data(chunk):
            assert isinstance(event, (p.ProtocolError, p.SnapshotRequest, p.SubscribeRequest, p.ControlRequest,
                                      p.Snapshot, p.Result, p.Error))
        assert conn.buffered <= 256
    conn.receive_data(b"")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_single_line_decodes_to_an_event(line):
    event = p.decode_line(line, p._REQUEST_TYPES)
    assert event is not None


def test_deep_nesting_does_not_raise():
    conn = p.Connection("server")
    [event] = conn.receive_data(b'{"v":1,"type":"control","verb":"x","args":' + b"[" * 100_000 + b"\n")
    assert isinstance(event, p.ProtocolError)
