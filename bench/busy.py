"""Training steps on a quiet machine and beside a busy one, for nnspec,
PyTorch and JAX.

    python bench/busy.py --torch-python /tmp/venv-torch/bin/python \\
                         --jax-python /tmp/venv-jax/bin/python
    python bench/busy.py --only mlp lstm --rounds 6 --seconds 1
    python bench/busy.py --before /tmp/nnspec-before    # and another checkout, alternating
    python bench/busy.py --variant unpaced:NNSPEC_PACE=0     # nnspec with other settings too

The background load is one process per core this process may use, each a
pure-Python busy loop at the benchmark's own nice level (a user's other job),
started once and switched on and off with SIGCONT / SIGSTOP.  Each workload
runs round after round, a quiet phase and a busy phase in each (the order
alternating from round to round), every framework's worker (bench/run.py's,
one process each) taking its turn in both, so the two phases see the same
hour of the machine.  Reported: the median step time of each phase and the
slowdown, busy / quiet, and the slowdown in mean step time (what a run of
many steps takes: the steps that waited for a thread off its core count in
full).  A framework that adapts to the load does so inside
the busy phases: their first steps count too.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import WORKLOADS, Worker, _fmt, cpu_model, frameworks_for, gemm_gflops  # noqa: E402

# each spinner checks now and then that the benchmark is still there
SPIN = ("import os, sys\n"
        "parent = int(sys.argv[1])\n"
        "while os.getppid() == parent:\n"
        "    for _ in range(1000000):\n"
        "        pass\n")


class Load:
    """`n` busy processes, stopped until `on()`."""

    def __init__(self, n: int):
        self.procs = [subprocess.Popen([sys.executable, "-c", SPIN, str(os.getpid())])
                      for _ in range(n)]
        self.running = True
        self.off()

    def _signal(self, sig):
        for p in self.procs:
            if p.poll() is None:
                os.kill(p.pid, sig)

    def on(self):
        if not self.running:
            self._signal(signal.SIGCONT)
            self.running = True

    def off(self):
        if self.running:
            self._signal(signal.SIGSTOP)
            self.running = False

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=list(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=float, default=1.0,
                    help="per worker per phase: long enough for a runtime to adapt")
    ap.add_argument("--load", type=int, default=cores(),
                    help="busy processes (default: one per core; 0: both phases quiet)")
    ap.add_argument("--torch-python", default=sys.executable)
    ap.add_argument("--jax-python")
    ap.add_argument("--before", metavar="DIR",
                    help="another checkout of nnspec (a worktree of the commit before) run "
                         "beside this one as 'nnspec-before', with a cache of its own")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=V,...",
                    help="nnspec again as nnspec-NAME with these environment variables, e.g. "
                         "one-thread:NUMBA_NUM_THREADS=1,NNSPEC_BLAS_THREADS=1")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()

    frameworks = frameworks_for(args)
    extra = {f: {} for f in frameworks}
    for v in args.variant:
        name, _, env = v.partition(":")
        frameworks["nnspec-" + name] = sys.executable
        extra["nnspec-" + name] = dict(kv.split("=", 1) for kv in env.split(",") if kv)
    if args.before:
        frameworks["nnspec-before"] = sys.executable
        cache = Path(os.environ.get("NNSPEC_CACHE") or Path.home() / ".cache" / "nnspec")
        extra["nnspec-before"] = {"NNSPEC_BENCH_ROOT": str(Path(args.before).resolve()),
                                  "NNSPEC_CACHE": str(cache) + "-before"}
    load = Load(args.load)
    results = {}
    try:
        quiet_gemm = gemm_gflops()
        load.on()
        time.sleep(0.2)
        busy_gemm = gemm_gflops()
        load.off()
        print(f"machine: {cores()} cores, {cpu_model()}; background load: {args.load} busy "
              f"processes; float32 GEMM (NumPy, 1024^3) {quiet_gemm:.0f} GFLOP/s quiet, "
              f"{busy_gemm:.0f} busy; load average {loadavg()}", flush=True)
        workers = {f: Worker(f, py, **extra[f]) for f, py in frameworks.items()}
        try:
            for name in args.only:
                for w in workers.values():
                    w.ask(name)                      # build, compile, warm up
                reps = {}
                for f, w in workers.items():
                    t = statistics.median(w.ask(name, 5)["times"])
                    reps[f] = max(3, int(args.seconds / max(t, 1e-7)))
                times = {f: {"quiet": [], "busy": []} for f in workers}
                ones = {f: {"quiet": [], "busy": []} for f in workers}
                order = list(workers)
                for r in range(args.rounds):
                    for phase in (("quiet", "busy") if r % 2 == 0 else ("busy", "quiet")):
                        load.on() if phase == "busy" else load.off()
                        time.sleep(0.1)
                        for f in order:
                            got = workers[f].ask(name, reps[f], args.seconds)
                            times[f][phase] += got["times"]
                            ones[f][phase] += got.get("one", [])
                    load.off()
                    order = order[1:] + order[:1]    # each framework first in turn
                results[name] = {
                    f: {ph: statistics.median(ts) for ph, ts in by.items()}
                    | {"steps": {ph: len(ts) for ph, ts in by.items()},
                       "mean": {ph: statistics.fmean(ts) for ph, ts in by.items()},
                       "one_thread": {ph: sum(o) / len(o) for ph, o in ones[f].items() if o}}
                    for f, by in times.items()}
                for f, r in results[name].items():
                    print(f"  {name:<10} {f:<18} quiet {_fmt(r['quiet']):>10}  "
                          f"busy {_fmt(r['busy']):>10}  x{r['busy'] / r['quiet']:.1f}"
                          f"  mean x{_mean_slowdown(r):.1f}{_paced(r)}", file=sys.stderr,
                          flush=True)
        finally:
            for w in workers.values():
                w.close()
    finally:
        load.close()

    print(f"\n{'workload':<10} {'batch':>5}  {'framework':<18} {'quiet':>10} {'busy':>10} "
          f"{'slowdown':>8} {'mean busy':>10} {'slowdown':>8}  "
          f"steps the pacer ran on one thread, quiet / busy")
    for name, by in results.items():
        for f, r in by.items():
            print(f"{name:<10} {WORKLOADS[name][1]:>5}  {f:<18} {_fmt(r['quiet']):>10} "
                  f"{_fmt(r['busy']):>10} {r['busy'] / r['quiet']:>7.1f}x "
                  f"{_fmt(r['mean']['busy']):>10} {_mean_slowdown(r):>7.1f}x{_paced(r)}")
    print(f"load average at the end: {loadavg()}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cpu": cpu_model(), "cores": cores(), "load": args.load,
            "gemm_gflops": {"quiet": quiet_gemm, "busy": busy_gemm}, "results": results},
            indent=1))


def _mean_slowdown(r) -> float:
    """Busy over quiet in mean step time (the time a run of many steps takes:
    a step that waits for a thread off its core counts in full)."""
    return r["mean"]["busy"] / r["mean"]["quiet"]


def _paced(r) -> str:
    one = r.get("one_thread") or {}
    return (f"  {100 * one.get('quiet', 0):.0f}% / {100 * one.get('busy', 0):.0f}%"
            if one else "")


if __name__ == "__main__":
    main()
