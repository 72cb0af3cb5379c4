"""`spoor worker` runs the Faust worker as a child process and restarts it when it fail-stops.

The worker exits with code 70 when it must not acknowledge what it holds (a
database write that keeps failing, records the consumer skipped); a fresh
process resumes from the last committed offset. Any other exit ends the
supervisor with the same code. SIGTERM/SIGINT are passed on for a graceful
drain, and the child dies with the supervisor (PR_SET_PDEATHSIG).
"""

import ctypes
import logging
import signal
import subprocess
import time

from spoor.exit_codes import RESTART_CODE

MAX_RESTARTS_PER_HOUR = 30
PR_SET_PDEATHSIG = 1
log = logging.getLogger("spoor.supervise")


def _die_with_parent() -> None:
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:  # not Linux: the child may outlive a SIGKILLed supervisor
        pass


def supervise(command: list[str]) -> int:
    restarts: list[float] = []
    stopping = False
    child: subprocess.Popen | None = None

    def forward(signum, _frame):
        nonlocal stopping
        stopping = True
        if child and child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        child = subprocess.Popen(command, preexec_fn=_die_with_parent)
        code = child.wait()
        if stopping or code != RESTART_CODE:
            return code
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < 3600] + [now]
        if len(restarts) > MAX_RESTARTS_PER_HOUR:
            log.critical("worker fail-stopped %d times within an hour; giving up", len(restarts))
            return code
        log.warning("worker fail-stopped (exit %d); restarting it (%d in the last hour)", code, len(restarts))
        time.sleep(1)
