"""The error hierarchy shared by every part of evidock (style.md 9), one place for
each class.

Transient errors (a camera pulled out, a broker gone) are retried by their
callers; integrity errors are never retried and are always reported, because
they mean the evidence or its proof is not what it claims to be. Each error
says what went wrong and where; ``hint``, when there is one, says what to do,
so the command line and the kiosk can show it as advice rather than as the
tail of a sentence.
"""

from __future__ import annotations


class EvidockError(Exception):
    """Base of every error evidock raises on purpose.

    ``hint`` (keyword only) is what the reader can do about it, e.g. "run
    `evidock checkpoint`"; None when the message says all.
    """

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        self.hint = hint


def explain(error: BaseException) -> str:
    """The error's message and, after a semicolon, its hint: for displays of one
    line (a kiosk tile, a status list, a configuration problem)."""
    hint = getattr(error, "hint", None)
    return f"{error}; {hint}" if hint else str(error)


class ConfigError(EvidockError):
    """A setting, a station folder or a command-line value is unusable."""


class InputError(EvidockError):
    """Input from outside (a file, a key, a bundle, a message) is malformed."""


class TransientError(EvidockError):
    """A failure worth retrying later: nothing was recorded as done."""


class DeviceError(TransientError):
    """A recorder or its filesystem failed (unplugged, I/O error, changed while read)."""


class UploadError(TransientError):
    """The platform link failed; the outbox keeps the file queued."""


class UnverifiableError(EvidockError):
    """Verification cannot start or complete: a key, checkpoint or bundle the
    auditor named is missing or unusable (exit code 3, never "verified")."""


class IntegrityError(EvidockError):
    """Evidence or proof does not match what was recorded. Never retried."""


class DigestMismatchError(IntegrityError):
    """A copy's bytes differ from the digest taken while copying."""


class SignatureError(IntegrityError):
    """A signature is missing, malformed, or does not verify."""


class ProofError(IntegrityError):
    """An inclusion or consistency proof does not verify."""


class ForkError(IntegrityError):
    """Two different tree heads for one log, or a head older than one already signed."""


class UnknownSignerError(SignatureError):
    """A note carries no signature by any key the reader trusts."""
