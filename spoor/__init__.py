"""Spoor: shared contracts (settings, the canonical event) and the command line."""
