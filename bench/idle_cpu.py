"""What a running stack costs with no traffic: CPU per second of each kind of process (bench/proc_cpu.py),
over a few windows, then the medians. Run it on a stack nobody sends events to.

    .venv/bin/python bench/idle_cpu.py --windows 2 --seconds 120          # the stack of SPOOR_RUN_DIR
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.proc_cpu import KINDS, StackCpu, cpu_rates  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", default=os.environ.get("SPOOR_RUN_DIR", "/var/tmp/spoor"))
    parser.add_argument("--seconds", type=float, default=60.0, help="length of a window")
    parser.add_argument("--windows", type=int, default=2)
    args = parser.parse_args()
    stack = StackCpu(args.run_dir)
    if not any(stack.roots().values()):  # every kind is listed, with no pid when no stack runs there
        raise SystemExit(f"no stack's pid files in {args.run_dir} (deploy/stack.sh up starts one)")
    rates = []
    for n in range(args.windows):
        rates.append({kind: 1000 * cores for kind, cores in cpu_rates(stack, args.seconds).items()})
        print(f"window {n + 1} ({time.strftime('%X')}, {args.seconds:.0f} s), ms CPU per s: "
              + ", ".join(f"{kind} {rate:.1f}" for kind, rate in rates[-1].items()) + f"; total {sum(rates[-1].values()):.1f}",
              flush=True)
    kinds = [kind for kind in KINDS if any(kind in rate for rate in rates)]
    medians = {kind: statistics.median(rate.get(kind, 0.0) for rate in rates) for kind in kinds}
    for kind, median in medians.items():
        print(f"idle_ms_cpu_per_s_{kind} {median:.1f}")
    print(f"idle_ms_cpu_per_s {statistics.median(sum(rate.values()) for rate in rates):.1f}")


if __name__ == "__main__":
    main()
