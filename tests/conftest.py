"""Shared test settings: offline, deterministic, quiet."""
from __future__ import annotations

import os
from pathlib import Path

# Set before any test imports albumentations/timm: both try the network otherwise.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

DATA_DIR = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of the fixture files copied from the reference material (tests never read ../shared)."""
    return DATA_DIR
