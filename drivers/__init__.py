"""Recorder drivers: how to recognise a recorder, read its identity, list and open its recordings."""
