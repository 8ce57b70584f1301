"""The researcher's side of over-the-air model updates: keys, publishing (docs/ota.md)."""
