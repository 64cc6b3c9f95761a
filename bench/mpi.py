"""Data-parallel scaling on one machine: one process with every core against
N MPI ranks of one core each (nnspec/train/dist.py).

    python bench/mpi.py                     # mlp and resnet of bench/run.py, 2 ranks
    python bench/mpi.py --only mlp --ranks 2 --rounds 5
    python bench/mpi.py --only resnet --sync-bn   # batch statistics over the ranks

Each round runs the single process, then the ranks, each for about
`--seconds` of training steps of the workload's batch (float32, SGD) on
random data, after a warm-up that compiles or loads the steps.  The rounds
alternate, so a noisy neighbour hurts both sides alike; the report is the
median over rounds of steps per second, and for the ranks the share of the
step spent in the gradient Allreduce (its wait included: a rank that
finishes its shard first waits there for the slower one).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))


def workload(name: str, sync_bn: bool = False):
    """The spec text and batch of bench/run.py's workload; with `sync_bn`, its
    train section (the last item) says so."""
    from run import WORKLOADS
    spec, batch, _ = WORKLOADS[name]
    if sync_bn:
        spec = spec.rstrip()[:-1] + "    sync_bn = true\n}\n"
    return spec, batch


def worker(name: str, seconds: float, sync_bn: bool = False) -> dict:
    import numpy as np
    import nnspec
    from nnspec.train import dist
    spec, batch = workload(name, sync_bn)
    net = nnspec.compile(spec, dtype="float32")
    group = dist.world()
    rng = np.random.default_rng(0)
    xs = {k: rng.normal(size=(batch,) + tuple(s)).astype(np.float32)
          for k, s in net.inputs.items()}
    ys = {k: rng.integers(0, 10, size=batch).astype(np.int32) for k in net.targets}
    if group is not None:
        lo, hi = group.shard(batch)
        mine_x = {k: v[lo:hi] for k, v in xs.items()}
        mine_y = {k: v[lo:hi] for k, v in ys.items()}

    def step():
        if group is None:
            return net.train_step(xs, ys, 0.01)
        return group.train_step(net, mine_x, mine_y, 0.01, batch)

    for _ in range(3):          # compile (or load), first-touch the arenas
        step()
    if group is not None:
        group.comm.Barrier()
        group.reduce_seconds = 0.0
    steps, t0 = 0, time.perf_counter()
    while True:
        step()
        steps += 1
        elapsed = time.perf_counter() - t0
        # the ranks stop together: rank 0's clock decides for all
        done = elapsed >= seconds
        if group is not None:
            done = group.comm.bcast(done, root=0)
        if done:
            break
    out = {"steps_per_s": steps / elapsed}
    if group is not None:
        out["allreduce_share"] = group.reduce_seconds / elapsed
        out["ranks"] = group.size
        if not group.root:
            return {}
    return out


def run(cmd: list, env: dict) -> dict:
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", help="workload (default: mlp, resnet)")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--sync-bn", action="store_true",
                    help="sync_bn = true in the workload's train section")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        res = worker(args.worker, args.seconds, args.sync_bn)
        if res:
            print(json.dumps(res))
        return
    from nnspec.backend.cores import available
    from nnspec.train.launch import mpiexec_command
    env = dict(os.environ)
    me = [sys.executable, str(Path(__file__).resolve())]
    print(f"{available()} usable cores; one process on all of them against {args.ranks} "
          f"MPI ranks; {args.rounds} alternating rounds of {args.seconds:g} s")
    for name in args.only or ["mlp", "resnet"]:
        base = ["--worker", name, "--seconds", str(args.seconds)] + \
            (["--sync-bn"] if args.sync_bn else [])
        one, many = [], []
        for _ in range(args.rounds):
            one.append(run(me + base, env))
            cmd = mpiexec_command(args.ranks, [])
            many.append(run(cmd[:cmd.index(sys.executable)] + me + base, env))
        s1 = statistics.median(r["steps_per_s"] for r in one)
        sn = statistics.median(r["steps_per_s"] for r in many)
        share = statistics.median(r["allreduce_share"] for r in many)
        _, batch = workload(name)
        print(f"{name:8s} batch {batch:4d}: one process {s1:8.1f} steps/s   "
              f"{args.ranks} ranks {sn:8.1f} steps/s ({sn / s1:.2f}x)   "
              f"allreduce {100 * share:.0f}% of the ranks' time")


if __name__ == "__main__":
    main()
