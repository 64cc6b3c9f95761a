"""One compiled function per step, or the same kernels called from Python?

    python bench/dispatch.py [--batch 16] [--reps 3000]

Times a training step of the MLP 64-32-10 tanh (float32, cross-entropy, SGD)
both ways: the generated step under @njit (what nnspec runs), and the same
generated code as a plain Python function calling each compiled kernel and
fused loop in turn (`whole=False`).  Also the raw call of the compiled step
without the Network's input checks.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPEC = """
network mlp_small {
    input x: [64]
    output logits = x -> dense(32) -> tanh -> dense(10)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.01)
}
"""


def timeit(fn, reps) -> float:
    for _ in range(20):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3000)
    args = ap.parse_args()
    import nnspec
    from nnspec.backend.cpu import compile_program
    net = nnspec.compile(SPEC, dtype="float32")
    rng = np.random.default_rng(0)
    x = {"x": rng.standard_normal((args.batch, 64)).astype(np.float32)}
    y = {"label": rng.integers(0, 10, args.batch)}
    net.train_step(x, y, 0.01)
    whole = net._train
    hp = net._hp(0.01)
    feeds = net._feeds(x, y)
    listed = compile_program(net.graph, "train", "float32", net._playout, net._slayout,
                             {"name": "sgd"}, whole=False)
    args_ = (net._P, net._S, net._G, net._M, net._V, hp)
    rows = [
        ("Network.train_step (whole step, @njit)", lambda: net.train_step(x, y, 0.01)),
        ("compiled step, raw call", lambda: whole(*args_, feeds)),
        ("kernels called from Python", lambda: listed(*args_, feeds)),
    ]
    for name, fn in rows:
        print(f"{name:<42} {timeit(fn, args.reps) * 1e6:8.1f} us")


if __name__ == "__main__":
    main()
