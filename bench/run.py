"""Training-step benchmarks: nnspec against PyTorch eager on the CPU.

    python bench/run.py                      # every workload, nnspec and (if importable) torch
    python bench/run.py --torch-python /tmp/venv-torch/bin/python   # torch from another venv
    python bench/run.py --only mlp_small --rounds 3 --seconds 0.5
    python bench/run.py --jax-python /tmp/venv-jax/bin/python      # JAX's jit too
    python bench/busy.py ...                 # quiet and beside a busy process per core

One full training step (forward, backward, SGD update) in float32 per
workload.  Each framework runs in its own worker process (their thread pools
fight in one process); the parent alternates between workers round after
round and reports the median of each worker's per-step times, so a noisy
neighbour hurts both sides alike.  The machine's float32 GEMM rate (NumPy's
BLAS, 1024^3) gives the MLP's fraction of peak.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# name: (spec, batch, flops per example of one training step: 3x the forward MACs x 2)
WORKLOADS = {
    "mlp": ("""
network mlp {
    input x: [784]
    output logits = x -> dense(512) -> relu -> dense(256) -> relu -> dense(10)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.01)
}
""", 128, (784, 10)),
    "lenet5": ("""
network lenet5 {
    input x: [1, 28, 28]
    output logits = x
        -> conv2d(6, 5, pad=2) -> relu -> maxpool(2)
        -> conv2d(16, 5) -> relu -> maxpool(2)
        -> flatten -> dense(120) -> relu -> dense(84) -> relu -> dense(10)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.01)
}
""", 64, ((1, 28, 28), 10)),
    "resnet": ("""
block basic(c)(x) {
    y = x -> conv2d(c, 3, pad=1, bias=false) -> batchnorm -> relu
          -> conv2d(c, 3, pad=1, bias=false) -> batchnorm
    return relu(y + x)
}
network resnet {
    input x: [3, 32, 32]
    output logits = x -> conv2d(32, 3, pad=1, bias=false) -> batchnorm -> relu
        -> basic(32) -> basic(32) -> global_avgpool -> dense(10)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.01)
}
""", 32, ((3, 32, 32), 10)),
    "mlp_small": ("""
network mlp_small {
    input x: [64]
    output logits = x -> dense(32) -> tanh -> dense(10)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.01)
}
""", 16, (64, 10)),
}


# recurrent workloads (classes 0: a regression, target [1]); each runs all T
# steps of its loop, forward and backward, inside the one compiled step
LSTM_CELL = """
cell lstm(n)(x) {
    state h = zeros(n)
    state c = zeros(n)
    i = sigmoid(dense(x[t], n) + dense(h[t-1], n, bias=false))
    f = sigmoid(dense(x[t], n) + dense(h[t-1], n, bias=false))
    g = tanh(dense(x[t], n) + dense(h[t-1], n, bias=false))
    o = sigmoid(dense(x[t], n) + dense(h[t-1], n, bias=false))
    c[t] = f * c[t-1] + i * g
    h[t] = o * tanh(c[t])
    return h
}
"""
WORKLOADS.update({
    "gru": ((ROOT / "specs" / "gru.nn").read_text().split("network")[0] + """
network gru_reg {
    input x: [100, 8]
    output y = (x -> gru(32)).h -> dense(1)
}
train {
    target v: [1]
    loss = mse(y, v)
    optimizer = sgd(lr = 0.01)
}
""", 1, ((100, 8), 0)),
    "lstm": ((ROOT / "specs" / "lstm.nn").read_text().split("network")[0] + """
network lstm_clf {
    input x: [64, 64]
    output logits = (x -> lstm(256)).h -> dense(10)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.01)
}
""", 32, ((64, 64), 10)),
    "lstm_cell": (LSTM_CELL + """
