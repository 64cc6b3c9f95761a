"""Teacher forcing of a fed-back state (`x -> jordan(n, k, teacher = prev)`):
the blend f * teacher + (1 - f) * y[t-1] against NumPy, its gradient against
float64 finite differences, the scheduled-sampling probabilities and masks,
free-running evaluation and prediction, and the errors for misuse."""
from __future__ import annotations

import math

import numpy as np
import pytest

import nnspec
from nnspec.backend import numpy_ref
from nnspec.data import bind
from nnspec.errors import DataError, SpecError, TrainingError
from nnspec.frontend.teacher import probability
from nnspec.passes.autodiff import backward
from nnspec.train import fit
from nnspec.train.config import TrainConfig
from nnspec.train.forcing import masks
from nnspec.train.metrics import evaluate, task_of

from test_loop import B, T_ as T, fd_check, params, with_loss   # with_loss draws [B, T] weights

JORDAN = """
cell jordan(n, k)(x) {
    state y = zeros(k)
    h = tanh(dense(x[t], n) + dense(y[t-1], n, bias=false))
    y[t] = dense(h, k)
    return y
}
"""
F, H, K = 1, 4, 2


def spec(call="teacher = prev", train="", cell=JORDAN, teacher="input prev: [T, 2]"):
    return (cell + "network js {\n  input x: [T, %d]\n  %s\n  output y = x -> jordan(%d, %d%s)\n}\n"
            % (F, teacher, H, K, ", " + call if call else "")
            + "train {\n  target next: [T, 2]\n  loss = mse(y, next)\n%s}\n" % train)


def jordan_np(x, teacher, f, W, b, U, V, c):
    """The Jordan cell unrolled, reading f * teacher + (1 - f) * y[t-1]."""
    y = np.zeros((x.shape[0], V.shape[0]))
    ys, reads = [], []
    for t in range(x.shape[1]):
        prev = f[:, t] * teacher[:, t] + (1 - f[:, t]) * y
        reads.append(prev)
        y = np.tanh(x[:, t] @ W.T + b + prev @ U.T) @ V.T + c
        ys.append(y)
    return np.stack(ys, 1), np.stack(reads, 1)


@pytest.fixture
def graph():
    return nnspec.lower(spec(), dtype="float64")


def feeds_for(g, f, seed=1):
    rng = np.random.default_rng(seed)
    feeds = params(g)
    feeds["x"] = rng.standard_normal((B, T, F))
    feeds["prev"] = rng.standard_normal((B, T, K))
    feeds["y.teacher_forcing"] = np.asarray(f, float).reshape(B, T, 1)
    return feeds


def run_np(feeds):
    W, b, U, V, c = (feeds[p] for p in ("y.dense.weight", "y.dense.bias", "y.dense_1.weight",
                                         "y.dense_2.weight", "y.dense_2.bias"))
    return jordan_np(feeds["x"], feeds["prev"], feeds["y.teacher_forcing"], W, b, U, V, c)


# ---- the blend -------------------------------------------------------------------

def test_the_mask_is_a_hidden_input_and_the_teacher_a_loop_sequence(graph):
    assert graph.inputs == ["x", "prev", "y.teacher_forcing"]
    assert graph.shape("y.teacher_forcing") == ("B", "T", 1)
    assert graph.meta["teacher_forcing"] == {"masks": ["y.teacher_forcing"],
                                             "teacher_only": ["prev"]}
    loop = graph.node("y")
    assert loop.inputs[:3] == ("x", "prev", "y.teacher_forcing") and loop.attrs["n_seq"] == 3
    assert loop.attrs["state_inputs"] == ["y[t-1]"]        # the carry is the model's own


def test_forced_steps_read_the_teacher_exactly(graph):
    feeds = feeds_for(graph, np.ones((B, T)))
    body = graph.node("y").attrs["body"]
    out = numpy_ref.run(graph, feeds, ["y.out"])["y.out"]
    want, reads = run_np(feeds)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(reads, feeds["prev"])
    # the body's read node itself, one step: the teacher bit for bit
    step = {"x[t]": feeds["x"][:, 0], "y[t-1]": np.full((B, K), 1e8),
            "y.teacher[t]": feeds["prev"][:, 0], "y.teacher_forcing[t]": np.ones((B, 1))}
    step.update({n: feeds[body.node(n).attrs["outer"]] for n in body.ids("input")
                 if body.node(n).attrs["kind"] == "capture"})
    got = numpy_ref.run(body, step, ["y[t-1].forced"])["y[t-1].forced"]
    np.testing.assert_array_equal(got, feeds["prev"][:, 0])


