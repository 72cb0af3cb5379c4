"""Exit codes a Spoor process ends with on purpose, for its supervisor to act on."""

RESTART_CODE = 70  # EX_SOFTWARE: the worker fail-stopped; a fresh process resumes from the last commit
