"""The platform side: takes the docks' uploads, checks their provenance, holds each
dock to its history and answers with signed receipts (design.md, "The parts")."""
