"""C2SP signed notes with Ed25519 (c2sp.org/signed-note), as Go's
``golang.org/x/mod/sumdb/note`` reads and writes them.

A note is UTF-8 text ending in a newline, a blank line, then signature lines
``— <key name> <base64(key id || signature)>``. The key id is the first four
bytes of SHA-256(name || 0x0A || 0x01 || public key); a verifier key is written
``<name>+<hex key id>+<base64(0x01 || public key)>``. Signatures from keys the
reader does not know are ignored; a bad signature from a known key rejects the
whole note (signed-note §"Verifying").
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from hashing.errors import InputError, SignatureError, UnknownSignerError

ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # em dash and a space
MAX_SIGNATURES = 100  # Go's note.Open refuses more
MAX_NOTE_BYTES = 1_000_000


def check_key_name(name: str) -> None:
    """A key name is non-empty UTF-8 with no Unicode space and no '+' (signed-note)."""
    if not name or "+" in name or any(c.isspace() for c in name):
        raise InputError(f"invalid key name {name!r}: must be non-empty, no spaces, no '+'")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise InputError(f"invalid key name {name!r}: control characters")


def key_id(name: str, public_key: bytes) -> bytes:
    """The signed-note key id: the first 4 bytes of SHA-256(name || 0x0A || 0x01 || key).

    It lets a reader match a signature line to one of its keys without trying
    each; it is no proof of anything, the signature is.
    """
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{what}: not standard base64") from e


@dataclass(frozen=True)
class NoteVerifier:
    """A named Ed25519 public key, from or to its verifier-key text."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        """This key's 4-byte signed-note key id."""
        return key_id(self.name, self.public_key)

    @property
    def key_id_hex(self) -> str:
        """The key id as the 8 lowercase hex digits of the verifier-key text."""
        return self.key_id.hex()

    def __str__(self) -> str:
        return self.vkey

    @property
    def vkey(self) -> str:
        """The verifier-key text ``name+hexid+base64(0x01 || key)`` (signed-note), as pinned."""
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self.public_key).decode()
        return f"{self.name}+{self.key_id_hex}+{encoded}"

    @classmethod
    def parse(cls, vkey: str) -> NoteVerifier:
        """Parse ``name+hexid+base64key``; raises InputError if malformed or inconsistent."""
        # Split at the first two '+' only (Go's chop): standard base64 may hold '+'.
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise InputError(f"verifier key {vkey!r}: want name+keyid+key")
        name, hex_id, b64 = parts
        check_key_name(name)
        if not re.fullmatch(r"[0-9a-f]{8}", hex_id):
            raise InputError(f"verifier key {vkey!r}: key id must be 8 lowercase hex digits")
        raw = _b64decode(b64, "verifier key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise InputError(f"verifier key {vkey!r}: not an Ed25519 key")
        verifier = cls(name, raw[1:])
        if verifier.key_id_hex != hex_id:
            raise InputError(f"verifier key {vkey!r}: key id does not match the key")
        return verifier

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature over ``message``.

        False for a bad signature, never an exception: the caller decides what a
        failure means (open_note rejects the whole note).
        """
        try:
            Ed25519PublicKey.from_public_bytes(self.public_key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class NoteSigner:
    """A named Ed25519 private key. ``str()`` never shows the private part."""

    name: str
    _private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """A new random Ed25519 key named ``name``; InputError if that is no valid key name."""
        check_key_name(name)
        return cls(name, Ed25519PrivateKey.generate())

    @property
    def verifier(self) -> NoteVerifier:
        """The public half, under the same name."""
        public = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return NoteVerifier(self.name, public)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature over ``message``."""
        return self._private.sign(message)

    def private_text(self) -> str:
        """Go's note signer-key encoding: ``PRIVATE+KEY+name+hexid+base64(0x01||seed)``."""
        seed = self._private.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        encoded = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
        return f"PRIVATE+KEY+{self.name}+{self.verifier.key_id_hex}+{encoded}"

    @classmethod
    def parse(cls, text: str) -> NoteSigner:
        """Read Go's signer-key text, ``PRIVATE+KEY+name+hexid+base64(0x01 || seed)``.

        Raises InputError if it is malformed, not Ed25519, or its key id does not
        match the key (a damaged or hand-edited file).
        """
        parts = text.strip().split("+", 4)  # the base64 key may hold '+' (Go's chop)
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise InputError("signer key: want PRIVATE+KEY+name+keyid+key")
        name, hex_id, b64 = parts[2:]
        check_key_name(name)
        raw = _b64decode(b64, "signer key")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise InputError("signer key: not an Ed25519 key")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.verifier.key_id_hex != hex_id:
            raise InputError("signer key: key id does not match the key")
        return signer


@dataclass(frozen=True)
class NoteSignature:
    """One signature line of a note: key name, 4-byte key id and signature, not verified."""

    name: str
    key_id: bytes
    signature: bytes

    def line(self) -> str:
        """The line as signed-note writes it: em dash, name, base64(key id || signature)."""
        return (
            f"{SIG_PREFIX}{self.name} {base64.b64encode(self.key_id + self.signature).decode()}\n"
        )


@dataclass(frozen=True)
class OpenedNote:
    """A note whose signatures were checked against the reader's keys.

    ``verified`` are the known keys that signed ``text``; ``unverified`` the
    signatures by keys the reader does not know, kept to name them in messages,
    proving nothing.
    """

    text: str
    verified: tuple[NoteVerifier, ...]
    unverified: tuple[NoteSignature, ...]  # signatures by keys the reader does not know


def check_text(text: str) -> None:
    """Note text rules (signed-note): ends in newline, no blank line, no control characters."""
    if not text.endswith("\n"):
        raise InputError("note text must end with a newline")
    if "\n\n" in text:
        raise InputError("note text must not contain a blank line")
    for c in text:
        if (ord(c) < 0x20 and c != "\n") or ord(c) == 0x7F:
            raise InputError(f"note text holds control character U+{ord(c):04X}")


def sign_note(text: str, signers: list[NoteSigner]) -> str:
    """Sign ``text`` with every signer: the text, a blank line, one signature line each.

    Raises InputError if the text breaks the signed-note rules (check_text).
    """
    check_text(text)
    message = text.encode()
    lines = [NoteSignature(s.name, s.verifier.key_id, s.sign(message)).line() for s in signers]
    return text + "\n" + "".join(lines)


def parse_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a note into its text and signature lines without verifying anything."""
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise InputError("note is too large")
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError("note is not UTF-8") from e
    split = note.rfind("\n\n")
    if split < 0:
        raise InputError("note has no signature block (no blank line)")
    text, block = note[: split + 1], note[split + 2 :]
    check_text(text)
    if not block.endswith("\n"):
        raise InputError("note signature block must end with a newline")
    signatures: list[NoteSignature] = []
    for line in block[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise InputError(f"malformed signature line {line!r}")
        name, sep, b64 = line[len(SIG_PREFIX) :].rpartition(" ")
        if not sep:
            raise InputError(f"malformed signature line {line!r}")
        check_key_name(name)
        raw = _b64decode(b64, "signature")
        if len(raw) < 5:
            raise InputError(f"signature line {line!r} is too short")
        signatures.append(NoteSignature(name, raw[:4], raw[4:]))
    if len(signatures) > MAX_SIGNATURES:
        raise InputError(f"note has more than {MAX_SIGNATURES} signatures")
    return text, signatures


def open_note(note: str | bytes, verifiers: list[NoteVerifier]) -> OpenedNote:
    """Verify a note against known keys.

    Raises InputError if malformed, SignatureError if a known key's signature
    is bad or if no known key signed it (the error names the keys that did).
    """
    text, signatures = parse_note(note)
    message = text.encode()
    known = {(v.name, v.key_id): v for v in verifiers}
    verified: list[NoteVerifier] = []
    unverified: list[NoteSignature] = []
    for sig in signatures:
        verifier = known.get((sig.name, sig.key_id))
        if verifier is None:
            unverified.append(sig)
            continue
        if verifier in verified:
            continue  # Go ignores a second signature by the same key
        if not verifier.verify(message, sig.signature):
            raise SignatureError(
                f"bad signature by known key {sig.name}+{sig.key_id.hex()}: the note was altered"
            )
        verified.append(verifier)
    if not verified:
        signed_by = ", ".join(f"{s.name}+{s.key_id.hex()}" for s in unverified) or "nobody"
        raise UnknownSignerError(
            f"not signed by any key you trust (signed by: {signed_by}); if the station has "
            "rotated its key since, pass the key that was in force then as well"
        )
    return OpenedNote(text, tuple(verified), tuple(unverified))
