"""The dock daemon and its command line: offload sessions, ingest, CLI."""