def test_unforced_equals_the_plain_jordan_cell(graph):
    feeds = feeds_for(graph, np.zeros((B, T)))
    out = numpy_ref.run(graph, feeds, ["y.out", "y.y"])
    plain = nnspec.lower(spec(call=""), dtype="float64")
    assert "y.teacher_forcing" not in plain.inputs
    ref = numpy_ref.run(plain, {k: v for k, v in feeds.items() if k in plain}, ["y.out", "y.y"])
    np.testing.assert_array_equal(out["y.out"], ref["y.out"])
    np.testing.assert_array_equal(out["y.y"], ref["y.y"])


def test_mixed_mask_matches_numpy(graph):
    f = np.random.default_rng(5).random((B, T)) < 0.5
    feeds = feeds_for(graph, f)
    out = numpy_ref.run(graph, feeds, ["y.out"])["y.out"]
    np.testing.assert_allclose(out, run_np(feeds)[0], rtol=1e-12, atol=1e-12)


def test_classifier_feeds_back_probabilities_and_is_taught_one_hots():
    cell = """
cell jordan(n, k)(x) {
    state p = zeros(k)                       # fed back: the class probabilities
    z = dense(tanh(dense(x[t], n) + dense(p[t-1], n, bias=false)), k)
    p[t] = softmax(z)
    return z
}
"""
    src = (cell + "network c {\n  input x: [T, 1]\n  input prev: int[T]\n"
           "  output z = x -> jordan(4, 3, teacher = one_hot(prev, 3))\n}\n")
    g = nnspec.lower(src, dtype="float64")
    feeds = params(g)
    rng = np.random.default_rng(2)
    feeds["x"] = rng.standard_normal((B, T, 1))
    feeds["prev"] = rng.integers(0, 3, (B, T))
    feeds["z.teacher_forcing"] = np.ones((B, T, 1))
    W, b, U, V, c = (feeds[p] for p in g.params)
    want = [(np.tanh(feeds["x"][:, t] @ W.T + b + np.eye(3)[feeds["prev"][:, t]] @ U.T)
             @ V.T + c) for t in range(T)]
    out = numpy_ref.run(g, feeds, ["z.out"])["z.out"]
    np.testing.assert_allclose(out, np.stack(want, 1), rtol=1e-12, atol=1e-12)
    assert g.meta["teacher_forcing"]["teacher_only"] == ["prev"]


# ---- the gradient ---------------------------------------------------------------

@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_gradient_through_the_blend_matches_finite_differences(graph, p):
    loss, feeds = with_loss(graph, ["y.out", "y.y"])
    feeds.update(feeds_for(graph, np.random.default_rng(3).random((B, T)) < p))
    got = fd_check(graph, loss, feeds, graph.params + ["x", "prev"])
    f = feeds["y.teacher_forcing"]
    assert np.all(got["prev"][np.broadcast_to(f == 0, got["prev"].shape)] == 0)


# ---- the probability schedule and the masks -------------------------------------------

def test_the_decays_are_bengio_et_al_s():
    lin = {"name": "linear", "c": 0.01, "k": 1.0, "min": 0.2}
    exp_ = {"name": "exponential", "k": 0.99}
    inv = {"name": "inverse_sigmoid", "k": 100.0}
    for i in (0, 1, 10, 50, 79, 80, 100, 1000):
        assert probability(lin, i) == pytest.approx(max(0.2, 1.0 - 0.01 * i))
        assert probability(exp_, i) == pytest.approx(0.99 ** i)
        assert probability(inv, i) == pytest.approx(100 / (100 + math.exp(i / 100)))
        assert probability(0.7, i) == 0.7
    assert 0 <= probability(inv, 10 ** 9) < 1e-300              # no overflow
    g = nnspec.lower(spec(train="  teacher_forcing = inverse_sigmoid(k = 50)\n"))
    assert TrainConfig.from_meta(g.meta["train"]).teacher_forcing == \
        {"name": "inverse_sigmoid", "k": 50.0}
    assert TrainConfig.from_meta(nnspec.lower(spec()).meta["train"]).teacher_forcing == 1.0
    g = nnspec.lower(spec(train="  teacher_forcing = linear(0.002)\n"))
    assert g.meta["train"]["teacher_forcing"] == {"name": "linear", "c": 0.002, "k": 1.0,
                                                  "min": 0.0}
    with pytest.raises(TrainingError, match=r"\[0, 1\]"):
        TrainConfig.from_meta({}, teacher_forcing=1.5)


