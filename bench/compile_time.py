"""Compile time of a recurrent training step against sequence length: the
LSTM of specs/lstm.nn (hidden 64) over T = 10 and T = 1000 steps, first in a
fresh process with empty caches (NNSPEC_CACHE and NUMBA_CACHE_DIR), then in
a second process on the same caches (a warm restart: nothing compiles, see
tests/test_backend.py::test_second_process_loads_the_step_from_disk).  A
loop node is compiled once whatever T is, so the two columns should match.
The MLP of specs/mlp.nn gives the same two times for a feed-forward step.

    python bench/compile_time.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SPEC = (ROOT / "specs" / "lstm.nn").read_text().split("network")[0] + """
network lstm_t {
    input x: [STEPS, 16]
    output y = (x -> lstm(64)).h -> dense(1)
}
train {
    target v: [1]
    loss = mse(y, v)
    optimizer = sgd(lr = 0.01)
}
"""

RUN = r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
import nnspec
net = nnspec.compile(sys.argv[1], seed=0)
net.set_optimizer("sgd")
T = int(sys.argv[2])
if T:
    net.train_step({"x": np.zeros((4, T, 16), np.float32)}, {"v": np.zeros((4, 1), np.float32)}, 0.01)
else:
    net.train_step({"x": np.zeros((4, 64), np.float32)}, {"label": np.zeros(4, np.int64)}, 0.01)
print(json.dumps(time.perf_counter() - t0))
"""


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for T in (10, 1000, 0):
            env = dict(os.environ, NNSPEC_CACHE=f"{tmp}/c{T}", NUMBA_CACHE_DIR=f"{tmp}/n{T}",
                       PYTHONPATH=str(ROOT))
            text = SPEC.replace("STEPS", str(T)) if T else (ROOT / "specs" / "mlp.nn").read_text()
            times = []
            for _ in ("first", "cached"):
                out = subprocess.run([sys.executable, "-c", RUN, text, str(T)], env=env,
                                     capture_output=True, text=True, check=True)
                times.append(json.loads(out.stdout.strip().splitlines()[-1]))
            rows.append((T, *times))
    print("T       first     cached   (compile + first training step, seconds)")
    for T, first, cached in rows:
        print(f"{T or 'mlp':<6} {first:7.1f} s  {cached:7.2f} s")


if __name__ == "__main__":
    main()
