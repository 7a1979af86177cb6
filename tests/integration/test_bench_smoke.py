"""``python -m bench --quick`` runs to the end and prints every ratio line.

Only that: the figures themselves are reported by the benchmark and never
asserted here (a loaded CI machine must not fail a test for being slow).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Each benchmark row: its name, then somewhere on the line a ratio like "1.07x".
ROWS = (
    "ingest 64 MiB (4 x 16 MiB), settled",
    "ingest 64 MiB (4 x 16 MiB), pre-touched",
    "digest 64 MiB",
    "durable appends",
    "batched appends",
    "ledger verify, 20,000 entries",
    "inclusion proof, 20,000 entries",
    "peak RSS, ingest one 256 MiB file",
    "upload 64 MiB to `evidock receive` (TLS)",
    "dock peak RSS, 2 GiB queued",
    "upload 64 MiB via emqx_ft stand-in to receipt service (TLS)",
    "upload 64 MiB via emqx_ft stand-in, vs mosquitto direct",
    "EMQX dock peak RSS, 2 GiB queued",
)
RATIO = re.compile(r"\s\d+\.\d+x\s")


@pytest.mark.slow
def test_quick_benchmarks_run_and_print_ratios(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for name in ROWS:
        row = [line for line in lines if line.startswith(name)]
        assert len(row) == 1, f"no row {name!r} in:\n{proc.stdout}"
        assert RATIO.search(row[0] + " "), f"no ratio on the {name!r} row: {row[0]}"
        assert row[0].rstrip().endswith(("PASS", "MISS", "-")), row[0]
    assert "ledger build, 20,000 entries" in proc.stdout
    assert "ERROR" not in proc.stdout
