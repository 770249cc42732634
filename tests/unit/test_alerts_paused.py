"""Alerts and the operator's `pause`: a deliberate pause is not an outage, and resuming restarts the clocks."""

from __future__ import annotations

from ingestd.alerts import AlertConfig, AlertEngine
from tests.unit.test_alerts import T0, names, run, snap

CFG = AlertConfig(ws_down_for_s=60, no_data_s=300, clear_for_s=30,
                  disabled=frozenset({"NoDataWritten", "SinkWriteErrors", "HighErrorRate", "MemoryHigh", "HighLag",
                                      "SpoolFilling", "CpuHigh"}))


def paused(s: dict, paused: bool = True) -> dict:
    s["state"] = "paused" if paused else "running"
    return s


def test_a_long_pause_raises_neither_websocket_down_nor_no_data():
    engine = AlertEngine("binance", CFG)
    steps = [(T0 + t, snap(T0 + t, last_data=T0 + t)) for t in range(0, 10)]
    # Paused for an hour: connections "paused", nothing received since T0 + 9.
    steps += [(T0 + t, paused(snap(T0 + t, conns=["paused"], last_data=T0 + 9))) for t in range(10, 3600, 5)]
    assert names(run(engine, steps)) == []
    assert engine.active() == []


def test_the_same_silence_without_a_pause_raises_both():
    """The control for the test above: it is the pause, not the figures, that keeps them quiet."""
    engine = AlertEngine("binance", CFG)
    steps = [(T0 + t, snap(T0 + t, last_data=T0 + t)) for t in range(0, 10)]
    steps += [(T0 + t, snap(T0 + t, conns=["backoff"], last_data=T0 + 9)) for t in range(10, 3600, 5)]
    assert {n for n, state, _ in names(run(engine, steps))} == {"WebSocketDown", "NoDataReceived"}


def test_after_resume_the_venue_gets_the_full_durations_again():
    engine = AlertEngine("binance", CFG)
    steps = [(T0 + t, snap(T0 + t, last_data=T0 + t)) for t in range(0, 10)]
    steps += [(T0 + t, paused(snap(T0 + t, conns=["paused"], last_data=T0 + 9))) for t in range(10, 1000, 5)]
    run(engine, steps)
    # Resumed at T0+1000, but the venue does not answer: the clocks start at the resume.
    after = [(T0 + t, paused(snap(T0 + t, conns=["backoff"], last_data=T0 + 9), False)) for t in range(1000, 1400, 5)]
    got = names(run(engine, after))
    assert ("WebSocketDown", "firing", 1060) in got, got
    assert ("NoDataReceived", "firing", 1300) in got, got
    [no_data] = [a for a in engine.active() if a.name == "NoDataReceived"]
    assert "since the operator resumed" in no_data.message and no_data.since == T0 + 1000


def test_an_outage_already_firing_resolves_when_the_operator_pauses():
    engine = AlertEngine("binance", CFG)
    steps = [(T0 + t, snap(T0 + t, conns=["backoff"], last_data=T0)) for t in range(0, 100, 5)]
    steps += [(T0 + t, paused(snap(T0 + t, conns=["paused"], last_data=T0))) for t in range(100, 200, 5)]
    transitions = run(engine, steps)
    assert names(transitions) == [("WebSocketDown", "firing", 60), ("WebSocketDown", "resolved", 130)]
    assert "paused by operator" in transitions[-1].message
