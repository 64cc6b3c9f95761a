"""Convolution kernels alone: forward, input gradient and weight gradient at
ResNet-18's shapes (batch 8, float32), each the median of several calls, in
milliseconds and GFLOP/s; optionally PyTorch's forward and backward at the
same shapes, in its own process.

    python bench/conv_times.py                     # every shape
    python bench/conv_times.py 2 3 --calls 9       # shapes 2 and 3 of SHAPES
    python bench/conv_times.py --torch-python /tmp/venv-torch/bin/python

PyTorch's backward is the input and weight gradients together (its input
requires a gradient, as inside a network).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

# (input channels, size, output channels, kernel, stride): ResNet-18's
SHAPES = [(64, 56, 64, 3, 1), (128, 28, 128, 3, 1), (256, 14, 256, 3, 1),
          (512, 7, 512, 3, 1), (64, 56, 128, 3, 2), (128, 28, 256, 3, 2),
          (256, 14, 512, 3, 2), (3, 224, 64, 7, 2)]

TORCH = r"""
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
B, calls = int(sys.argv[2]), int(sys.argv[3])
for spec in sys.argv[4:]:
    c, n, o, k, s = map(int, spec.split(","))
    x = torch.randn(B, c, n, n, requires_grad=True)
    conv = torch.nn.Conv2d(c, o, k, s, k // 2, bias=False)
    y = conv(x)
    g = torch.randn_like(y)
    tf, tb = [], []
    for _ in range(calls):
        t = time.perf_counter(); y = conv(x); tf.append(time.perf_counter() - t)
        t = time.perf_counter(); y.backward(g); tb.append(time.perf_counter() - t)
    print(sorted(tf)[calls // 2], sorted(tb)[calls // 2], flush=True)
"""


def flops(c, n, o, k, s, batch):
    no = (n + 2 * (k // 2) - k) // s + 1
    return 2 * batch * no * no * o * c * k * k, no


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("which", nargs="*", type=int, help="indices into SHAPES (default: all)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--torch-python", help="a Python with torch: its times too")
    args = ap.parse_args()
    shapes = [SHAPES[i] for i in args.which] if args.which else SHAPES

    from nnspec.backend.cpu import use_threads
    from nnspec.backend.jit import compile_module
    from nnspec.ops import conv
    compile_module(conv)
    use_threads(0)
    import numba
    threads = numba.get_num_threads()
    rng = np.random.default_rng(0)
    rows = []
    for (c, n, o, k, s) in shapes:
        attrs = {"stride": [s, s], "dilation": [1, 1], "pad": [[k // 2, k // 2]] * 2,
                 "groups": 1}
        extra = conv._extra(attrs, 2)
        f, no = flops(c, n, o, k, s, args.batch)
        x = rng.standard_normal((args.batch, c, n, n)).astype(np.float32)
        w = rng.standard_normal((o, c, k, k)).astype(np.float32)
        y = np.empty((args.batch, o, no, no), np.float32)
        g = rng.standard_normal(y.shape).astype(np.float32)
        dx, dw = np.empty_like(x), np.empty_like(w)
        times = []
        for fn, a in ((conv.conv_nobias, (x, w, y)), (conv.conv_grad_input, (g, w, x, dx)),
                      (conv.conv_grad_weight, (x, g, w, dw))):
            fn(*a, *extra)                  # compiles (or loads) first
            ts = []
            for _ in range(args.calls):
                t = time.perf_counter()
                fn(*a, *extra)
                ts.append(time.perf_counter() - t)
            times.append(sorted(ts)[args.calls // 2])
        rows.append(((c, n, o, k, s), f, times))
    torch_times = {}
    if args.torch_python:
        out = subprocess.run([args.torch_python, "-c", TORCH, str(threads), str(args.batch),
                              str(args.calls)] + [",".join(map(str, sh)) for sh in shapes],
                             capture_output=True, text=True, check=True)
        for sh, line in zip(shapes, out.stdout.split("\n")):
            torch_times[sh] = tuple(float(v) for v in line.split())
    print(f"{'in':>4} {'size':>4} {'out':>4} {'k':>2} {'s':>2}   {'forward':>14} "
          f"{'input grad':>14} {'weight grad':>14}" + ("   torch fwd / bwd" if torch_times else ""))
    for sh, f, (a, b, c) in rows:
        cells = " ".join(f"{t * 1e3:6.1f} ms {f / t / 1e9:4.0f}" for t in (a, b, c))
        extra = ""
        if sh in torch_times:
            tf, tb = torch_times[sh]
            extra = f"   {tf * 1e3:6.1f} / {tb * 1e3:6.1f} ms"
        print(f"{sh[0]:>4} {sh[1]:>4} {sh[2]:>4} {sh[3]:>2} {sh[4]:>2}   {cells}{extra}")
    print(f"(ms and GFLOP/s per call, batch {args.batch}, {threads} threads)")


if __name__ == "__main__":
    sys.exit(main())
