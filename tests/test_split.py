"""Training steps as halves of the batch (backend/split.py): which networks
split, that a split step is the whole batch's step (float64, to rounding),
that its bits do not depend on the threads that ran its halves (the pacer's
one-thread steps), and that a half's error reaches the caller."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import nnspec
from nnspec.backend import cores, cpu, split

MLP = """
network mlp {
    input x: [13]
    output logits = x -> dense(21) -> relu -> dense(17) -> tanh -> dense(5)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = sgd(lr = 0.1, momentum = 0.9)
}
"""

# the zoo's LSTM cell (with a forget gate), a network of our own around it
LSTM = (Path(__file__).resolve().parent.parent / "specs" / "lstm.nn").read_text().split(
    "network")[0] + """
network rnn {
    input x: [5, 3]
    output logits = (x -> lstm(7)).h -> dense(4)
}
train {
    target label: int
    loss = cross_entropy(logits, label)
    optimizer = adam(lr = 0.01)
}
"""


def _net(spec, dtype="float64"):
    return nnspec.compile(spec, dtype=dtype, seed=3)


def _data(net, batch, rng, steps=5):
    x = next(iter(net.inputs))
    shape = tuple(steps if d == "T" else d for d in net.graph.shape(x)[1:])
    return ({x: rng.standard_normal((batch,) + shape)},
            {"label": rng.integers(0, 5 if "mlp" in net.graph.name else 4, batch)})


@pytest.fixture
def two_cores(monkeypatch):
    """Split steps whatever the machine: two cores, and any step large enough."""
    monkeypatch.setattr(cores, "chosen_threads", lambda: 2)
    monkeypatch.setattr(cpu, "PAR_MIN_WORK", 0)
    monkeypatch.delenv("NNSPEC_SPLIT", raising=False)


@pytest.mark.parametrize("spec,why", [
    ("network n { input x: [5]\n output y = x -> dense(3) -> batchnorm }\n"
     "train { target t: [3]\n loss = mse(y, t)\n optimizer = sgd(lr = 0.1) }", "state"),
    ("network n { input x: [5]\n output y = x -> dense(3) }\n"
     "train { target t: [3]\n loss = sum(square(y - t))\n optimizer = sgd(lr = 0.1) }", "sum"),
    ("network n { input x: [5]\n output y = x -> dense(3) }\n"
     "train { target t: int\n loss = cross_entropy(y, t, ignore_index = 0)\n"
     " optimizer = sgd(lr = 0.1) }", "cross_entropy"),
    ("network n { input x: [5]\n output y = x -> dense(8) -> dropout(0.5) -> dense(3) }\n"
     "train { target t: int\n loss = cross_entropy(y, t)\n optimizer = sgd(lr = 0.1) }",
     "state"),                  # its random stream
])
def test_networks_whose_examples_meet_do_not_split(spec, why):
    net = _net(spec)
    reason = split.why_not(net.graph)
    assert reason is not None and why in reason, reason


@pytest.mark.parametrize("spec", [MLP, LSTM])
def test_networks_whose_examples_never_meet_split(spec):
    assert split.why_not(_net(spec).graph) is None


def test_a_loss_of_means_added_splits():
    spec = ("network n { input x: [5]\n output y = x -> dense(3) }\n"
            "train { target t: [3]\n loss = mse(y, t) + 0.5 * mean(square(y))\n"
            " optimizer = sgd(lr = 0.1) }")
    assert split.why_not(_net(spec).graph) is None


@pytest.mark.parametrize("spec,batch", [(MLP, 37), (MLP, 16)])
def test_a_split_step_is_the_whole_batch_step(spec, batch, two_cores, monkeypatch):
    """Halves of unequal size (37: 19 and 18 rows) weighted by their rows:
    the parameters after three steps equal those of the whole-batch train
    program to float64 rounding; the losses too.  (Recurrent networks:
    tests/test_zoo_runs.py compares every zoo spec that splits.)"""
    rng = np.random.default_rng(0)
    batches = [_data(_net(spec), batch, rng) for _ in range(3)]
    runs = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("NNSPEC_SPLIT", mode)
        net = _net(spec)
        losses = [net.train_step(x, y, 0.05) for x, y in batches]
        runs[mode] = (net, losses)
    whole, split_ = runs["0"][0], runs["1"][0]
    assert type(whole._train).__name__ == "CompiledStep"
    assert type(split_._train).__name__ == "SplitStep"
    assert split_._train.split(batch)
    np.testing.assert_allclose(runs["1"][1], runs["0"][1], rtol=1e-12)
    for k in whole.params:
        np.testing.assert_allclose(split_.params[k], whole.params[k], rtol=1e-10, atol=1e-12,
                                   err_msg=k)


@pytest.mark.parametrize("spec", [MLP, LSTM])
def test_a_split_step_gives_the_same_bits_on_one_thread(spec, two_cores, monkeypatch):
    """The pacer's one-thread steps (both halves on the calling thread)
    against steps whose second half runs on the worker thread."""
    rng = np.random.default_rng(1)
    batches = [_data(_net(spec, "float32"), 40, rng) for _ in range(4)]
    runs = []
    for pattern in ([False] * 4, [True, False, True, True]):
        net = _net(spec, "float32")
        losses = []
        for (x, y), one in zip(batches, pattern):
            monkeypatch.setattr(cores.Pace, "one", lambda self, one=one: one)
            losses.append(net.train_step(x, y, 0.05))
        assert type(net._train).__name__ == "SplitStep"
        runs.append((net, losses))
    (a, la), (b, lb) = runs
    assert a._train.worker is not None         # the worker ran halves
    assert la == lb
    for k in a.params:
        assert np.array_equal(a.params[k], b.params[k]), k


def test_a_small_batch_runs_whole(two_cores):
    net = _net(MLP)
    rng = np.random.default_rng(2)
    x, y = _data(net, split.MIN_ROWS * 2 - 1, rng)
    loss = net.train_step(x, y, 0.05)
    assert np.isfinite(loss) and not net._train.split(split.MIN_ROWS * 2 - 1)
    assert net._train.worker is None


def test_a_half_that_fails_raises_in_the_caller(two_cores, monkeypatch):
    net = _net(MLP)
    rng = np.random.default_rng(2)
    x, y = _data(net, 30, rng)
    net.train_step(x, y, 0.05)             # compiled, the worker started
    step = net._train
    before = {k: v.copy() for k, v in net.params.items()}

    class Broken:
        _fresh = False

        def __call__(self, *args):
            raise MemoryError("the second half's arena")
    step.programs[1] = Broken()
    with pytest.raises(MemoryError, match="second half"):
        net.train_step(x, y, 0.05)
    for k in before:                       # no update from a failed step
        assert np.array_equal(before[k], net.params[k]), k
    step.programs[1] = split._twin(step.programs[0])
    assert np.isfinite(net.train_step(x, y, 0.05))


def test_nnspec_split_0_turns_it_off(two_cores, monkeypatch):
    monkeypatch.setenv("NNSPEC_SPLIT", "0")
    net = _net(MLP)
    x, y = _data(net, 30, np.random.default_rng(0))
    net.train_step(x, y, 0.05)
    assert type(net._train).__name__ == "CompiledStep"


def test_a_non_finite_loss_skips_the_update(two_cores):
    net = _net(MLP)
    x, y = _data(net, 30, np.random.default_rng(0))
    x = {k: v.copy() for k, v in x.items()}
    next(iter(x.values()))[20, 0] = np.nan          # in the second half
    before = {k: v.copy() for k, v in net.params.items()}
    loss = net.train_step(x, y, 0.05)
    assert not np.isfinite(loss)
    for k in before:
        assert np.array_equal(before[k], net.params[k]), k


def test_a_thread_pool_two_threads_may_not_share_runs_the_halves_in_turn(two_cores,
                                                                          monkeypatch):
    """Numba's workqueue pool ends the process when two threads enter it at
    once: there, both halves run on the calling thread."""
    monkeypatch.setattr(split, "_layer", [False])
    net = _net(MLP)
    rng = np.random.default_rng(5)
    for _ in range(3):
        x, y = _data(net, 30, rng)
        assert np.isfinite(net.train_step(x, y, 0.05))
    assert type(net._train).__name__ == "SplitStep" and net._train.worker is None


def test_a_clipped_split_step_is_the_whole_batch_step(two_cores, monkeypatch):
    """With clipping the norm is the whole sum's: the update after it runs in
    one piece."""
    rng = np.random.default_rng(6)
    batches = [_data(_net(MLP), 33, rng) for _ in range(3)]
    params = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("NNSPEC_SPLIT", mode)
        net = _net(MLP)
        net.set_optimizer("sgd", momentum=0.9, clip=0.05)
        for x, y in batches:
            net.train_step(x, y, 0.5)
        params[mode] = net.params
    for k in params["0"]:
        np.testing.assert_allclose(params["1"][k], params["0"][k], rtol=1e-10, atol=1e-12,
                                   err_msg=k)
