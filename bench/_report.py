"""Result rows and the table they are printed as."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

MIB = 1 << 20
GIB = 1 << 30


@dataclass(frozen=True)
class Row:
    """One figure, its same-run baseline, their ratio and the target (if any).

    ``passed`` is None when the issue sets no target for the figure.
    """

    name: str
    figure: str
    baseline: str
    ratio: float | None
    target: str = "-"
    passed: bool | None = None

    @property
    def verdict(self) -> str:
        if self.passed is None:
            return "-"
        return "PASS" if self.passed else "MISS"


@dataclass
class Section:
    """What one benchmark produced: table rows plus notes printed under the table."""

    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def error_row(name: str, error: BaseException) -> Row:
    return Row(name, f"ERROR: {type(error).__name__}", str(error)[:60], None, "-", None)


def ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def table(rows: Sequence[Row]) -> str:
    head = ("benchmark", "figure", "baseline (same run)", "ratio", "target", "result")
    cells = [head] + [
        (r.name, r.figure, r.baseline, ratio_text(r.ratio), r.target, r.verdict) for r in rows
    ]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cells[0], widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines.extend(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells[1:]
    )
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0-100) of a non-empty sample."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def mb_per_s(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def size_text(size: int) -> str:
    if size >= GIB and size % GIB == 0:
        return f"{size // GIB} GiB"
    if size % MIB == 0:
        return f"{size // MIB} MiB"
    return f"{size} B"


def seconds(value: float) -> str:
    """Seconds to three significant figures: 0.0421 s, 2.71 s, 44.2 s, 126 s."""
    return f"{value:.3g} s" if value < 1000 else f"{value:.0f} s"


def seconds_list(values: Sequence[float]) -> str:
    return " ".join(f"{v:.2f}" for v in values)
