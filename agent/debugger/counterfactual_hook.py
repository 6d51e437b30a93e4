"""The agent stack's counterfactual hook: every N inferences (and optionally only in a frame range),
re-run the policy under every other routing choice (model/counterfactual.py) and return the trace
line's `counterfactual` object. It never raises: a failure is logged once per kind and the line
goes without it, so a live route is never ended by the debugger.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

LOGGER = logging.getLogger(__name__)


class CounterfactualHook:
    def __init__(self, policy: Any, every: int = 1, wanted: Callable[[], bool] | None = None) -> None:
        if every < 1:
            raise ValueError(f"counterfactual interval must be >= 1 inference, got {every}")
        self.policy = policy
        self.every = every
        self.wanted = wanted  # extra condition checked at call time (the replay's frame range)
        self.failures: dict[str, int] = {}
        self.runs = 0

    def __call__(self, observation: Any, prediction: Any, inference: int) -> dict[str, Any] | None:
        if inference % self.every != 0 or (self.wanted is not None and not self.wanted()):
            return None
        from model.counterfactual import counterfactual_routing

        started = time.perf_counter()
        try:
            result = counterfactual_routing(self.policy, observation)
        except Exception as error:  # noqa: BLE001 - the debugger must never end a route
            kind = type(error).__name__
            if kind not in self.failures:
                LOGGER.warning("counterfactual routing skipped (%s: %s); further %s failures are not logged", kind, error, kind)
            self.failures[kind] = self.failures.get(kind, 0) + 1
            return None
        self.runs += 1
        record = result.as_record()
        record["ms"] = (time.perf_counter() - started) * 1000.0
        return record
