"""Training steps on an NVIDIA GPU: nnspec --device cuda against PyTorch eager
on CUDA, one table.  Run by bench/gpu_check.sh on a machine with a GPU.

    python bench/gpu.py                  # every workload of bench/run.py
    python bench/gpu.py --only mlp --reps 500

One full training step (forward, backward, SGD update, the loss read back)
in float32 per workload, the median over `reps` steps after a warm-up.
Workloads whose ops have no CUDA kernel yet are listed with the error.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path[:0] = [str(ROOT.parent), str(ROOT)]

from run import WORKLOADS, example_batch, torch_model  # noqa: E402  (bench/run.py)


def nnspec_step(name):
    import nnspec
    x, y, _ = example_batch(name)
    net = nnspec.compile(WORKLOADS[name][0], dtype="float32", device="cuda")
    net.set_optimizer("sgd")
    feeds, targets = {next(iter(net.inputs)): x}, {next(iter(net.targets)): y}
    return lambda: net.train_step(feeds, targets, 0.01)


def torch_step(name):
    import torch
    x, y, classes = example_batch(name)
    torch.manual_seed(0)
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


def median_s(make, name, reps, warmup):
    """The median time of one step, or why it cannot run."""
    try:
        step = make(name)
        for _ in range(warmup):
            step()
        times = []
        for _ in range(max(reps, 1)):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    except Exception as e:          # noqa: BLE001 (reported in the table)
        return f"{type(e).__name__}: {str(e).splitlines()[0][:70]}"
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(WORKLOADS))
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=10, help="steps before timing (compiles)")
    args = ap.parse_args()
    try:
        import torch
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        tv = f"torch {torch.__version__}"
    except ImportError:
        gpu, tv = None, "no torch"
    import numba
    print(f"GPU {gpu or '?'}; numba {numba.__version__}; {tv}")
    print(f"\n{'workload':<10} {'batch':>5} {'nnspec cuda':>12} {'torch cuda':>12} {'ratio':>7}  note")
    for name in args.only:
        ours = median_s(nnspec_step, name, args.reps, args.warmup)
        theirs = median_s(torch_step, name, args.reps, args.warmup) if gpu else "no torch CUDA"
        ok = isinstance(ours, float) and isinstance(theirs, float)
        note = "" if ok else (ours if not isinstance(ours, float) else theirs)
        print(f"{name:<10} {WORKLOADS[name][1]:>5} {_fmt(ours):>12} {_fmt(theirs):>12} "
              f"{(ours / theirs if ok else float('nan')):>7.2f}  {note}")


def _fmt(t) -> str:
    return f"{t * 1e3:.3f} ms" if isinstance(t, float) else "-"


if __name__ == "__main__":
    main()
