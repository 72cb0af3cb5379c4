"""Stage 2: Faust stream processors. Canonical events in, per-user state out."""
