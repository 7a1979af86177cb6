"""Fixtures for integration tests: a real station in a temporary folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration._support import Built, build_station


@pytest.fixture
def dock(tmp_path: Path) -> Iterator[Built]:
    """A fresh station 'dock-01' with four recordings ingested (two of them span 4 and 3 chunks of 1 MiB)
    and a checkpoint signed over them."""
    built = build_station(tmp_path / "home")
    yield built
    built.station.close()
