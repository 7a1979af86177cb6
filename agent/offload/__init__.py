"""One recorder into the ledger: the offload session, copy-and-verify ingest,
the media probe and the device's story (design.md, "The way a recording travels", 1-5)."""
