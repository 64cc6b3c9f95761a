"""Large steps run as calls into shared kernels (backend/kernels.py): what
is compiled is one kernel per distinct signature, whatever the depth."""
import numpy as np
import pytest

import nnspec
from nnspec.backend import cpu

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
    runs when the backend cannot compile its graph), in float64."""
    import nnspec.passes.pipeline as pipeline
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 3, 8, 8))
    y = rng.integers(0, 4, 3)
    out = {}
    for driver in ("calls", "reference"):
        monkeypatch.setenv("NNSPEC_DRIVER", "calls")
        if driver == "reference":
            monkeypatch.setattr(pipeline, "compilable", lambda g: "the reference")
        net = nnspec.compile(SPEC, dtype="float64", seed=3)
        loss = net.train_step({"x": x}, {"label": y}, 0.05)
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
