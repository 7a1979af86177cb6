"""The regulation's records (regulation.md Art. 3, 15-20): the registry of devices,
tags, anomalies and wipes; holds, retention, access, exports, the archive, spot
checks, reports and the scrub. Every statement on the ledger's side tables is in
``agent.records.index``: the index is derived from the ledger, never a second truth."""
