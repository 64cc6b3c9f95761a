"""Training steps on an NVIDIA GPU: nnspec --device cuda against PyTorch eager
on CUDA, one table.  Run by bench/gpu_check.sh on a machine with a GPU.

    python bench/gpu.py                  # bench/run.py's workloads, ResNet-18 and VGG-16
    python bench/gpu.py --only mlp --reps 500

ResNet-18 (batch 64) and VGG-16 (batch 32) run at 224x224 from specs/ and
bench/torch_zoo.py's PyTorch definitions of the same networks.

One full training step (forward, backward, SGD update, the loss read back)
in float32 per workload, the median over `reps` steps after a warm-up; the
"first" column is nnspec's build and first step (its kernels compiled, or
loaded from the cache).  Both sides compute in full float32 unless --tf32.
Workloads whose ops have no CUDA kernel yet are listed with the error.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent), str(ROOT)]

from run import WORKLOADS, example_batch, torch_model  # noqa: E402  (bench/run.py)

ZOO = {"resnet18": 64, "vgg16": 32}       # specs/<name>.nn at 224x224: batch
BATCH = {**{k: v[1] for k, v in WORKLOADS.items()}, **ZOO}


def batch_of(name):
    """(x, y, classes) of a workload or a zoo network."""
    if name not in ZOO:
        return example_batch(name)
    import numpy as np
    rng = np.random.default_rng(0)
    x = rng.standard_normal((ZOO[name], 3, 224, 224)).astype(np.float32)
    return x, rng.integers(0, 1000, ZOO[name]).astype(np.int64), 1000


def nnspec_step(name):
    import nnspec
    x, y, _ = batch_of(name)
    spec = ROOT.parent / "specs" / f"{name}.nn" if name in ZOO else WORKLOADS[name][0]
    net = nnspec.compile(spec, dtype="float32", device="cuda")
    net.set_optimizer("sgd")
    feeds, targets = {next(iter(net.inputs)): x}, {next(iter(net.targets)): y}
    return lambda: net.train_step(feeds, targets, 0.01)


def torch_step(name):
    import torch
    x, y, classes = batch_of(name)
    torch.manual_seed(0)
    if name in ZOO:         # bench/torch_zoo.py's definitions of the networks
        import torch_zoo
        defs = torch_zoo.RUN[torch_zoo.RUN.index("torch.manual_seed(0)"):
                             torch_zoo.RUN.index("opt = torch.optim")]
        ns = {"name": name}
        exec("import torch\nfrom torch import nn\n" + defs, ns)
        model = ns["net"].cuda().train()
    else:
        model = torch_model(name).cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.CrossEntropyLoss() if classes else torch.nn.MSELoss()
    xt, yt = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xt), yt)
        loss.backward()
        opt.step()
        return loss.item()          # the loss on the host, as nnspec's step
    return step


def median_s(make, name, reps, warmup, budget):
    """(first, median): the seconds to build the step and run it once (the
    compile), and the median of one step after the warm-up, timing at most
    `reps` steps or `budget` seconds of them; or why it cannot run."""
    try:
        t0 = time.perf_counter()
        step = make(name)
        step()
        first = time.perf_counter() - t0
        for _ in range(warmup):
            step()
        profile = _profile() if make is nnspec_step else None
        if profile:                        # NNSPEC_CUDA_PROFILE=1: the timed steps only
            profile.clear()
        times, t_end = [], time.perf_counter() + budget
        while len(times) < max(reps, 1) and (len(times) < 3 or time.perf_counter() < t_end):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        if profile:
            from nnspec.backend.cuda.step import _print_profile
            print(f"\n{name}, {len(times)} steps:", end="")
            _print_profile()
            profile.clear()
    except Exception as e:          # noqa: BLE001 (reported in the table)
        traceback.print_exc()
        return f"{type(e).__name__}: {str(e).splitlines()[0][:70]}" if str(e) else type(e).__name__
    return first, statistics.median(times)


def _profile():
    """nnspec's per-op CUDA profile (a dict), or None when not asked for."""
    from nnspec.backend.cuda.step import PROFILE
    return PROFILE


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(WORKLOADS) + list(ZOO))
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10, help="steps before timing (compiles)")
    ap.add_argument("--budget", type=float, default=10.0,
                    help="seconds of timed steps at most, per workload and side")
    ap.add_argument("--no-torch", action="store_true", help="nnspec alone (profiles)")
    ap.add_argument("--tf32", action="store_true",
                    help="float32 products on tensor cores (TF32) on both sides; by default "
                         "both compute in full float32 (PyTorch's cuDNN would use TF32)")
    args = ap.parse_args()
    os.environ["NNSPEC_CUDA_TF32"] = "1" if args.tf32 else "0"
    try:
        import torch
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        tv = f"torch {torch.__version__}"
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    except ImportError:
        gpu, tv = None, "no torch"
    import numba
    print(f"GPU {gpu or '?'}; numba {numba.__version__}; {tv}; "
          f"float32 products in {'TF32' if args.tf32 else 'full float32'}")
    print(f"\n{'workload':<10} {'batch':>5} {'nnspec first':>13} {'nnspec cuda':>12} "
          f"{'torch cuda':>12} {'ratio':>7}  note", flush=True)
    for name in args.only:
        ours = median_s(nnspec_step, name, args.reps, args.warmup, args.budget)
        theirs = "no torch CUDA" if not gpu or args.no_torch else \
            median_s(torch_step, name, args.reps, args.warmup, args.budget)
        ok = isinstance(ours, tuple) and isinstance(theirs, tuple)
        note = "" if ok else (ours if not isinstance(ours, tuple) else theirs)
        first = f"{ours[0]:.1f} s" if isinstance(ours, tuple) else "-"
        print(f"{name:<10} {BATCH[name]:>5} {first:>13} {_fmt(ours):>12} {_fmt(theirs):>12} "
              f"{(ours[1] / theirs[1] if ok else float('nan')):>7.2f}  {note}", flush=True)


def _fmt(t) -> str:
    return f"{t[1] * 1e3:.3f} ms" if isinstance(t, tuple) else "-"


if __name__ == "__main__":
    main()