network lstm_cell {
    input x: [50, 16]
    output logits = (x -> lstm(64)).h -> dense(10)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.01)
}
""", 8, ((50, 16), 10)),
})


# ---- workers ----------------------------------------------------------------------

def torch_model(name):
    import torch
    from torch import nn

    class Basic(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.f = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c),
                                   nn.ReLU(), nn.Conv2d(c, c, 3, padding=1, bias=False),
                                   nn.BatchNorm2d(c))

        def forward(self, x):
            return torch.relu(self.f(x) + x)

    if name == "mlp":
        return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 256), nn.ReLU(),
                             nn.Linear(256, 10))
    if name == "lenet5":
        return nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(),
                             nn.Linear(84, 10))
    if name == "resnet":
        return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                             nn.ReLU(), Basic(32), Basic(32), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten(), nn.Linear(32, 10))
    if name == "mlp_small":
        return nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))

    class Last(nn.Module):          # torch.nn.GRU / LSTM, a dense layer on the last step
        def __init__(self, rnn, n, out):
            super().__init__()
            self.rnn, self.head = rnn, nn.Linear(n, out)

        def forward(self, x):
            return self.head(self.rnn(x)[0][:, -1])

    class Cell(nn.Module):          # the hand-written LSTM cell, a Python loop over t
        def __init__(self, f, n, out):
            super().__init__()
            self.n, self.head = n, nn.Linear(n, out)
            self.wx, self.wh = nn.Linear(f, 4 * n), nn.Linear(n, 4 * n, bias=False)

        def forward(self, x):
            n = self.n
            h = c = x.new_zeros(x.shape[0], n)
            for t in range(x.shape[1]):
                z = self.wx(x[:, t]) + self.wh(h)
                i, f = torch.sigmoid(z[:, :n]), torch.sigmoid(z[:, n:2 * n])
                g, o = torch.tanh(z[:, 2 * n:3 * n]), torch.sigmoid(z[:, 3 * n:])
                c = f * c + i * g
                h = o * torch.tanh(c)
            return self.head(h)

    if name == "gru":
        return Last(nn.GRU(8, 32, batch_first=True), 32, 1)
    if name == "lstm":
        return Last(nn.LSTM(64, 256, batch_first=True), 256, 10)
    if name == "lstm_cell":
        return Cell(16, 64, 10)
    raise KeyError(name)


def jax_model(name):
    """(params, loss(params, x, y)): the workload in JAX, initialised like
    PyTorch's layers (uniform in +-1/sqrt(fan_in)); batch norm in training
    mode (batch statistics, no running averages)."""
    import jax
    import jax.numpy as jnp
    from jax import lax

    keys = iter(jax.random.split(jax.random.PRNGKey(0), 64))

    def uni(shape, fan_in):
        b = 1.0 / fan_in ** 0.5
        return jax.random.uniform(next(keys), shape, jnp.float32, -b, b)

    def dense(a, b, bias=True):
        return {"w": uni((a, b), a), **({"b": uni((b,), a)} if bias else {})}

    def lin(p, x):
        y = x @ p["w"]
        return y + p["b"] if "b" in p else y

    def conv(c_in, c_out, k, bias=True):
        fan = c_in * k * k
        return {"w": uni((c_out, c_in, k, k), fan), **({"b": uni((c_out,), fan)} if bias else {})}

    def conv2d(p, x, pad):
        y = lax.conv_general_dilated(x, p["w"], (1, 1), [(pad, pad), (pad, pad)],
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
        return y + p["b"][None, :, None, None] if "b" in p else y

    def maxpool(x):
        return lax.reduce_window(x, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    def bn(c):
        return {"g": jnp.ones((c,), jnp.float32), "b": jnp.zeros((c,), jnp.float32)}

    def batchnorm(p, x):
        m = x.mean(axis=(0, 2, 3), keepdims=True)
        v = ((x - m) ** 2).mean(axis=(0, 2, 3), keepdims=True)
        g, b = p["g"][None, :, None, None], p["b"][None, :, None, None]
        return (x - m) * lax.rsqrt(v + 1e-5) * g + b

    def xent(logits, y):
        lp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(lp, y[:, None], axis=1).mean()

    def lstm(p, x, n):              # x: [B, T, F]; gates i, f, g, o as PyTorch orders them
        def cell(hc, xt):
            h, c = hc
            z = lin(p["x"], xt) + lin(p["h"], h)
            i, f = jax.nn.sigmoid(z[:, :n]), jax.nn.sigmoid(z[:, n:2 * n])
            g, o = jnp.tanh(z[:, 2 * n:3 * n]), jax.nn.sigmoid(z[:, 3 * n:])
            c = f * c + i * g
            h = o * jnp.tanh(c)
            return (h, c), None
        h0 = jnp.zeros((x.shape[0], n), x.dtype)
        (h, _), _ = lax.scan(cell, (h0, h0), jnp.swapaxes(x, 0, 1))
        return h

    def gru(p, x, n):
        def cell(h, xt):
            a, b = lin(p["x"], xt), lin(p["h"], h)
            r = jax.nn.sigmoid(a[:, :n] + b[:, :n])
            z = jax.nn.sigmoid(a[:, n:2 * n] + b[:, n:2 * n])
            g = jnp.tanh(a[:, 2 * n:] + r * b[:, 2 * n:])
            return (1 - z) * g + z * h, None
        h, _ = lax.scan(cell, jnp.zeros((x.shape[0], n), x.dtype), jnp.swapaxes(x, 0, 1))
        return h

    if name in ("mlp", "mlp_small"):
        sizes = (784, 512, 256, 10) if name == "mlp" else (64, 32, 10)
        act = jax.nn.relu if name == "mlp" else jnp.tanh
        params = [dense(a, b) for a, b in zip(sizes[:-1], sizes[1:])]

        def forward(ps, x):
            for p in ps[:-1]:
                x = act(lin(p, x))
            return lin(ps[-1], x)
    elif name == "lenet5":
        params = {"c1": conv(1, 6, 5), "c2": conv(6, 16, 5), "d1": dense(400, 120),
                  "d2": dense(120, 84), "d3": dense(84, 10)}

        def forward(ps, x):
            x = maxpool(jax.nn.relu(conv2d(ps["c1"], x, 2)))
            x = maxpool(jax.nn.relu(conv2d(ps["c2"], x, 0)))
            x = x.reshape(x.shape[0], -1)
            x = jax.nn.relu(lin(ps["d1"], x))
            return lin(ps["d3"], jax.nn.relu(lin(ps["d2"], x)))
    elif name == "resnet":
        params = {"c0": conv(3, 32, 3, False), "n0": bn(32), "out": dense(32, 10),
                  "blocks": [{"c1": conv(32, 32, 3, False), "n1": bn(32),
                              "c2": conv(32, 32, 3, False), "n2": bn(32)} for _ in range(2)]}

        def forward(ps, x):
            x = jax.nn.relu(batchnorm(ps["n0"], conv2d(ps["c0"], x, 1)))
            for b in ps["blocks"]:
                y = jax.nn.relu(batchnorm(b["n1"], conv2d(b["c1"], x, 1)))
                x = jax.nn.relu(batchnorm(b["n2"], conv2d(b["c2"], y, 1)) + x)
            return lin(ps["out"], x.mean(axis=(2, 3)))
    elif name in ("lstm", "lstm_cell"):
        f, n = (64, 256) if name == "lstm" else (16, 64)
        params = {"x": dense(f, 4 * n), "h": dense(n, 4 * n, bias=name == "lstm"),
                  "out": dense(n, 10)}

        def forward(ps, x):
            return lin(ps["out"], lstm(ps, x, n))
    elif name == "gru":
        params = {"x": dense(8, 96), "h": dense(32, 96), "out": dense(32, 1)}

        def forward(ps, x):
            return lin(ps["out"], gru(ps, x, 32))
    else:
        raise KeyError(name)

    classes = WORKLOADS[name][2][1]

    def loss(ps, x, y):
        out = forward(ps, x)
        return xent(out, y) if classes else ((out - y) ** 2).mean()
    return params, loss


def example_batch(name):
    """(x, y, classes): a workload's float32 batch and targets (classes 0: a regression)."""
    import numpy as np
    spec, batch, (shape, classes) = WORKLOADS[name]
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + shape).astype(np.float32)
    y = (rng.integers(0, classes, batch).astype(np.int64) if classes
         else rng.standard_normal((batch, 1)).astype(np.float32))
    return x, y, classes


