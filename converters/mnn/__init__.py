"""The mnn target (being written)."""
