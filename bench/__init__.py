"""evidock's benchmark suite: ``./run bench`` (full) or ``./run bench --quick``.

Every figure is printed beside a baseline measured in the same run on the same
data (``cp`` + ``sync`` for ingest, bare ``hashlib`` for the digester, bare
SQLite for appends and proofs, a bare scan for the audit), with the ratio and
the target from the issue. Benchmarks report; they do not gate: the exit status
is 0 whatever the figures, and non-zero only when a benchmark could not run.
bench/README.md records the last full run and what each figure means.
"""