def make_step(framework, name):
    """A no-argument function running one training step, after warm-up."""
    import numpy as np
    spec = WORKLOADS[name][0]
    x, y, classes = example_batch(name)
    if framework.startswith("nnspec"):      # nnspec, or another checkout's (bench/busy.py --before)
        sys.path.insert(0, os.environ.get("NNSPEC_BENCH_ROOT", str(ROOT)))
        import nnspec
        net = nnspec.compile(spec, dtype="float32")
        net.set_optimizer("sgd")
        (xin,), (tgt,) = list(net.inputs), list(net.targets)
        feeds, targets = {xin: x}, {tgt: y}

        def step():
            return net.train_step(feeds, targets, 0.01)

        def paced_one():
            """Whether the last step ran on one thread by the pacer's choice
            (backend/cores.py); None where no pacer chose."""
            pacer = getattr(net, "_pacer", None)
            pace = pacer.paces.get(x.shape) if pacer is not None and pacer.active else None
            return None if pace is None else pace._ran
        step.paced_one = paced_one
    elif framework == "jax":
        import jax
        params, loss_fn = jax_model(name)

        @jax.jit
        def sgd(ps, xb, yb):
            loss, g = jax.value_and_grad(loss_fn)(ps, xb, yb)
            return jax.tree_util.tree_map(lambda p, d: p - 0.01 * d, ps, g), loss

        xj, yj = jax.device_put(x), jax.device_put(y.astype(np.int32) if classes else y)
        state = [params]

        def step():
            state[0], loss = sgd(state[0], xj, yj)
            return float(loss)
    else:
        import torch
        torch.manual_seed(0)
        model = torch_model(name)
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        loss_fn = torch.nn.CrossEntropyLoss() if classes else torch.nn.MSELoss()
        xt, yt = torch.from_numpy(x), torch.from_numpy(y)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xt), yt)
            loss.backward()
            opt.step()
            return loss.item()
    for _ in range(5):
        step()
    return step


