"""Large steps run as calls into shared kernels (backend/kernels.py): what
is compiled is one kernel per distinct signature, whatever the depth."""
import numpy as np
import pytest

import nnspec
from nnspec.backend import cpu
from nnspec.ops import all_ops

SPEC = """
block basic(c)(x) {
    y = x -> conv2d(c, 3, pad=1, bias=false) -> batchnorm -> relu
          -> conv2d(c, 3, pad=1, bias=false) -> batchnorm
    return relu(y + x)
}
network deep(depth = 2) {
    input x: [3, 8, 8]
    output logits = x -> conv2d(6, 3, pad=1) -> relu -> basic(6) * depth
                      -> global_avgpool -> dense(4)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.05, momentum = 0.9)
}
"""


def kernels_of(step) -> dict:
    """Every compiled kernel the step module calls: name -> dispatcher."""
    mod = step.module
    out = {}
    for name, v in vars(mod).items():
        if hasattr(v, "signatures") and not name.startswith("step"):
            out[name] = v
        elif getattr(v, "__name__", "").startswith("nnspec.ops."):   # an op module
            for fn, d in vars(v).items():
                if hasattr(d, "signatures") and f"{name}.{fn}(" in step.source:
                    out[f"{v.__name__}.{fn}"] = d
    return out


def train_once(depth, monkeypatch):
    monkeypatch.setenv("NNSPEC_DRIVER", "calls")
    net = nnspec.compile(SPEC, set={"depth": depth}, seed=depth)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 4, 3)
    loss = net.train_step({"x": x}, {"label": y}, 0.05)
    step = net._train
    assert not step.whole
    return loss, kernels_of(step), step


def test_deeper_networks_compile_no_new_kernels(monkeypatch):
    loss2, k2, step2 = train_once(2, monkeypatch)
    compiled = {name: len(d.signatures) for name, d in k2.items()}
    assert compiled and np.isfinite(loss2)
    for depth in (8, 32):
        loss, k, _ = train_once(depth, monkeypatch)
        assert np.isfinite(loss)
        assert set(k) == set(k2), f"depth {depth} calls kernels depth 2 does not"
        # every signature was compiled already: depth adds calls, not kernels
        assert {name: len(d.signatures) for name, d in k.items()} == compiled


def test_step_of_calls_matches_reference(monkeypatch):
    """A training step of calls against the NumPy interpreter (what a step
    runs when the backend cannot compile its graph, or with
    NNSPEC_DRIVER=reference), in float64."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 8, 8))
    y = rng.integers(0, 4, 3)
    out = {}
    for driver in ("calls", "reference"):
        monkeypatch.setenv("NNSPEC_DRIVER", driver)
        net = nnspec.compile(SPEC, dtype="float64", seed=3)
        loss = net.train_step({"x": x}, {"label": y}, 0.05)
        assert type(net._train).__name__ == ("CompiledStep" if driver == "calls"
                                             else "ReferenceStep")
        assert getattr(net._train, "whole", None) is (False if driver == "calls" else None)
        out[driver] = (loss, net.state_dict(), net.forward(x=x)["logits"])
    (l1, s1, f1), (l2, s2, f2) = out["calls"], out["reference"]
    assert np.isclose(l1, l2, rtol=1e-12)
    for k in s1:
        np.testing.assert_allclose(s1[k], s2[k], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(f1, f2, rtol=1e-10, atol=1e-12)


def test_driver_chosen_by_size(monkeypatch):
    monkeypatch.delenv("NNSPEC_DRIVER", raising=False)
    small = nnspec.lower(SPEC, set={"depth": 1})
    large = nnspec.lower(SPEC, set={"depth": 12})
    from nnspec.passes.pipeline import build
    assert cpu.choose_whole(build(small, "train", "float32"))
    assert not cpu.choose_whole(build(large, "train", "float32"))


PRECOMPILE = r"""
import json, sys
import numpy as np
import nnspec
from nnspec.backend import cpu, precompile
counted = []
real = precompile.precompile
def counting(step, args, progress=None):
    counted.append(real(step, args, progress))
    return counted[-1]
