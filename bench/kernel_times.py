"""Where a large network's training step goes: each kernel call of its step
of calls (backend/kernels.py) timed, summed per kernel, or per convolution
shape with --by-shape.

    python bench/kernel_times.py specs/resnet50.nn --size 224 --batch 8
    python bench/kernel_times.py specs/resnet18.nn --by-shape --top 30

The step is the compiled one (warmed up by two steps first); the timing
wrappers add a few microseconds per call, nothing against a large network's
milliseconds.  Only a step of calls has calls to time: a small network's
whole step is one compiled function (NNSPEC_DRIVER=calls forces calls).
"""
from __future__ import annotations

import argparse
import collections
import resource
import time
import types

import numpy as np

import nnspec


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("spec")
    ap.add_argument("--size", type=int, help="input size, where the network takes one")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3, help="steps timed")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--by-shape", action="store_true", help="convolutions per input shape")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    args_of = nnspec.lower(args.spec).meta.get("args", {})
    sets = {k: v for k, v in (("size", args.size), ("classes", args.classes))
            if k in args_of and v is not None}
    net = nnspec.compile(args.spec, set=sets, seed=0)
    rng = np.random.default_rng(0)
    (xname, shape), = net.inputs.items()
    x = {xname: rng.standard_normal([args.batch] + list(shape)).astype(net.dtype)}
    y = {t: rng.integers(0, 10, args.batch) for t in net.targets}
    net.train_step(x, y, 0.01)
    step = net._program("train")
    if step.whole:
        raise SystemExit("this network's step is one compiled function: nothing to time "
                         "per kernel (NNSPEC_DRIVER=calls runs it as calls)")
    acc, count = collections.defaultdict(float), collections.Counter()

    def timed(name, fn):
        def call(*a):
            key = name
            if args.by_shape and name.startswith("conv."):
                key = f"{name} {tuple(a[0].shape[1:])} w{tuple(a[1].shape)}"
            t = time.perf_counter()
            out = fn(*a)
            acc[key] += time.perf_counter() - t
            count[key] += 1
            return out
        return call

    names = step.fn.__globals__
    for k, v in list(names.items()):
        if isinstance(v, types.ModuleType) and (k.startswith("_m") or k == "_opt"):
            short = "opt" if k == "_opt" else v.__name__.rsplit(".", 1)[-1]
            proxy = types.SimpleNamespace(**{a: timed(f"{short}.{a}", getattr(v, a))
                                             if callable(getattr(v, a)) else getattr(v, a)
                                             for a in dir(v) if not a.startswith("__")})
            names[k] = proxy
        elif k.startswith("_k") and callable(v):
            names[k] = timed("fused (parallel)" if k.endswith("p") else "fused", v)
    net.train_step(x, y, 0.01)
    acc.clear()
    count.clear()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        net.train_step(x, y, 0.01)
    total = (time.perf_counter() - t0) / args.steps
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"step {total * 1e3:.1f} ms, in kernels {sum(acc.values()) / args.steps * 1e3:.1f} "
          f"ms; peak RSS {rss:.2f} GB")
    for k, v in sorted(acc.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"{k:58s} {v / args.steps * 1e3:8.1f} ms {count[k] // args.steps:5d} calls")


if __name__ == "__main__":
    main()
