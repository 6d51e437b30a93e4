"""Ego history: which ticks form the 10 Hz history per mode, and the frames/signs of each value."""
from __future__ import annotations

import math

import pytest

from agent.runtime.ego_history import EgoHistoryBuffer
from model.ego_state import EgoWorldRecord, ego_history_from_world_records


def record(tick: int, compass: float = math.pi / 2, x: float | None = None) -> EgoWorldRecord:
    # speed encodes the tick so the chosen ticks can be read back
    return EgoWorldRecord(
        x=float(tick) if x is None else x, y=0.0, compass=compass, speed=float(tick),
        acceleration=(0.1 * tick, 0.0, 9.8), angular_velocity=(0.0, 0.0, 0.01 * tick), command_far=(100.0, 0.0),
    )


def test_default_history_ends_at_the_current_tick_with_10hz_spacing():
    buffer = EgoHistoryBuffer(5, "current_10hz")
    for tick in range(20):
        buffer.push(record(tick))
    history = buffer.history()
    assert history.speed.tolist() == [11.0, 13.0, 15.0, 17.0, 19.0]
    assert history.as_array().shape == (5, 10)


def test_official_history_is_queue_entries_1_3_5_7_9_without_the_current_tick():
    buffer = EgoHistoryBuffer(5, "official_offset")
    for tick in range(20):
        buffer.push(record(tick))
    history = buffer.history()
    assert history.speed.tolist() == [10.0, 12.0, 14.0, 16.0, 18.0]  # queue t-10..t=19, entries 1,3,...,9
    # the frame is still the current tick's pose: car at x=19 facing east, command at x=100 -> 81 m ahead
    assert history.command_far[-1] == pytest.approx([81.0, 0.0])


def test_short_queue_repeats_the_oldest_record():
    buffer = EgoHistoryBuffer(5, "current_10hz")
    buffer.push(record(0))
    buffer.push(record(1))
    buffer.push(record(2))
    assert buffer.history().speed.tolist() == [0.0, 0.0, 0.0, 0.0, 2.0]


def test_theta_and_command_signs():
    # current heading east (compass pi/2); an earlier step headed slightly north of east (smaller compass)
    earlier = EgoWorldRecord(0.0, 0.0, math.pi / 2 - 0.1, 5.0, (0, 0, 0), (0, 0, 0), (10.0, 5.0))
    current = EgoWorldRecord(1.0, 0.0, math.pi / 2, 5.0, (0, 0, 0), (0, 0, 0), (10.0, 5.0))
    history = ego_history_from_world_records([earlier, current])
    assert history.theta.tolist() == pytest.approx([-0.1, 0.0])  # counter-clockwise of current -> negative
    # facing east, world +y (south) is to the right: command (10, 5) is 9 m ahead, 5 m right
    assert history.command_far[1] == pytest.approx([9.0, 5.0])
    wrapped = ego_history_from_world_records(
        [EgoWorldRecord(0, 0, 6.2, 0, (0, 0, 0), (0, 0, 0), (0, 0)), EgoWorldRecord(0, 0, 0.05, 0, (0, 0, 0), (0, 0, 0), (0, 0))]
    )
    assert wrapped.theta[0] == pytest.approx(6.2 - 0.05 - 2 * math.pi)  # wrapped across north


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="history mode"):
        EgoHistoryBuffer(5, "future")


def test_theta_unwrapped_for_the_official_preset_jumps_by_two_pi_at_north():
    wrapped, unwrapped = EgoHistoryBuffer(5, "official_offset"), EgoHistoryBuffer(5, "official_offset", wrap_theta=False)
    for tick in range(12):  # heading sweeps clockwise across north (compass 2pi -> 0)
        compass = (2 * math.pi - 0.05 + 0.01 * tick) % (2 * math.pi)
        wrapped.push(record(tick, compass=compass))
        unwrapped.push(record(tick, compass=compass))
    current = (2 * math.pi - 0.05 + 0.11) % (2 * math.pi)
    steps = [(2 * math.pi - 0.05 + 0.01 * t) % (2 * math.pi) for t in (2, 4, 6, 8, 10)]
    assert unwrapped.history().theta.tolist() == pytest.approx([s - current for s in steps])
    assert unwrapped.history().theta[0] == pytest.approx(2 * math.pi - 0.09)  # the authors' 2pi jump
    assert wrapped.history().theta.tolist() == pytest.approx([-0.09, -0.07, -0.05, -0.03, -0.01])
    assert unwrapped.history().command_far.tolist() == wrapped.history().command_far.tolist()
