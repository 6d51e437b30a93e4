"""Test double of leaderboard.envs.sensor_interface: a queue of ready-made input_data dicts."""
from __future__ import annotations

from collections import deque


class SensorInterface:
    """`get_data(frame)` returns the next queued input_data (id -> (frame, data)); tests `put` them."""

    def __init__(self) -> None:
        self._queue: deque[dict] = deque()

    def put(self, input_data: dict) -> None:
        self._queue.append(input_data)

    def get_data(self, frame: int) -> dict:
        if not self._queue:
            raise RuntimeError(f"no sensor data queued for frame {frame} (upstream raises after a timeout)")
        return self._queue.popleft()
