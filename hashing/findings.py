"""What a verification found, by name and place, and what it means for the exit code.

The kinds are a stable vocabulary: scripts, tests and the kiosk key on them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FILE_MODIFIED = "file_modified"  # bytes differ from the recorded digest (ranges named)
FILE_MISSING = "file_missing"  # an entry names a file that is not there
FILE_ADDED = "file_added"  # a file no entry covers
ENTRY_ALTERED = "entry_altered"  # an entry's bytes differ from what the tree holds
ENTRY_MISSING = "entry_missing"  # an entry that must be there is not (deleted, truncated)
ENTRY_REORDERED = "entry_reordered"  # entries out of sequence or duplicated
CHAIN_BROKEN = "chain_broken"  # an entry's prev is not the hash of the one before
TREE_ALTERED = "tree_altered"  # stored interior hashes differ from the entries
BAD_SIGNATURE = "bad_signature"  # a known key's signature fails, or a key signed out of its time
UNKNOWN_SIGNATURE = "unknown_signature"  # signed, but by no key the verifier trusts
PROOF_FAILURE = "proof_failure"  # an inclusion or consistency proof does not verify
ROLLBACK = "rollback"  # older than a checkpoint already held
FORK = "fork"  # inconsistent with a checkpoint already held
MALFORMED = "malformed"  # a bundle or ledger part does not parse
UNLAWFUL_PURGE = "unlawful_purge"  # a purge entry the retention rule (Art. 16-17) does not allow
CLOCK_REGRESSION = "clock_regression"  # warning: an entry is dated before the one before it
# warning: purges that pass every check but the platform receipts' signatures (no key given)
PURGE_UNVERIFIED = "purge_unverified"

WARNINGS = frozenset({CLOCK_REGRESSION, PURGE_UNVERIFIED})

# The exit codes of every `evidock` command (style.md 10): 0 ok or verified,
# 1 an integrity failure found, 2 usage or input error, 3 could not verify,
# 4 transient: nothing was recorded as done, try again (a recorder pulled out,
# a broker gone).
EXIT_OK, EXIT_INTEGRITY, EXIT_USAGE, EXIT_UNVERIFIABLE, EXIT_TRANSIENT = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Finding:
    """One fault a verification found.

    ``kind`` is from the vocabulary above (what scripts key on), ``place`` says
    where (a path, an entry, a tree node) and ``detail`` what differs, in words.
    """

    kind: str
    place: str
    detail: str

    @property
    def is_warning(self) -> bool:
        """Whether it is reported without failing the verification (``WARNINGS``)."""
        return self.kind in WARNINGS

    def as_dict(self) -> dict[str, str]:
        """The finding as the JSON report writes it."""
        return {"kind": self.kind, "place": self.place, "detail": self.detail}


@dataclass
class Report:
    """Findings, reasons the verification could not be completed, and what was checked."""

    subject: str
    findings: list[Finding] = field(default_factory=list)
    unverifiable: list[str] = field(default_factory=list)
    checked: dict[str, Any] = field(default_factory=dict)

    def add(self, kind: str, place: str, detail: str) -> None:
        """Record a finding; the verification goes on, so one run names every fault."""
        self.findings.append(Finding(kind, place, detail))

    def cannot(self, reason: str) -> None:
        """Record why part of the verification could not be done.

        Without a failure the exit code is then EXIT_UNVERIFIABLE, never EXIT_OK: an
        incomplete check must not read as a pass.
        """
        self.unverifiable.append(reason)

    @property
    def failures(self) -> list[Finding]:
        """The findings that fail the verification: all but the warnings."""
        return [f for f in self.findings if not f.is_warning]

    @property
    def exit_code(self) -> int:
        """EXIT_INTEGRITY on a failure, else EXIT_UNVERIFIABLE if a part went unchecked, or EXIT_OK.

        A failure outranks an incomplete check (style.md 10): what was found stands
        even if other parts could not be verified.
        """
        if self.failures:
            return EXIT_INTEGRITY
        if self.unverifiable:
            return EXIT_UNVERIFIABLE
        return EXIT_OK

    def kinds(self) -> set[str]:
        """The kinds of finding present, for scripts and tests that key on them."""
        return {f.kind for f in self.findings}

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON values: verdict, exit code, findings, what was and was not checked."""
        return {
            "subject": self.subject,
            "ok": self.exit_code == EXIT_OK,
            "exit_code": self.exit_code,
            "findings": [f.as_dict() for f in self.findings],
            "unverifiable": self.unverifiable,
            "checked": self.checked,
        }

    def render(self) -> str:
        """The report as text for a terminal or a printed page, ending in one RESULT line."""
        lines = [f"verifying {self.subject}"]
        lines += [f"  {k}: {v}" for k, v in self.checked.items()]
        if self.findings:
            lines.append(f"FINDINGS ({len(self.findings)}):")
            lines += [f"  {f.kind:<17} {f.place}: {f.detail}" for f in self.findings]
        if self.unverifiable:
            lines.append("COULD NOT VERIFY:")
            lines += [f"  {r}" for r in self.unverifiable]
        verdict = {
            EXIT_OK: "VERIFIED",
            EXIT_INTEGRITY: "INTEGRITY FAILURE",
            EXIT_UNVERIFIABLE: "NOT VERIFIED (could not complete)",
        }[self.exit_code]
        lines.append(f"RESULT: {verdict}")
        return "\n".join(lines) + "\n"
