"""Route planner: the far target point (world frame) the model is conditioned on.

The route is a polyline of world points (the leaderboard's plan, converted from GPS by
agent/runtime/localization.py). Each step, the points passed so far are dropped: among the points that
lie within `max_distance` of route length from the current head, the one that is within
`min_distance` of the car and farthest from it (the TransFuser/TCP rule the authors use with
7.5 m / 25 m) becomes the new head. The target is the point after the head. Two points are always
kept, so at the end of the route the target is the last point and never disappears.
"""
from __future__ import annotations

import numpy as np


class RoutePlanner:
    """Tracks progress along a route and returns the next target point."""

    def __init__(self, points_xy: np.ndarray, min_distance: float, max_distance: float) -> None:
        points = np.asarray(points_xy, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or points.shape[0] < 1:
            raise ValueError(f"route must be an [N, 2] array of world points with N >= 1, got shape {points.shape}")
        if not np.all(np.isfinite(points)):
            raise ValueError("route contains NaN or inf points")
        self.points = points
        self.min_distance = float(min_distance)
        self.max_distance = float(max_distance)
        self.head = 0
        segment = np.linalg.norm(np.diff(points, axis=0), axis=1)
        self._arc = np.concatenate([[0.0], np.cumsum(segment)])  # route length at each point

    @property
    def remaining(self) -> int:
        """Points from the head to the end (>= 1)."""
        return self.points.shape[0] - self.head

    def target(self) -> np.ndarray:
        """The current target point (world x, y), without updating progress."""
        return self.points[min(self.head + 1, self.points.shape[0] - 1)].copy()

    def step(self, position_xy: np.ndarray) -> np.ndarray:
        """Advance along the route from the car's world position and return the target point."""
        last_allowed_head = max(self.points.shape[0] - 2, 0)
        if self.head < last_allowed_head:
            start = self.head + 1
            # candidates: points whose route length from the head is within max_distance (the first
            # candidate is always looked at, as the cumulative distance is checked before adding)
            stop = int(np.searchsorted(self._arc, self._arc[self.head] + self.max_distance, side="right"))
            stop = min(max(stop + 1, start + 1), self.points.shape[0])
            candidates = self.points[start:stop]
            dx = candidates[:, 0] - float(position_xy[0])
            dy = candidates[:, 1] - float(position_xy[1])
            squared = dx * dx + dy * dy
            within = squared <= self.min_distance * self.min_distance
            if within.any():
                best = int(np.argmax(np.where(within, squared, -1.0)))
                self.head = min(start + best, last_allowed_head)
        return self.target()

    def relocate(self, position_xy: np.ndarray, search_length: float) -> np.ndarray:
        """Find the car's place again after its position jumped (GNSS gap, confirmed jump).

        The head becomes the start of the route segment nearest to the car among the segments that start
        within `search_length` metres of route length ahead of the head (it never moves back). Returns the
        target point."""
        last_allowed_head = max(self.points.shape[0] - 2, 0)
        if self.head >= last_allowed_head:
            return self.target()
        stop = int(np.searchsorted(self._arc, self._arc[self.head] + float(search_length), side="right"))
        stop = min(max(stop, self.head + 1), last_allowed_head + 1)
        starts, ends = self.points[self.head:stop], self.points[self.head + 1:stop + 1]
        direction = ends - starts
        length2 = np.maximum(np.einsum("ij,ij->i", direction, direction), 1e-12)
        along = np.clip(np.einsum("ij,ij->i", np.asarray(position_xy, dtype=np.float64) - starts, direction) / length2, 0.0, 1.0)
        distance = np.linalg.norm(starts + along[:, None] * direction - position_xy, axis=1)
        self.head = min(self.head + int(np.argmin(distance)), last_allowed_head)
        return self.target()
