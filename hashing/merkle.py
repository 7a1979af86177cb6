"""RFC 9162 §2.1 Merkle trees: hashes, proofs and their verification.

Pure functions over hashes. Where a proof needs the hash of a subtree, it asks
a ``SubtreeHasher``: the ledger answers from its stored interior nodes (so a
proof never rescans the log), tests answer from a list in memory.

Terms follow RFC 9162: ``MTH(D[n])`` is the tree head over n leaves; a
*complete* subtree covers ``2**level`` leaves starting at a multiple of
``2**level``, and is what the ledger stores (as C2SP tlog-tiles logs do).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from hashing.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = SHA-256() (RFC 9162 §2.1.1)


def leaf_hash(data: bytes | memoryview) -> bytes:
    """MTH({d0}) = SHA-256(0x00 || d0) (RFC 9162 §2.1.1)."""
    h = hashlib.sha256(b"\x00")
    h.update(data)
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right) (RFC 9162 §2.1.1)."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def largest_power_of_two_below(n: int) -> int:
    """k, the largest power of two with k < n (n > 1), as RFC 9162 §2.1.1 splits trees."""
    if n < 2:
        raise ValueError("a split needs at least two leaves")
    return 1 << ((n - 1).bit_length() - 1)


# A complete-subtree lookup: (level, index) -> hash of leaves
# [index * 2**level, (index + 1) * 2**level).
NodeLookup = Callable[[int, int], bytes]


class SubtreeHasher:
    """Hashes of arbitrary subtrees ``MTH(D[start:end])`` from stored complete subtrees.

    Every subtree that RFC 9162's PATH and SUBPROOF recursions ask for starts at a
    multiple of the largest power of two below its size, so it splits into at
    most log2(n) stored complete subtrees.
    """

    def __init__(self, lookup: NodeLookup) -> None:
        self._lookup = lookup

    def subtree(self, start: int, end: int) -> bytes:
        """MTH(D[start:end]) (RFC 9162 §2.1.1).

        A complete subtree is one lookup; any other range splits at the largest power
        of two below its size. Raises ValueError for an empty range, and whatever the
        lookup raises for a node it does not have.
        """
        n = end - start
        if n <= 0:
            raise ValueError(f"empty subtree [{start}, {end})")
        if n & (n - 1) == 0 and start % n == 0:
            return self._lookup(n.bit_length() - 1, start // n)
        k = largest_power_of_two_below(n)
        return node_hash(self.subtree(start, start + k), self.subtree(start + k, end))

    def root(self, size: int) -> bytes:
        """MTH(D[0:size]); the empty-tree hash for size 0 (RFC 9162 §2.1.1)."""
        return EMPTY_ROOT if size == 0 else self.subtree(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(m, D[n]) of RFC 9162 §2.1.3.1, leaf-side hash first."""
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")
        path: list[bytes] = []
        start, end, m = 0, size, index
        while end - start > 1:
            k = largest_power_of_two_below(end - start)
            if m < k:
                path.append(self.subtree(start + k, end))
                end = start + k
            else:
                path.append(self.subtree(start, start + k))
                start, m = start + k, m - k
        path.reverse()
        return path

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(m, D[n]) of RFC 9162 §2.1.4.1 (empty for m == n and for m == 0)."""
        if not 0 <= old_size <= new_size:
            raise ValueError(f"no consistency proof from size {old_size} to {new_size}")
        if old_size in (0, new_size):
            return []
        proof: list[bytes] = []
        start, end, m, complete = 0, new_size, old_size, True
        while m != end - start:
            k = largest_power_of_two_below(end - start)
            if m <= k:
                proof.append(self.subtree(start + k, end))
                end = start + k
            else:
                proof.append(self.subtree(start, start + k))
                start, m, complete = start + k, m - k, False
        if not complete:
            proof.append(self.subtree(start, end))
        proof.reverse()
        return proof


def hasher_over_leaves(leaf_hashes: Sequence[bytes]) -> SubtreeHasher:
    """A SubtreeHasher over leaf hashes in memory (for bundles, tests and small trees)."""
    levels: list[list[bytes]] = [list(leaf_hashes)]
    while len(levels[-1]) > 1:
        below = levels[-1]
        levels.append([node_hash(below[i], below[i + 1]) for i in range(0, len(below) - 1, 2)])
    return SubtreeHasher(lambda level, index: levels[level][index])


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over leaf hashes held in memory (RFC 9162 §2.1.1), e.g. a file's chunk tree."""
    return hasher_over_leaves(leaf_hashes).root(len(leaf_hashes))


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """RFC 9162 §2.1.3.2. Raises ProofError unless ``leaf`` is at ``index`` under ``root``."""
    if root_from_inclusion(leaf, index, size, proof) != root:
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the tree head")


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1-5)."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        _check_hash(p)
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    return r


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2. Raises ProofError unless the old tree is a prefix of the new."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"tree shrank from {old_size} to {new_size} leaves")
    if old_size == 0 and old_root != EMPTY_ROOT:
        # MTH({}) is fixed (RFC 9162 §2.1.1): any other head for size 0 is not a tree head.
        raise ProofError("the tree head for size 0 must be SHA-256 of the empty string")
    if old_size == new_size:
        if proof:
            raise ProofError("consistency proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different tree heads for size {old_size}")
        return
    if old_size == 0:
        if proof:
            raise ProofError("consistency proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("consistency proof is empty")
    path = list(proof)
    for p in path:
        _check_hash(p)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than needed")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than needed")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old tree head (size {old_size})")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new tree head (size {new_size})")


def _check_hash(h: bytes) -> None:
    if len(h) != HASH_SIZE:
        raise ProofError(f"proof hash has {len(h)} bytes, not {HASH_SIZE}")


class CompactRange:
    """The right edge of a growing tree: one hash per set bit of its size.

    Folding leaves through it yields every complete subtree in the order the
    ledger stores them (by end leaf, then level), so a verifier can compare the
    stored tree with the leaves in one pass and O(log n) memory.
    """

    def __init__(self) -> None:
        self.size = 0
        self._stack: list[tuple[int, bytes]] = []  # (level, hash), highest level first

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf hash; return the complete subtrees it closes as (level, index, hash)."""
        closed = [(0, self.size, leaf)]
        level, h = 0, leaf
        while self._stack and self._stack[-1][0] == level:
            _, left = self._stack.pop()
            h = node_hash(left, h)
            level += 1
            closed.append((level, self.size >> level, h))
        self._stack.append((level, h))
        self.size += 1
        return closed

    def root(self) -> bytes:
        """MTH of the leaves folded in so far (RFC 9162 §2.1.1), from the right edge alone."""
        if not self._stack:
            return EMPTY_ROOT
        r = self._stack[-1][1]
        for _, h in reversed(self._stack[:-1]):
            r = node_hash(h, r)
        return r

    def extend(self, leaves: Iterable[bytes]) -> None:
        """Fold leaf hashes in, in order, dropping the subtrees they close (for the root alone)."""
        for leaf in leaves:
            self.append(leaf)