def worker(framework: str):
    """Read commands on stdin ("name reps [seconds]"), answer per-step seconds
    as JSON: `reps` steps, or fewer (at least 3) once `seconds` have passed."""
    steps = {}
    for line in sys.stdin:
        name, reps, *limit = line.split()
        end = time.perf_counter() + float(limit[0]) if limit else float("inf")
        if name not in steps:
            t0 = time.perf_counter()
            steps[name] = make_step(framework, name)
            print(json.dumps({"setup": time.perf_counter() - t0}), flush=True)
            continue
        step, times, one = steps[name], [], []
        paced_one = getattr(step, "paced_one", None)
        for i in range(int(reps)):
            t0 = time.perf_counter()
            step()
            times.append(time.perf_counter() - t0)
            if paced_one is not None and paced_one() is not None:
                one.append(paced_one())
            if i >= 2 and t0 + times[-1] > end:
                break
        print(json.dumps({"times": times} | ({"one": one} if one else {})), flush=True)


class Worker:
    def __init__(self, framework, python, **env):
        env = dict(os.environ, PYTHONPATH=env.get("NNSPEC_BENCH_ROOT", str(ROOT)), **env)
        self.framework = framework
        self.p = subprocess.Popen([python, __file__, "--worker", framework], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, name, reps=0, seconds=None) -> dict:
        self.p.stdin.write(f"{name} {reps}" + (f" {seconds}" if seconds else "") + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.framework} worker died on {name}")
        return json.loads(line)

    def close(self):
        self.p.stdin.close()
        self.p.wait()


# ---- the machine -----------------------------------------------------------------

def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def blas_core() -> str:
    """The kernel set NumPy's OpenBLAS runs (OPENBLAS_CORETYPE forces one).  Not
    nnspec.backend.jit.openblas_core: importing nnspec.backend sets
    OMP_WAIT_POLICY=PASSIVE, which the torch worker would inherit (PyTorch's
    LSTM 12 -> 33 ms)."""
    import ctypes

    import numpy  # noqa: F401  (loads its OpenBLAS)
    try:
        with open("/proc/self/maps") as f:
            libs = sorted({ln.split()[-1] for ln in f if "openblas" in ln and ".so" in ln})
        for path in libs:
            lib = ctypes.CDLL(path)
            for name in ("scipy_openblas_get_corename64_", "scipy_openblas_get_corename",
                         "openblas_get_corename64_", "openblas_get_corename"):
                fn = getattr(lib, name, None)
                if fn is not None:
                    fn.restype = ctypes.c_char_p
                    return fn().decode()
    except OSError:
        pass
    return "unknown"