class Stub:
    """What `masks` reads of a network: its mask inputs and `blank`."""
    forcing = {"m": ("T", 1)}

    def blank(self, name, given):
        return np.zeros((len(given["x"]), given["x"].shape[1], 1))


def test_masks_flip_a_coin_per_example_and_step_but_never_at_step_0():
    xb = {"x": np.zeros((400, 30, 2))}
    assert np.all(masks(Stub(), xb, 1.0)["m"][:, 1:] == 1)
    assert np.all(masks(Stub(), xb, 1.0)["m"][:, 0] == 0)
    assert np.all(masks(Stub(), xb, 0.0)["m"] == 0)
    m = masks(Stub(), xb, 0.3, np.random.default_rng(0))["m"][..., 0]
    assert np.all(m[:, 0] == 0) and set(np.unique(m)) == {0.0, 1.0}
    assert m[:, 1:].mean() == pytest.approx(0.3, abs=0.01)
    assert len({tuple(r) for r in m[:20]}) == 20                    # per example
    again = masks(Stub(), xb, 0.3, np.random.default_rng(0))["m"][..., 0]
    np.testing.assert_array_equal(m, again)                        # seeded


def test_predicting_needs_no_teacher_but_training_does():
    net = nnspec.compile(spec())
    x = np.zeros((2, T, 1))
    assert list(bind({"x": x}, net, "in.npz", require_targets=False)) == ["x"]
    with pytest.raises(DataError, match="no array for the input 'prev'"):
        bind({"x": x, "next": np.zeros((2, T, 2))}, net, "data")
    # a teacher read anywhere else is an input like any other
    g = nnspec.lower(spec(teacher="input prev: [T, 2]\n  output echo = prev -> dense(2)"))
    assert g.meta["teacher_forcing"]["teacher_only"] == []


# ---- compiled: free-running by default, both scores in eval, training ---------------

def sines_subset(net, n_train=64, n_test=32):
    from nnspec.data import load
    train, test = load("sines", net)
    return ({k: v[:n_train] for k, v in train.items()}, {k: v[:n_test] for k, v in test.items()})


def test_eval_and_predict_run_free_running():
    net = nnspec.compile(spec(), dtype="float64")
    assert list(net.inputs) == ["x", "prev"] and list(net.forcing) == ["y.teacher_forcing"]
    _, test = sines_subset(net)
    x, prev, nxt = test["x"][:, :T], test["prev"][:, :T], test["next"][:, :T]
    free = net.forward(x=x)["y"]                                    # no teacher needed
    np.testing.assert_array_equal(free, net.forward(x=x, prev=prev)["y"])
    ref = numpy_ref.run(net.graph, {**net.params, "x": x, "prev": prev,
                                    "y.teacher_forcing": np.zeros((len(x), T, 1))}, ["y.out"])
    np.testing.assert_allclose(free, ref["y.out"], rtol=1e-10, atol=1e-12)
    r = evaluate(net, {"x": x, "prev": prev, "next": nxt})
    assert r["free_running_mse"] == pytest.approx(np.mean((free - nxt) ** 2), rel=1e-9)
    f = np.ones((len(x), T, 1))
    f[:, 0] = 0                                                     # step 0: the initial state
    forced = net.forward(x=x, prev=prev, **{"y.teacher_forcing": f})["y"]
    assert r["mse"] == pytest.approx(np.mean((forced - nxt) ** 2), rel=1e-9)
    assert r["loss"] == pytest.approx(r["mse"], rel=1e-9)
    assert task_of(net).metrics == ("mse", "baseline_mse", "free_running_mse")


