"""Crash points for the fault suite (tests/faults): the worker kills itself at a named moment.

``SPOOR_FAULT_CRASH_POINT=<name>`` makes the process SIGKILL itself the ``SPOOR_FAULT_CRASH_AFTER``-th
time (default 1) it passes ``crash_point(name)``; a test then restarts it, as an orchestrator would.
Points: ``after_persist`` (changelog acknowledged and the PostgreSQL transaction committed, the
batch not yet acknowledged, so its offsets are not committed: the worst moment for duplicates).
Unset, as in production, a pass costs one comparison.
"""

import os
import signal

_POINT = os.environ.get("SPOOR_FAULT_CRASH_POINT", "")
_remaining = int(os.environ.get("SPOOR_FAULT_CRASH_AFTER", "1") or 1)


def crash_point(name: str) -> None:
    global _remaining
    if name != _POINT:
        return
    _remaining -= 1
    if _remaining <= 0:
        os.kill(os.getpid(), signal.SIGKILL)