def gemm_gflops(n=1024, reps=10) -> float:
    import numpy as np
    a = np.random.rand(n, n).astype(np.float32)
    b = np.random.rand(n, n).astype(np.float32)
    c = np.empty_like(a)
    np.dot(a, b, out=c)
    best = min(_timed(lambda: np.dot(a, b, out=c)) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def mlp_flops(batch=128, sizes=(784, 512, 256, 10)) -> float:
    """FLOPs of one MLP training step: forward, backward (no input gradient
    for the first layer)."""
    macs = sum(a * b for a, b in zip(sizes[:-1], sizes[1:]))
    first = sizes[0] * sizes[1]
    return 2 * batch * (3 * macs - first)


def importable(python, module="torch") -> bool:
    r = subprocess.run([python, "-c", f"import {module}"], capture_output=True)
    return r.returncode == 0


def frameworks_for(args) -> dict:
    """framework -> python running its worker: nnspec, and torch and JAX
    where their pythons import them."""
    frameworks = {"nnspec": sys.executable}
    for f, python, module in (("torch", args.torch_python, "torch"),
                              ("jax", args.jax_python, "jax")):
        if python is None:
            continue
        if importable(python, module):
            frameworks[f] = python
        else:
            print(f"note: {module} is not importable by {python}; without it", file=sys.stderr)
    return frameworks


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--only", nargs="*", default=list(WORKLOADS))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=0.3, help="per worker per round")
    ap.add_argument("--torch-python", default=sys.executable,
                    help="python of a venv with torch (never a dependency of nnspec)")
    ap.add_argument("--jax-python", help="python of a venv with jax: its jit of the same step")
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker)

    frameworks = frameworks_for(args)
    gflops = gemm_gflops()
    forced = os.environ.get("OPENBLAS_CORETYPE")
    core = blas_core() + (" (OPENBLAS_CORETYPE)" if forced else "")
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; OpenBLAS kernels {core}; "
          f"float32 GEMM (NumPy BLAS, 1024^3) {gflops:.0f} GFLOP/s")
    workers = {f: Worker(f, py) for f, py in frameworks.items()}
    results = {}
    try:
        for name in args.only:
            setup = {f: w.ask(name)["setup"] for f, w in workers.items()}
            # calibrate repetitions so a round takes about args.seconds
            reps = {}
            for f, w in workers.items():
                t = statistics.median(w.ask(name, 5)["times"])
                reps[f] = max(3, int(args.seconds / max(t, 1e-7)))
            times = {f: [] for f in workers}
            for _ in range(args.rounds):
                for f, w in workers.items():          # alternate between the workers
                    times[f] += w.ask(name, reps[f])["times"]
            med = {f: statistics.median(ts) for f, ts in times.items()}
            results[name] = {"median_s": med, "setup_s": setup, "samples": {
                f: len(ts) for f, ts in times.items()}}
    finally:
        for w in workers.values():
            w.close()

    jax = "jax" in frameworks
    print(f"\n{'workload':<10} {'batch':>5} {'nnspec':>11} {'torch':>11} {'ratio':>7}"
          + (f" {'jax':>11} {'ratio':>7}" if jax else "") + "  note")
    for name, r in results.items():
        nn_t = r["median_s"]["nnspec"]
        th_t = r["median_s"].get("torch")
        ratio = f"{nn_t / th_t:7.2f}" if th_t else "      -"
        if jax:
            jx_t = r["median_s"]["jax"]
            ratio += f" {_fmt(jx_t):>11} {nn_t / jx_t:7.2f}"
        note = ""
        if name == "mlp":
            rate = mlp_flops() / nn_t / 1e9
            note = f"{rate:.0f} GFLOP/s = {100 * rate / gflops:.0f}% of GEMM"
        if th_t:
            note += f"{'; ' if note else ''}{th_t / nn_t:.1f}x faster" if th_t > nn_t else ""
        print(f"{name:<10} {WORKLOADS[name][1]:>5} {_fmt(nn_t):>11} "
              f"{_fmt(th_t) if th_t else '-':>11} {ratio}  {note}")
    print("\nsetup (compile or cache load, first steps):",
          ", ".join(f"{n}: " + "/".join(f"{f} {s:.1f}s" for f, s in r["setup_s"].items())
                    for n, r in results.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"gemm_gflops": gflops, "cpu": cpu_model(),
                                               "openblas": core,
                                               "cores": os.cpu_count(), "results": results},
                                              indent=1))


def _fmt(t) -> str:
    return f"{t * 1e6:.1f} us" if t < 1e-3 else f"{t * 1e3:.2f} ms"


if __name__ == "__main__":
    main()
