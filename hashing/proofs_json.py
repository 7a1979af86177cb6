"""The JSON shapes of proofs, shared by `evidock prove`, bundles and verifiers.

Hashes are standard base64, as in C2SP checkpoints:
``{"index", "tree_size", "root", "hashes"}`` for inclusion (RFC 9162 §2.1.3) and
``{"old_size", "new_size", "old_root", "new_root", "hashes"}`` for consistency
(RFC 9162 §2.1.4).
"""

from __future__ import annotations

import base64
from typing import Any


def b64(h: bytes) -> str:
    """Standard base64 of a hash, as C2SP checkpoints spell hashes."""
    return base64.b64encode(h).decode()


def inclusion_json(index: int, size: int, root: bytes, hashes: list[bytes]) -> dict[str, Any]:
    """An RFC 9162 §2.1.3 inclusion proof, as `evidock prove` prints it and bundles carry it."""
    return {
        "index": index,
        "tree_size": size,
        "root": b64(root),
        "hashes": [b64(h) for h in hashes],
    }


def consistency_json(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, hashes: list[bytes]
) -> dict[str, Any]:
    """An RFC 9162 §2.1.4 consistency proof, as `evidock prove` prints it and bundles carry it."""
    return {
        "old_size": old_size,
        "new_size": new_size,
        "old_root": b64(old_root),
        "new_root": b64(new_root),
        "hashes": [b64(h) for h in hashes],
    }
