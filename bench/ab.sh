#!/usr/bin/env bash
# bench/ab.sh OLD NEW [N] [ROUNDS]: two commits' pipelines alternated on this machine (old, new, old, new, ...;
# 2 rounds by default), each run on a fresh stack of its own started from a worktree of the commit, measured by
# this checkout's bench/row_digest.py and bench/pipeline.py --events N (200,000 by default). Prints each run's
# figures, the medians and cpu_old_vs_new (old CPU per event / new, counted until the runners caught up with each
# phase; cpu_old_vs_new_until_stored: until its last event was stored), and whether the rows digests match.
# The stacks run beside the shared one (their own run dirs under AB_RUN_DIR, /var/tmp/spoor-ab, and ports from
# AB_PORT_BASE, 20000); worktrees and their venvs are cached under AB_CACHE (~/.cache/spoor-ab).
# Options after the positional ones go to bench/ab.py (--paced-seconds, --digest-events, --verbose, ...).
#   bench/ab.sh 391f7a8 HEAD 1000000 2
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
run_root=${AB_RUN_DIR:-/var/tmp/spoor-ab}
mkdir -p "$run_root"
child=

# ab.py stops its stacks itself (finally, SIGTERM); this trap is for an ab.py that could not: a stack named
# in current.json is stopped with its tree's stack.sh and its own settings.
cleanup() {
  trap - EXIT INT TERM HUP
  if [[ -n $child ]] && kill -0 "$child" 2>/dev/null; then
    kill -TERM "$child" 2>/dev/null || true
    wait "$child" 2>/dev/null || true
  fi
  if [[ -s $run_root/current.json ]]; then
    echo "ab.sh: stopping the stack ab.py left running" >&2
    "$repo/.venv/bin/python" - "$run_root/current.json" <<'PY'
import json, os, subprocess, sys
state = json.load(open(sys.argv[1]))
env = {k: v for k, v in os.environ.items() if not k.startswith("SPOOR_")} | state["env"]
subprocess.run([state["tree"] + "/deploy/stack.sh", "down"], env=env, cwd=state["tree"])
os.unlink(sys.argv[1])
PY
  fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

"$repo/.venv/bin/python" "$repo/bench/ab.py" "$@" &
child=$!
wait "$child"
