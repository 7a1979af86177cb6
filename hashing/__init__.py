"""The integrity core of evidock.

Streaming digests, the append-only ledger (an RFC 9162 Merkle tree plus a hash
chain, in SQLite), C2SP signed-note checkpoints, inclusion and consistency
proofs, export bundles and the offline verifier.

This package is the pure core (design.md, "The parts"): it never touches udev,
MQTT or the network, so an auditor's machine needs nothing else to verify.
"""
