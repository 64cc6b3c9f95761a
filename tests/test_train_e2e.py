"""Training through the real compiler and CPU backend: learning, bit-identical
resume (dropout included: its RNG is a state leaf), .nnc round trip, divergence."""
import numpy as np
import pytest

import nnspec
from nnspec import data
from nnspec.errors import TrainingError
from nnspec.train import fit, load, load_checkpoint, save

SPEC = """\
network tiny(h = 24) {
    input x: [64]
    output logits = x -> dense(h) -> relu -> dropout(0.1) -> dense(10)
}

train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.1, momentum = 0.9)
    batch = 64
    epochs = 3
    data = digits
}
"""


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", nnspec.compile(SPEC))


def test_learns_digits(digits):
    r = fit(nnspec.compile(SPEC), digits, progress=False)
    assert r["epochs"] == 3 and r["test_accuracy"] > 0.9


def test_resume_is_bit_identical(digits, tmp_path):
    whole = nnspec.compile(SPEC, seed=1)
    fit(whole, digits, seed=1, out_dir=tmp_path / "a", progress=False)

    fit(nnspec.compile(SPEC, seed=1), digits, epochs=1, seed=1, out_dir=tmp_path / "b",
        progress=False)
    resumed = nnspec.compile(SPEC, seed=7)           # other weights: all must come from the file
    fit(resumed, digits, seed=1, out_dir=tmp_path / "b", resume=True, progress=False)

    a, b = whole.state_dict(), resumed.state_dict()
    assert set(a) == set(b) and any(k.endswith(".step") for k in a)   # the dropout counter
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    ca = load_checkpoint(tmp_path / "a" / "checkpoint.npz")
    cb = load_checkpoint(tmp_path / "b" / "checkpoint.npz")
    assert ca["step"] == cb["step"] and ca["rng"] == cb["rng"]
    for k, v in ca["optimizer"]["slots"]["momentum_buffer"].items():
        assert np.array_equal(v, cb["optimizer"]["slots"]["momentum_buffer"][k])
    assert [h["train_loss"] for h in ca["history"]] == [h["train_loss"] for h in cb["history"]]


def test_nnc_round_trip(digits, tmp_path):
    net = nnspec.compile(SPEC, set={"h": 12})
    fit(net, digits, epochs=1, progress=False)
    save(net, tmp_path / "tiny.nnc")                   # spec and --set from graph.meta
    back = load(tmp_path / "tiny.nnc")
    assert back.graph.meta["args"]["h"] == 12 and back.graph.hash() == net.graph.hash()
    x = digits[1]["x"][:50]
    assert np.array_equal(net.forward(x=x)["logits"], back.forward(x=x)["logits"])


def test_divergence_names_step_and_layer(digits):
    net = nnspec.compile(SPEC)
    with pytest.raises(TrainingError) as e:
        fit(net, digits, lr=1e30, progress=False)
    msg = str(e.value)
    assert "training diverged at step" in msg and "first non-finite values:" in msg
