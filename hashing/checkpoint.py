"""Signed checkpoints: C2SP tlog-checkpoint bodies in signed-note envelopes.

Body (c2sp.org/tlog-checkpoint): the origin line, the tree size in decimal, the
standard-base64 root hash, then optional extension lines, each ending in a
newline. The signer keeps its own record of the last tree head it signed, next
to its key, and refuses to sign a smaller tree or a different root for a size
it already signed: a dock cannot be made to fork or roll back its own history,
even if its ledger database is replaced by an older copy.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hashing._fsutil import write_atomic
from hashing.errors import ForkError, InputError, ProofError
from hashing.merkle import HASH_SIZE, verify_consistency
from hashing.note import NoteSigner, NoteVerifier, OpenedNote, check_key_name, open_note, sign_note


@dataclass(frozen=True)
class Checkpoint:
    """A tree head as c2sp.org/tlog-checkpoint states it: origin, size, root, extensions.

    ``root`` is the RFC 9162 §2.1.1 MTH over the first ``size`` ledger entries. A
    Checkpoint alone proves nothing; ``SignedCheckpoint.open`` checks its note.
    """

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def body(self) -> str:
        """The checkpoint body (c2sp.org/tlog-checkpoint), every line ending in a newline.

        These are the exact bytes a signed note signs, so the line order and the
        decimal and base64 spellings are fixed by the spec, not by taste.
        """
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root).decode(),
            *self.extensions,
        ]
        return "".join(f"{line}\n" for line in lines)

    @property
    def root_b64(self) -> str:
        """The root in standard base64, as the body's third line and the proof JSON spell it."""
        return base64.b64encode(self.root).decode()

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        """Parse a checkpoint body; raises InputError if it is not one."""
        if not body.endswith("\n"):
            raise InputError("checkpoint body must end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3:
            raise InputError("checkpoint body needs origin, size and root lines")
        origin, size_text, root_text, *extensions = lines
        if not origin:
            raise InputError("checkpoint origin is empty")
        if not re.fullmatch(r"0|[1-9][0-9]{0,18}", size_text):
            raise InputError(f"checkpoint size {size_text!r} is not a decimal number")
        try:
            root = base64.b64decode(root_text, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InputError("checkpoint root is not standard base64") from e
        if len(root) != HASH_SIZE or base64.b64encode(root).decode() != root_text:
            raise InputError("checkpoint root is not a base64 SHA-256 hash")
        if any(not line for line in extensions):
            raise InputError("checkpoint extension lines must not be empty")
        return cls(origin, int(size_text), root, tuple(extensions))


@dataclass(frozen=True)
class SignedCheckpoint:
    """A checkpoint together with the signed-note text it came in.

    The note is kept byte for byte, because the signatures cover those bytes:
    bundles and the receiver pass it on as published, never re-encoded.
    From ``open`` it is verified; from the ledger's own table
    (``Ledger.latest_checkpoint``) it is only parsed.
    """

    checkpoint: Checkpoint
    note: str  # the exact signed-note text, as published

    @classmethod
    def open(
        cls, note: str | bytes, verifiers: list[NoteVerifier]
    ) -> tuple[SignedCheckpoint, OpenedNote]:
        """Verify the note with the given keys and parse its body (InputError, SignatureError)."""
        opened = open_note(note, verifiers)
        text = note.decode() if isinstance(note, bytes) else note
        return cls(Checkpoint.parse(opened.text), text), opened


def default_origin(station_id: str) -> str:
    """The origin of a station that names none: ``evidock/<station id>``.

    The origin is also the station key's name, so it must be a valid signed-note
    key name; raises InputError if it is not.
    """
    origin = f"evidock/{station_id}"
    check_key_name(origin)
    return origin


class CheckpointSigner:
    """Signs tree heads, refusing forks and rollbacks.

    ``state_path`` records the last signed (size, root); it is written before
    the signed note is returned, so no signature ever escapes without it.
    """

    def __init__(self, signer: NoteSigner, origin: str, state_path: Path) -> None:
        self.signer = signer
        self.origin = origin
        self.state_path = state_path

    def last_signed(self) -> tuple[int, bytes] | None:
        """The (size, root) this signer last signed, or None before its first signature.

        Raises InputError if the state file cannot be read or is for another origin:
        signing without it could sign a rolled-back or forked ledger.
        """
        try:
            state = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise InputError(f"{self.state_path}: unreadable signer state: {e}") from e
        if state.get("origin") != self.origin:
            raise InputError(
                f"{self.state_path}: signer state is for origin {state.get('origin')!r}"
            )
        return int(state["size"]), base64.b64decode(state["root"])

    def sign(
        self, size: int, root: bytes, prove: Callable[[int, int], list[bytes]]
    ) -> SignedCheckpoint:
        """Sign the tree head (size, root).

        ``prove(old, new)`` must return the RFC 9162 consistency proof between
        two sizes of the tree being signed; the signer checks the new head
        extends the last one it signed. Raises ForkError on a fork or rollback.
        """
        last = self.last_signed()
        if last is not None:
            last_size, last_root = last
            if size < last_size:
                raise ForkError(
                    f"refusing to sign size {size}: size {last_size} was already signed "
                    "(the ledger was rolled back or replaced)"
                )
            if size == last_size and root != last_root:
                raise ForkError(f"refusing to sign a second, different root for size {size} (fork)")
            try:
                verify_consistency(last_size, size, last_root, root, prove(last_size, size))
            except ProofError as e:
                raise ForkError(
                    f"refusing to sign size {size}: it does not extend the signed size {last_size} ({e})"
                ) from e
        checkpoint = Checkpoint(self.origin, size, root)
        note = sign_note(checkpoint.body(), [self.signer])
        state = {"origin": self.origin, "size": size, "root": base64.b64encode(root).decode()}
        write_atomic(self.state_path, json.dumps(state).encode())
        return SignedCheckpoint(checkpoint, note)
