"""Route planner: pops passed points within min_distance, targets the next one, survives the route end."""
from __future__ import annotations

import numpy as np
import pytest

from agent.runtime.route_planner import RoutePlanner


def straight(n: int, spacing: float) -> np.ndarray:
    return np.stack([np.arange(n) * spacing, np.zeros(n)], axis=1)


def test_target_advances_with_the_car_on_a_dense_route():
    planner = RoutePlanner(straight(200, 1.0), 7.5, 25.0)
    assert planner.step(np.array([0.0, 0.0]))[0] == pytest.approx(8.0)  # head = 7 (7 m away), target 8
    assert planner.step(np.array([50.0, 0.5]))[0] == pytest.approx(8.0)  # beyond the 25 m look-ahead: no jump
    for x in np.arange(0.0, 60.0, 1.0):
        target = planner.step(np.array([x, 0.0]))
    assert target[0] == pytest.approx(59.0 + 8.0)


def test_sparse_route_targets_the_next_far_point():
    planner = RoutePlanner(straight(5, 50.0), 7.5, 25.0)
    assert planner.step(np.array([0.0, 0.0]))[0] == pytest.approx(50.0)
    assert planner.step(np.array([30.0, 0.0]))[0] == pytest.approx(50.0)
    assert planner.step(np.array([44.0, 0.0]))[0] == pytest.approx(100.0)  # within 7.5 m of 50: popped


def test_end_of_route_keeps_the_last_point():
    planner = RoutePlanner(straight(10, 1.0), 7.5, 25.0)
    for x in np.arange(0.0, 30.0, 0.5):
        target = planner.step(np.array([x, 0.0]))
    assert target[0] == pytest.approx(9.0)
    assert planner.remaining == 2
    single = RoutePlanner(np.array([[3.0, 4.0]]), 7.5, 25.0)
    assert np.allclose(single.step(np.array([0.0, 0.0])), [3.0, 4.0])


def test_bad_route_is_rejected_with_its_shape():
    with pytest.raises(ValueError, match="shape"):
        RoutePlanner(np.zeros((3, 3)), 7.5, 25.0)
