"""The live ego-state history: a 20 Hz queue of world-frame records -> the model's 10 Hz history.

Values, units, frames and signs are defined once in model/ego_state.py (EgoWorldRecord and
ego_history_from_world_records); this module only chooses *which* ticks form the history:

- `current_10hz` (preset default): the newest step is the current tick, then every 2nd tick back
  (t-8, t-6, t-4, t-2, t for 5 steps), matching the 10 Hz training windows that end at the sample.
- `official_offset` (preset official, the authors' agent): an 11-long queue, entries 1, 3, 5, 7, 9
  (t-9, t-7, t-5, t-3, t-1): the current tick is left out, while the ego frame for the rotation is
  still the current tick's pose.

Before enough ticks exist, the oldest record is repeated (the car stands still at the start).

`wrap_theta=False` (preset official) keeps θ = compass_step − compass_current unwrapped, as the
authors' agent (drivemoe_carla_agent.py:313) and their training windows compute it: a 2π jump when
the heading crosses north (normalised about ±30, against the statistics' p01–p99 of −0.19…0.23).
"""
from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np

from model.ego_state import EgoStateHistory, EgoWorldRecord, ego_history_from_world_records

TICKS_PER_STEP = 2  # 20 Hz simulation, 10 Hz history


class EgoHistoryBuffer:
    """Collects one EgoWorldRecord per tick and builds the history the policy needs."""

    def __init__(self, num_steps: int = 5, mode: str = "current_10hz", wrap_theta: bool = True) -> None:
        if mode not in ("current_10hz", "official_offset"):
            raise ValueError(f"unknown history mode {mode!r}; expected 'current_10hz' or 'official_offset'")
        if num_steps < 1:
            raise ValueError(f"history needs at least one step, got {num_steps}")
        self.num_steps = num_steps
        self.mode = mode
        self.wrap_theta = wrap_theta
        # ticks back from the current one (0 = current), oldest first
        if mode == "current_10hz":
            self.offsets = tuple(TICKS_PER_STEP * k for k in range(num_steps - 1, -1, -1))
        else:
            self.offsets = tuple(TICKS_PER_STEP * k + 1 for k in range(num_steps - 1, -1, -1))
        self._queue: deque[EgoWorldRecord] = deque(maxlen=max(self.offsets) + 2)

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, record: EgoWorldRecord) -> None:
        """Record the current tick (call once per tick, before `history`)."""
        self._queue.append(record)

    def selected_records(self) -> list[EgoWorldRecord]:
        """The records forming the history, oldest first (padded with the oldest available)."""
        if not self._queue:
            raise ValueError("ego history is empty: push the current tick first")
        newest = len(self._queue) - 1
        return [self._queue[max(newest - offset, 0)] for offset in self.offsets]

    def history(self) -> EgoStateHistory:
        """The model input for the current tick, in the current tick's ego frame."""
        records = self.selected_records()
        history = ego_history_from_world_records(records, reference=self._queue[-1])
        if self.wrap_theta:
            return history
        current = self._queue[-1].compass
        return dataclasses.replace(history, theta=np.array([r.compass - current for r in records], dtype=np.float64))
