"""The coreml target (being written)."""
