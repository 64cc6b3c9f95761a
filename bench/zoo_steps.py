"""Training steps of the zoo's ImageNet networks: first step with empty
caches (cold: every kernel compiles), first step in a second process on the
same caches (warm: nothing compiles), the steady step time, and the peak
resident memory, each network in processes of its own.

    python bench/zoo_steps.py                       # batch 8 at the papers' sizes
    python bench/zoo_steps.py --size 64 --batch 4 resnet18 vgg16
    python bench/zoo_steps.py --driver whole ...    # force the whole-step driver
    python bench/zoo_steps.py --torch-python /tmp/venv-torch/bin/python resnet50
        # steady steps and memory against PyTorch (bench/torch_zoo.py), alternating

Large graphs run as steps of calls into shared kernels (backend/kernels.py):
the cold column is what compiling those kernels costs, and a network that
shares them with one compiled before (ResNet-50 after ResNet-18, with
--shared) compiles only its new signatures.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"inception_v3": 299, "xception": 299}

RUN = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import numpy as np
import nnspec
spec, size, batch, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
graph = nnspec.lower(spec)
sets = {"size": size} if "size" in graph.meta.get("args", {}) else {}
if "classes" in graph.meta.get("args", {}):
    sets["classes"] = 1000          # ImageNet's, as bench/torch_zoo.py's networks
net = nnspec.compile(spec, set=sets, seed=0)
rng = np.random.default_rng(0)
(xname, shape), = net.inputs.items()
x = {xname: rng.standard_normal([batch] + list(shape)).astype(np.float32)}
y = {t: rng.integers(0, 10, batch) for t in net.targets}
t1 = time.perf_counter()
net.train_step(x, y, 0.01)
t2 = time.perf_counter()
times = []
for _ in range(steps):
    t = time.perf_counter()
    net.train_step(x, y, 0.01)
    times.append(time.perf_counter() - t)
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"build": t1 - t0, "first": t2 - t0, "step": sorted(times)[len(times) // 2]
                  if times else None, "rss_gb": rss, "whole": net._train.whole}))
"""


def run(name, size, batch, steps, env):
    spec = ROOT / "specs" / f"{name}.nn"
    out = subprocess.run([sys.executable, "-c", RUN, str(spec), str(size), str(batch),
                          str(steps)], env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name}: {out.stderr.strip().splitlines()[-1]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("names", nargs="*", default=["resnet18", "resnet50", "vgg16",
                                                  "densenet121", "inception_v3"])
    ap.add_argument("--size", type=int, help="input size (default: the paper's)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="steady steps timed (median)")
    ap.add_argument("--driver", choices=("whole", "calls"), help="force a driver")
    ap.add_argument("--shared", action="store_true",
                    help="one cache for all networks (later ones reuse kernels)")
    ap.add_argument("--torch-python", help="a Python with torch: steady steps and peak "
                    "memory of nnspec and PyTorch, alternating, --rounds times per network")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.torch_python:
        return against_torch(args)
    print(f"{'network':<13} {'size':>4} {'cold first':>10} {'warm first':>10} {'step':>8} "
          f"{'peak RSS':>8}  driver")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            size = args.size or SIZES.get(name, 224)
            tag = "shared" if args.shared else name
            env = dict(os.environ, NNSPEC_CACHE=f"{tmp}/c-{tag}",
                       NUMBA_CACHE_DIR=f"{tmp}/n-{tag}", PYTHONPATH=str(ROOT))
            if args.driver:
                env["NNSPEC_DRIVER"] = args.driver
            cold = run(name, size, args.batch, 0, env)
            warm = run(name, size, args.batch, args.steps, env)
            print(f"{name:<13} {size:>4} {cold['first']:>9.1f}s {warm['first']:>9.1f}s "
                  f"{warm['step']:>7.2f}s {warm['rss_gb']:>6.2f}GB  "
                  f"{'whole' if warm['whole'] else 'calls'}", flush=True)


def against_torch(args):
    """nnspec's warm process and PyTorch's, alternating per network and round,
    so both see the same machine (absolute times swing within minutes)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from torch_zoo import run as run_torch
    print(f"{'network':<13} {'round':>5} {'nnspec':>8} {'RSS':>7} {'PyTorch':>8} {'RSS':>7}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            size = args.size or SIZES.get(name, 224)
            env = dict(os.environ, NNSPEC_CACHE=f"{tmp}/c", NUMBA_CACHE_DIR=f"{tmp}/n",
                       PYTHONPATH=str(ROOT))
            run(name, size, args.batch, 0, env)            # compiles: the rounds are warm
            for k in range(args.rounds):
                n = run(name, size, args.batch, args.steps, env)
                t = run_torch(args.torch_python, name, size, args.batch, args.steps)
                print(f"{name:<13} {k:>5} {n['step']:>7.2f}s {n['rss_gb']:>5.2f}GB "
                      f"{t['step']:>7.2f}s {t['rss_gb']:>5.2f}GB", flush=True)


if __name__ == "__main__":
    main()
