"""Shared fixtures. Real MovieLens data is read from ``$MARL_TWO_TOWER_DATA`` (default
``../shared/data`` beside the repository) and never committed; tests that need it
skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("MARL_TWO_TOWER_DATA", REPO.parent / "shared" / "data"))

torch.set_num_threads(1)


def shared_dataset_dir(name: str) -> Path:
    """Path of a shared MovieLens folder, or skip the test when it is missing."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} not present (set MARL_TWO_TOWER_DATA)")
    return path


@pytest.fixture
def ml100k_dir() -> Path:
    return shared_dataset_dir("ml-100k")


@pytest.fixture
def ml1m_ncf_dir() -> Path:
    return shared_dataset_dir("ml-1m-ncf")


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    """After the run: how many tests skipped for want of the real MovieLens data, and how
    to run them (they are part of the suite, not optional extras)."""
    skipped = [r for r in terminalreporter.stats.get("skipped", [])
               if "MARL_TWO_TOWER_DATA" in str(getattr(r, "longrepr", ""))]
    if skipped:
        terminalreporter.write_line(
            f"{len(skipped)} real-data test(s) skipped: no MovieLens folder under {SHARED_DATA}. "
            "Run them with: MARL_TWO_TOWER_DATA=/path/to/data make test  (a folder holding "
            "ml-100k/, ml-1m-ncf/, ml-1m-ordered/, ml-1m-partial/; README.md, 'Tests').")
