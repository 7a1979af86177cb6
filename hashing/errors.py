"""The error hierarchy shared by every part of evidock (style.md 7).

Transient errors (a camera pulled out, a broker gone) are retried by their
callers; integrity errors are never retried and are always reported, because
they mean the evidence or its proof is not what it claims to be.
"""


class EvidockError(Exception):
    """Base of every error evidock raises on purpose."""


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
