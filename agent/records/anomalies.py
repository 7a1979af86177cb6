"""The vocabulary of ``anomaly`` entries (Art. 20 (1)-(2)): their kinds and the key
that tells one anomaly from another.

The device's story (agent.offload.story) finds anomalies; the registry records
them and the reports count them. Both read the kinds from here, so a report
never depends on how an anomaly was found.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

MISSING_CLIP_NUMBERS = "missing_clip_numbers"
TIME_GAP = "time_gap"
CLOCK_OFFSET = "clock_offset"
FUTURE_DATED = "future_dated"
UNASSIGNED_DEVICE = "unassigned_device"
OVERDUE_DEVICE = "overdue_device"
UNDECODABLE = "undecodable"
REFUSED_FILE = "refused_file"


def key_of(body: Mapping[str, Any]) -> str:
    """Hex SHA-256 of an anomaly body without its wording (``detail``) and officer:
    the same anomaly found again on a later docking is not recorded twice."""
    stable = {k: v for k, v in body.items() if k not in ("detail", "officer")}
    return hashlib.sha256(
        json.dumps(stable, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()
    ).hexdigest()
