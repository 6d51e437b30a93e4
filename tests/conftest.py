"""Shared test fixtures: where the read-only reference data in ../shared lives."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
DRIVEMOE_REFERENCE = SHARED / "drivemoe_reference"
BENCH2DRIVE_SHARED = SHARED / "bench2drive"


def require_shared(path: Path) -> Path:
    """Skip the test, saying why, when the shared reference data is not beside the checkout."""
    if not path.exists():
        pytest.skip(f"reference data not found at {path} (CI lays ../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def drivemoe_reference() -> Path:
    return require_shared(DRIVEMOE_REFERENCE)


@pytest.fixture(scope="session")
def bench2drive_shared() -> Path:
    return require_shared(BENCH2DRIVE_SHARED)


def pytest_configure(config: pytest.Config) -> None:
    # The tiny test models are far too small to gain from intra-op threads; on two cores extra
    # threads only thrash. Tests that need more threads set them themselves.
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
    os.environ.setdefault("DRIVEMOE_THREADS", "1")  # what `drivemoe` sub-commands called in-process use
