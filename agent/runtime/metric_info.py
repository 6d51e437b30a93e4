"""Bench2Drive's comfort-metric input: SAVE_PATH/<save_name>/metric_info.json.

The format is the one Bench2Drive's tools read: a JSON object mapping the step index (as a string)
to the dict `AutonomousAgent.get_metric_info()` returns (acceleration, angular_velocity,
forward_vector, right_vector, location, rotation). Upstream agents rewrite the whole growing file
every tick; here each step is serialised once, and the file is rewritten atomically only every
`every` steps and at close, so a crash loses at most `every` steps and readers never see half a file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from bench2drive_eval.jsonio import write_text_atomic


class MetricInfoRecorder:
    """Buffers per-step metric info and writes metric_info.json at checkpoints and on close."""

    def __init__(self, path: str | os.PathLike, every: int = 200) -> None:
        if every < 1:
            raise ValueError(f"metric_info flush interval must be >= 1, got {every}")
        self.path = Path(path)
        self.every = every
        self._entries: list[str] = []  # '"<step>": {...}' pieces, serialised once
        self._unflushed = 0

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, step: int, info: dict[str, Any]) -> None:
        self._entries.append(f"{json.dumps(str(step))}: {json.dumps(info)}")
        self._unflushed += 1
        if self._unflushed >= self.every:
            self.flush()

    def flush(self) -> None:
        write_text_atomic(self.path, "{" + ", ".join(self._entries) + "}")
        self._unflushed = 0

    def close(self) -> None:
        if self._unflushed or not self.path.exists():
            self.flush()
