"""The `Network` methods over nnspec.train: fit, evaluate, predict, save (and
`nnspec.load`), and arrays given by position.  One small compiled network
shared by the tests (its programs compile once)."""
import numpy as np
import pytest

import nnspec
from nnspec import data
from nnspec.errors import DataError

TINY = """
network tiny(hidden = 8) {
    input x: [64]
    output logits = x -> dense(hidden) -> relu -> dense(10)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = adam(lr = 0.01)
    batch = 64
    epochs = 2
    data = digits
}
"""


@pytest.fixture(scope="module")
def trained():
    net = nnspec.compile(TINY, seed=1)
    result = net.fit(progress=False)              # the train section's data and settings
    _, test = data.load("digits", net)
    return net, result, test


def test_fit_then_evaluate_scores_the_test_split(trained):
    net, r, test = trained
    assert r["epochs"] == 2 and r["examples"] == {"train": 1438, "test": 359}
    scored = net.evaluate()
    assert scored["n"] == 359 and scored["accuracy"] == pytest.approx(r["test_accuracy"])
    assert net.evaluate("digits") == scored
    whole = net.evaluate({"x": test["x"], "label": test["label"]})     # one dict: all of it
    assert whole["n"] == 359 and whole["loss"] == pytest.approx(scored["loss"])


def test_predict_returns_classes_and_refuses_nan_rows(trained):
    net, _, test = trained
    x = test["x"][:20]
    classes = net.predict(x)
    assert classes.shape == (20,) and classes.dtype.kind == "i"
    assert np.array_equal(classes, np.argmax(net(x), axis=1))
    assert np.array_equal(net.predict({"x": x.reshape(20, 8, 8)}), classes)   # reshaped
    bad = x[:3].copy()
    bad[1, 7] = np.nan
    with pytest.raises(DataError, match=r"1 of 3 rows hold NaN or infinite inputs \(rows 1,"):
        net.predict(bad)
    allowed = net.predict(bad, allow_nonfinite=True)
    assert allowed[1] == -1 and np.array_equal(allowed[[0, 2]], classes[[0, 2]])


def test_save_then_load(trained, tmp_path):
    net, _, test = trained
    net.save(tmp_path / "tiny.nnc")
    back = nnspec.load(tmp_path / "tiny.nnc")
    assert back.graph.meta["args"] == {"hidden": 8}
    assert np.array_equal(back.predict(test["x"]), net.predict(test["x"]))


def test_gradients_take_arrays_as_net_x_does(trained):
    net, _, test = trained
    x, y = test["x"][:16], test["label"][:16]
    loss, grads = net.gradients(x, y)
    named_loss, named = net.gradients({"x": x}, {"label": y})
    assert loss == named_loss and grads.keys() == named.keys()
    assert all(np.array_equal(grads[k], named[k]) for k in grads)


def test_arrays_without_names_need_one_input_and_one_target():
    two = nnspec.compile("""
network two {
    input a: [4]
    input b: [4]
    output y = concat(a, b) -> dense(3)
}
train {
    target label: int
    loss = cross_entropy(y, label)
}
""")
    with pytest.raises(DataError, match=r"one input and one target; this one takes "
                                        r"inputs \['a', 'b'\] and targets \['label'\]"):
        two.gradients(np.zeros((2, 4)), np.zeros(2, int))


def test_predict_without_classes_returns_every_output():
    reg = nnspec.compile("""
network reg {
    input x: [3]
    output y = x -> dense(2)
}
train {
    target t: [2]
    loss = mse(y, t)
}
""")
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    outs = reg.predict(x)
    assert list(outs) == ["y"] and np.allclose(outs["y"], reg(x))