cpu.precompile = counting
spec = '''
network mlp { input x: [5]
    output y = x -> dense(7) -> tanh -> dense(3) }
train { target label: int
    loss = cross_entropy(y, label)
    optimizer = sgd(lr = 0.1, momentum = 0.9) }
'''
net = nnspec.compile(spec, dtype="float64", seed=0)
rng = np.random.default_rng(0)
x, y = rng.standard_normal((4, 5)), rng.integers(0, 3, 4)
losses = [net.train_step({"x": x}, {"label": y}, 0.1) for _ in range(3)]
loaded = 0
for (kind, where, name) in precompile.calls_of(
        net._train, (net._P, net._S, net._G, net._M, net._V, net._hp(0.1),
                     *net._train.arenas(4), x, y)):
    d = precompile._dispatcher(kind, where, name)
    loaded += sum(d._cache_hits.values())
print(json.dumps({"losses": [float(v) for v in losses], "tasks": counted[0],
                  "loaded": loaded}))
"""


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_precompile_on_two_cores_loads_what_the_worker_compiled(jobs, tmp_path):
    import json
    import os
    import subprocess
    import sys
    env = dict(os.environ, NNSPEC_CACHE=str(tmp_path / "c"), NUMBA_CACHE_DIR=str(tmp_path / "n"),
               NNSPEC_DRIVER="calls", NNSPEC_COMPILE_JOBS=jobs)
    out = subprocess.run([sys.executable, "-c", PRECOMPILE], env=env, capture_output=True,
                         text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert np.isfinite(r["losses"]).all() and r["losses"][2] < r["losses"][0]
    if jobs == "1":       # compiled as it runs, nothing from the disk cache
        assert r["tasks"] == 0 and r["loaded"] == 0
    else:                 # the worker's share loaded from the cache it wrote
        assert r["tasks"] >= 2 and r["loaded"] >= 1
    # the same training either way (float64, same kernels)
    np.testing.assert_allclose(r["losses"], REFERENCE_LOSSES.setdefault("mlp", r["losses"]),
                               rtol=1e-12)
    if jobs == "2":       # a second process on the same caches: nothing to compile,
        # no worker; the kernels it needs are loaded before the first run
        out = subprocess.run([sys.executable, "-c", PRECOMPILE], env=env, capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, out.stderr[-2000:]
        warm = json.loads(out.stdout.strip().splitlines()[-1])
        assert warm["tasks"] == 0 and warm["loaded"] >= r["tasks"]
        np.testing.assert_allclose(warm["losses"], r["losses"], rtol=1e-12)


REFERENCE_LOSSES: dict = {}


def test_cores_follow_affinity_and_cgroup_quota(monkeypatch, tmp_path):
    from nnspec.backend import cores
    monkeypatch.setattr(cores.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(cores, "_quota", lambda: None)
    assert cores.available() == 4
    monkeypatch.setattr(cores, "_quota", lambda: 1.5)      # docker --cpus 1.5
    assert cores.available() == 1
    monkeypatch.setattr(cores, "_quota", lambda: 0.2)
    assert cores.available() == 1
    monkeypatch.setattr(cores, "_quota", lambda: 8.0)
    assert cores.available() == 4
    monkeypatch.setattr(cores, "_quota", lambda: None)
    monkeypatch.setenv("NNSPEC_COMPILE_JOBS", "3")
    from nnspec.backend.precompile import jobs
    assert jobs() == 3


def test_kernels_that_share_code_compile_in_one_process():
    """precompile hands the kernels an op module lists in one COMPILE_TOGETHER
    group (conv's Winograd kernels, which share their parallel loop; the
    general forward and input gradient) to one process as a unit, the
    longest alone first; its cost is that one's alone and the others' after
    it (COMPILE_SECONDS_SHARED, less); other kernels are units of their own."""
    from nnspec.backend import precompile
    from nnspec.ops import conv
    wino, general = conv.COMPILE_TOGETHER
    tasks = [("op", "nnspec.ops.conv", "conv_wino_grad_input", [()]),
             ("op", "nnspec.ops.conv", "conv_nobias", [()]),
             ("kernel", "x", "k1", [()]),
             ("op", "nnspec.ops.conv", "conv_wino_nobias", [()]),
             ("op", "nnspec.ops.conv", "conv_grad_weight", [()]),
             ("op", "nnspec.ops.conv", "conv_bias", [(), ()])]
    units = precompile._units(tasks)
    assert [[t[2] for t in u] for u in units] == [
        ["conv_wino_nobias", "conv_wino_grad_input"], ["conv_bias", "conv_nobias"], ["k1"],
        ["conv_grad_weight"]]
    assert {"conv_wino_nobias", "conv_wino_grad_input"} <= set(wino)
    assert {"conv_nobias", "conv_bias"} <= set(general)
    cost = precompile._cost
    assert cost(tasks[0], shared=True) < cost(tasks[0])
    assert precompile._unit_cost(units[0]) == cost(tasks[3]) + cost(tasks[0], shared=True)
    # two signatures of conv_bias: its cost twice, and it goes first
    assert cost(tasks[5]) == 2 * cost(tasks[1])
    assert precompile._unit_cost(units[1]) == cost(tasks[5]) + cost(tasks[1], shared=True)
    # the estimates come from the op modules' COMPILE_SECONDS: a general
    # convolution kernel over a Winograd one over a generated kernel
    assert cost(tasks[1]) > cost(tasks[3]) > cost(tasks[2]) == 1


def test_kernels_compile_their_callees_once_for_plain_types():
    """A constant argument (`False`, `1`) reaches a callee as a plain bool or
    int, not as a literal of its own (backend/jit._unliteral_calls), so the
    forward with and without a bias, and the input gradient, share their
    compiled helpers: a call typed with literals compiles (or loads) the
    plain signature, and no helper of the convolution or pool modules holds
    a literal in any signature it has."""
    from numba.core import types

    from nnspec.backend.jit import jitted
    from nnspec.ops import conv, pool
    rng = np.random.default_rng(3)
    attrs = {"stride": [1, 1], "dilation": [1, 1], "pad": [[1, 1], [1, 1]], "groups": 1}
    extra = conv._extra(attrs, 2)
    x = rng.standard_normal((2, 16, 5, 6))          # channels-last rows: 16 channels
    w, b = rng.standard_normal((16, 16, 3, 3)), rng.standard_normal(16)
    y, y_b, dx = np.empty((2, 16, 5, 6)), np.empty((2, 16, 5, 6)), np.empty(x.shape)
    jitted(conv.conv_nobias)(x, w, y, *extra)
    jitted(conv.conv_bias)(x, w, b, y_b, *extra)
    jitted(conv.conv_grad_input)(y, w, x, dx, *extra)
    np.testing.assert_allclose(y_b, y + b[:, None, None], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, all_ops()["conv_grad_input"].reference(attrs, y, w, x),
                               rtol=1e-10, atol=1e-10)
    lit = (types.int64, types.literal(1), types.literal(1), types.literal(2))
    _, _, args, _ = conv._chunk.get_call_template(lit, {})
    assert not any(isinstance(a, types.Literal) for a in args)
    assert (types.int64,) * 4 in [tuple(s) for s in conv._chunk.signatures]
    _, _, args, _ = conv._rows_weights.get_call_template(
        (types.float64[:, :, :, ::1], types.int64, types.literal(True),
         types.DType(types.float64)), {})
    assert args[2] == types.boolean
    for module in (conv, pool):
        for name, d in vars(module).items():
            for sig in getattr(d, "signatures", ()):
                assert not any(isinstance(a, types.Literal) for a in sig), (name, sig)
