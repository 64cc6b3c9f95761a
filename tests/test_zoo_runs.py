"""Every spec of the zoo compiles and runs: a forward pass (the inference
program) and one training step (the training program) on two examples of its
own bundled data, at the size `nnspec train SPEC` trains it (the train
section's and the data's network arguments).  Checking a spec is not enough:
a recurrent spec once passed every check and crashed in `forward`.

The ImageNet networks run as steps of calls into shared kernels (backend/
kernels.py), so after the first convolutional network the others compile
only their new fused loops.

The training step then runs again from the same start on one thread, as the
pacer runs it on a busy machine (backend/cores.py), and gives the same bits:
kernels plan their work for the threads chosen, not for those that run it."""
from pathlib import Path

import numpy as np
import pytest

import nnspec
from nnspec.backend import cores
from nnspec.data import is_text, load, text_info
from nnspec.train.commands import training_args

SPECS = Path(__file__).resolve().parent.parent / "specs"
ZOO = sorted(SPECS.glob("*.nn"))


def few(data: str) -> str:
    """The spec's data, only as many examples as the test needs."""
    from nnspec.data.registry import parse
    name, opts = parse(data)
    if name not in ("digits", "shapes", "tones"):
        return data
    opts["limit"] = 20
    return f"{name}(" + ", ".join(f"{k}={v}" for k, v in opts.items()) + ")"


# the recurrent specs with 8 units: what compiles is the same code as with
# more (except loops large enough to run on two threads, tests/test_paired_loops.py)
SMALL = {"hidden": 8, "embed": 8}


def _settings(path):
    """The spec's train section, its data (few examples) and the network
    arguments `nnspec train SPEC` would set (recurrent specs at 8 units)."""
    graph = nnspec.lower(path)
    train = graph.meta["train"]
    data = few(train["data"])
    info = text_info(data) if is_text(data) else None
    sets = training_args(graph, data, {}, info)
    sets.update({k: v for k, v in SMALL.items() if k in graph.meta.get("args", {})})
    return train, data, sets


@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_spec_runs_forward_and_a_training_step(path, monkeypatch):
    # steps of calls: the kernels they call are the ones every other test
    # compiles (in the shared Numba cache), so this test compiles little
    monkeypatch.setenv("NNSPEC_DRIVER", "calls")
    train, data, sets = _settings(path)
    net = nnspec.compile(path, set=sets, seed=int(train.get("seed") or 0))
    arrays, _ = load(data, net)
    x = {k: arrays[k][:2] for k in net.inputs}
    y = {k: arrays[k][:2] for k in net.targets}
    out = net.forward(**x)
    assert set(out) == set(net.outputs)
    for name, v in out.items():
        assert v.shape[0] == 2 and np.isfinite(v).all(), name
    before = {k: v.copy() for k, v in net.params.items()}
    start, opt = net.state_dict(), net.optimizer_state()
    lr = float(train["optimizer"].get("lr", 0.01))
    loss = net.train_step(x, y, lr)
    assert np.isfinite(loss) and loss > 0
    assert any(not np.array_equal(before[k], v) for k, v in net.params.items()), \
        "the training step changed no parameter"
    after = net.state_dict()
    net.load_state_dict(start)
    net.load_optimizer_state(opt)
    cores.limit(True)
    try:
        again = net.train_step(x, y, lr)
    finally:
        cores.limit(False)
    assert again == loss
    differ = [k for k, v in net.state_dict().items() if not np.array_equal(v, after[k])]
    assert not differ, f"on one thread the step changed {differ} otherwise"


def _splittable():
    from nnspec.backend.split import why_not
    return [p for p in ZOO if why_not(nnspec.lower(p)) is None]


@pytest.mark.parametrize("path", _splittable(), ids=lambda p: p.stem)
def test_a_split_step_of_a_spec_is_its_whole_step(path, monkeypatch):
    """Every zoo spec that trains as halves of the batch (backend/split.py):
    one step on 5 examples as halves of 3 and 2 rows has the whole batch's
    loss and gradient (to float32 rounding), so no op of theirs that
    split.why_not lets through mixes examples."""
    from nnspec.backend import cpu, split
    monkeypatch.setenv("NNSPEC_DRIVER", "calls")        # the kernels test_spec_runs compiled
    monkeypatch.setattr(split, "WHOLE_ONLY", False)
    monkeypatch.setattr(split, "MIN_ROWS", 1)
    monkeypatch.setattr(cpu, "PAR_MIN_WORK", 0)
    monkeypatch.setattr(cores, "chosen_threads", lambda: 2)
    train, data, sets = _settings(path)
    lr = float(train["optimizer"].get("lr", 0.01))
    moved = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("NNSPEC_SPLIT", mode)
        net = nnspec.compile(path, set=sets, seed=int(train.get("seed") or 0))
        arrays, _ = load(data, net)
        n = min(5, len(next(iter(arrays.values()))))
        x = {k: arrays[k][:n] for k in net.inputs}
        y = {k: arrays[k][:n] for k in net.targets}
        before = {k: v.copy() for k, v in net.params.items()}
        loss = net.train_step(x, y, lr)
        assert type(net._train).__name__ == ("SplitStep" if mode == "1" else "CompiledStep")
        assert any(not np.array_equal(before[k], v) for k, v in net.params.items())
        # the gradient the update used (Adam's first step, lr g / |g|, would
        # magnify rounding where g is near 0)
        moved[mode] = (loss, {k: net._view(net._G, net._playout, k).copy() for k in before})
    (l0, g0), (l1, g1) = moved["0"], moved["1"]
    assert l1 == pytest.approx(l0, rel=1e-5)
    for k in g0:
        scale = max(float(np.abs(g0[k]).max()), 1e-12)
        assert float(np.abs(g1[k] - g0[k]).max()) <= 1e-3 * scale, k