def test_compiled_gradient_through_the_blend_matches_the_reference():
    net = nnspec.compile(spec(), dtype="float64")
    train, _ = sines_subset(net, n_train=4)
    xb = {k: train[k][:, :T] for k in ("x", "prev")}
    yb = {"next": train["next"][:, :T]}
    xb.update(masks(net, xb, 0.5, np.random.default_rng(4)))
    loss, grads = net.gradients(xb, yb)
    g = net.graph
    gg, gids = backward(g, g.meta["loss"], g.params)
    ref = numpy_ref.run(gg, {**net.params, **xb, **yb}, [g.meta["loss"], *gids.values()])
    assert loss == pytest.approx(float(ref[g.meta["loss"]]), rel=1e-12)
    for p, gid in gids.items():
        np.testing.assert_allclose(grads[p], ref[gid], rtol=1e-9, atol=1e-12, err_msg=p)


def test_fit_draws_masks_and_reports_both_scores(monkeypatch):
    # fit's schedule and scores, on programs the NumPy interpreter runs (the
    # compiled blend is checked against it above)
    monkeypatch.setenv("NNSPEC_DRIVER", "reference")
    net = nnspec.compile(spec(train="  teacher_forcing = exponential(0.9)\n"))
    train, test = sines_subset(net)
    r = fit(net, (train, test), epochs=2, batch=16, progress=False)
    hist = r["history"]
    assert [h["teacher_forcing"] for h in hist] == pytest.approx([0.9 ** 3, 0.9 ** 7])
    for k in ("test_mse", "test_free_running_mse", "train_free_running_mse"):
        assert math.isfinite(r[k])
    assert r["config"]["teacher_forcing"] == {"name": "exponential", "k": 0.9}


# ---- errors --------------------------------------------------------------------------

TWO_STATES = """
cell jordan(n, k)(x) {
    state a = zeros(2)
    state b = zeros(2)
    a[t] = dense(tanh(dense(x[t], n) + dense(a[t-1], n)), 2)
    b[t] = a[t] + b[t-1]
    return a
}
"""
NO_READ = """
cell jordan(n, k)(x) {
    state y = zeros(k)
    y[t] = dense(tanh(dense(x[t], n)), k)
    return y
}
"""


@pytest.mark.parametrize("kw, message, where", [
    (dict(call="teacher = prev", cell=TWO_STATES),
     "has states a, b: say which one", "teacher = prev"),
    (dict(call='teacher = prev, teacher_state = "c"', cell=TWO_STATES),
     "has no state 'c'", 'teacher_state = "c"'),
    (dict(call="teacher = prev", teacher="input prev: [T, 3]"),
     r"shape \[3\] per step, but state 'y' has shape \[2\]", "teacher = prev"),
    (dict(call="teacher = prev", teacher="input prev: int[T]"),
     "the teacher is a float sequence", "teacher = prev"),
    (dict(call="teacher = prev", teacher="input prev: [6, 2]"),
     "one value of the state|at each step", "teacher = prev"),
    (dict(call="teacher = prev", cell=NO_READ), "never reads", "teacher = prev"),
    (dict(call="teacher = prev, direction = bidir"), "forward recurrence; this cell runs "
     "bidir", "teacher = prev"),
    (dict(call="teacher = prev, reverse = true"), "runs reverse", "teacher = prev"),
    (dict(call='teacher_state = "y"'), "give the teacher too", 'teacher_state = "y"'),
    (dict(call="", train="  teacher_forcing = 0.5\n"), "no cell of this network has a teacher",
     "0.5"),
    (dict(train="  teacher_forcing = 2\n"), r"a number in \[0, 1\]", "2"),
    (dict(train="  teacher_forcing = inverse_sigmoid(k = 0.5)\n"), "needs k >= 1",
     "inverse_sigmoid"),
    (dict(train="  teacher_forcing = exponential(rate = 0.5)\n"), "no setting 'rate'",
     "exponential"),
    (dict(train="  teacher_forcing = linear()\n"), "needs c", "linear"),
])
def test_misuse_is_a_located_error(kw, message, where):
    src = spec(**kw)
    with pytest.raises(SpecError, match=message) as e:
        nnspec.lower(src)
    loc = e.value.loc
    line = src.splitlines()[loc.line - 1]
    assert line[loc.col - 1:].startswith(where), (line, loc.col)
