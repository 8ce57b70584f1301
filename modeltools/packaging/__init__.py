"""Packaging: model bundles (manifest, labels, golden I/O) ready for the agent and OTA."""

from __future__ import annotations
