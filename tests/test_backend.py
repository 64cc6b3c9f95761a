"""The compiled CPU backend on whole networks: programs against the NumPy
interpreter, the passes leaving results unchanged, optimizer steps against a
NumPy re-implementation, the disk cache, and float32 code staying float32."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nnspec.backend import numpy_ref
from nnspec.ir import Graph
from nnspec.model import Network
from nnspec.ops import all_ops
from nnspec.passes import memory
from nnspec.passes.autodiff import backward
from nnspec.passes.pipeline import build

ROOT = Path(__file__).resolve().parent.parent


def mlp(sizes=(12, 8, 5), act="tanh", dtype="float64", loss="mse", name="mlp"):
    """x -> dense -> act -> ... -> dense; loss mean((y - t)^2) or cross-entropy."""
    g = Graph(name, dtype)
    x = g.input("x", ("B", sizes[0]))
    if loss == "mse":
        t = g.input("t", ("B", sizes[-1]), kind="target")
    else:
        t = g.input("t", ("B",), dtype="int64", kind="target")
    h = x
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        w = g.param(f"fc{i}.weight", (b, a), init="auto", fan_in=a, fan_out=b, layer=f"fc{i}")
        bb = g.param(f"fc{i}.bias", (b,), init=0.1, layer=f"fc{i}")
        h = g.add("linear", (h, w, bb), {"bias": True}, name=f"fc{i}", layer=f"fc{i}")
        if i < len(sizes) - 2:
            h = g.add(act, (h,), name=f"act{i}", layer=f"act{i}")
    g.outputs["y"] = h
    if loss == "mse":
        d = g.add("sub", (h, t), name="diff")
        g.meta["loss"] = g.add("mean", (g.add("square", (d,), name="sq"),), name="loss")
    else:
        g.meta["loss"] = g.add("cross_entropy", (h, t), name="loss")
    return g


def data(sizes=(12, 8, 5), batch=7, loss="mse", dtype="float64", seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, sizes[0])).astype(dtype)
    if loss == "mse":
        t = rng.standard_normal((batch, sizes[-1])).astype(dtype)
    else:
        t = rng.integers(0, sizes[-1], batch).astype(np.int64)
    return {"x": x}, {"t": t}


def reference_grads(net, inputs, targets):
    g = net.graph
    gg, grads = backward(g, g.meta["loss"], g.params)
    feeds = {**inputs, **targets, **net.params, **net.state}
    vals = numpy_ref.run(gg, feeds, [g.meta["loss"]] + list(grads.values()))
    return float(vals[g.meta["loss"]]), {p: vals[gn] for p, gn in grads.items()}


LOSSES = ["mse"] + (["xent"] if "cross_entropy" in all_ops() else [])


# ---- programs against the reference --------------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_forward_and_gradients_match_reference(act, loss):
    net = Network(mlp(act=act, loss=loss), seed=3)
    x, t = data(loss=loss)
    y = net.forward(**x)["y"]
    ref = numpy_ref.run(net.graph, {**x, **net.params}, [net.graph.outputs["y"]])
    np.testing.assert_allclose(y, ref[net.graph.outputs["y"]], rtol=1e-12, atol=1e-13)
    loss_v, grads = net.gradients(x, t)
    want_loss, want = reference_grads(net, x, t)
    assert loss_v == pytest.approx(want_loss, rel=1e-12)
    for p in net.params:
        np.testing.assert_allclose(grads[p], want[p], rtol=1e-10, atol=1e-12, err_msg=p)
    ev_loss, outs = net.evaluate_batch(x, t)
    assert ev_loss == pytest.approx(want_loss, rel=1e-12)
    np.testing.assert_allclose(outs["y"], y, rtol=1e-14)


def test_batch_sizes_share_one_program():
    net = Network(mlp(), seed=0)
    for b in (1, 7, 33, 7):
        x, t = data(batch=b)
        ref = numpy_ref.run(net.graph, {**x, **net.params}, [net.graph.outputs["y"]])
        np.testing.assert_allclose(net(x["x"]), ref[net.graph.outputs["y"]], rtol=1e-12)
    assert len(net._programs) == 1


def test_fusion_keeps_values():
    g = mlp(sizes=(6, 5, 4, 3), act="sigmoid")
    b = build(g, "grad", "float64")
    fused = [n for n in b.graph.nodes() if n.op == "fused"]
    assert any(len(n.attrs["body"]) > 1 for n in fused), "the bias add did not fuse"
    assert not any(get_ew(n.op) for n in b.graph.nodes()), "an elementwise op was left unfused"
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((4, 6)), "t": rng.standard_normal((4, 3))}
    for p in g.params:
        feeds[p] = rng.standard_normal(g.shape(p))
    plain, grads = backward(g, g.meta["loss"], g.params)
    want = numpy_ref.run(plain, feeds, list(grads.values()))
    got = numpy_ref.run(b.graph, feeds, list(b.grads.values()))
    for p in g.params:
        np.testing.assert_allclose(got[b.grads[p]], want[grads[p]], rtol=1e-12)


def get_ew(op):
    o = all_ops().get(op)
    return bool(o is not None and o.elementwise and op != "fused")


def test_memory_plan_reuses_and_keeps_results(monkeypatch):
    g = mlp(sizes=(10, 9, 8, 7, 6, 5))
    b = build(g, "grad", "float64")
    plan = b.plan
    naive_fixed, naive_batch = plan.naive["float64"]
    assert plan.per_example["float64"] < naive_batch, "no buffer was reused"
    # no two values live at once share memory
    order = list(b.graph.nx.nodes)
    pos = {n: i for i, n in enumerate(order)}
    last = {n: max([pos[c] for c in b.graph.consumers(n)] + [pos[n]]) for n in order}
    for n in b.roots:
        last[n] = len(order)
    slots = list(plan.slots.items())
    for i, (a, sa) in enumerate(slots):
        for c, sc in slots[i + 1:]:
            if sa.dtype != sc.dtype or sa.batch != sc.batch:
                continue
            overlap_t = pos[a] <= last[c] and pos[c] <= last[a]
            overlap_m = sa.offset < sc.offset + sc.size and sc.offset < sa.offset + sa.size
            assert not (overlap_t and overlap_m), f"{a} and {c} share memory while both live"
    # and results equal those of a plan without reuse
    x, t = data(sizes=(10, 9, 8, 7, 6, 5))
    reused = Network(g, seed=1).gradients(x, t)
    monkeypatch.setattr(memory, "REUSE", False)
    net = Network(mlp(sizes=(10, 9, 8, 7, 6, 5), name="mlp_noreuse"), seed=1)
    fresh = net.gradients(x, t)
    assert reused[0] == fresh[0]
    for p in reused[1]:
        np.testing.assert_array_equal(reused[1][p], fresh[1][p])


# ---- optimizers ---------------------------------------------------------------

def numpy_optimizer(name, params, grads_fn, steps, lr, **h):
    """PyTorch's update rules written out in NumPy."""
    p = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v2 = {k: np.zeros_like(v) for k, v in p.items()}
    wd, clip = h.get("weight_decay", 0.0), h.get("clip", 0.0)
    for t in range(1, steps + 1):
        g = grads_fn(p)
        if clip:
            norm = np.sqrt(sum(np.sum(x * x) for x in g.values()))
            c = clip / (norm + 1e-6)
            if c < 1:
                g = {k: x * c for k, x in g.items()}
        for k in p:
            d = g[k] + wd * p[k] if name != "adamw" else g[k]
            if name == "sgd":
                mu = h.get("momentum", 0.0)
                if mu:
                    m[k] = mu * m[k] + d
                    d = d + mu * m[k] if h.get("nesterov") else m[k]
                p[k] = p[k] - lr * d
            else:
                b1, b2 = h.get("betas", (0.9, 0.999))
                eps = h.get("eps", 1e-8)
                if name == "adamw":
                    p[k] = p[k] * (1 - lr * wd)
                m[k] = b1 * m[k] + (1 - b1) * d
                v2[k] = b2 * v2[k] + (1 - b2) * d * d
                denom = np.sqrt(v2[k]) / np.sqrt(1 - b2 ** t) + eps
                p[k] = p[k] - lr / (1 - b1 ** t) * m[k] / denom
    return p


@pytest.mark.parametrize("name,hyper", [
    ("sgd", {}),
    ("sgd", {"momentum": 0.9, "weight_decay": 0.01}),
    ("sgd", {"momentum": 0.8, "nesterov": True}),
    ("sgd", {"momentum": 0.9, "clip": 0.05}),
    ("adam", {"weight_decay": 0.001}),
    ("adam", {"betas": (0.8, 0.99), "eps": 1e-6, "clip": 0.1}),
    ("adamw", {"weight_decay": 0.1}),
])
def test_optimizer_steps_match_numpy(name, hyper):
    net = Network(mlp(), seed=5)
    x, t = data()
    start = net.state_dict()

    def grads_fn(p):
        ref = Network(mlp(), seed=5)
        ref.load_state_dict(p)
        return reference_grads(ref, x, t)[1]

    want = numpy_optimizer(name, start, grads_fn, 4, 0.05, **hyper)
    net.set_optimizer(name, **hyper)
    for _ in range(4):
        net.train_step(x, t, lr=0.05)
    for k in want:
        np.testing.assert_allclose(net.params[k], want[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_optimizer_state_resumes_exactly():
    x, t = data()
    a = Network(mlp(), seed=1)
    a.set_optimizer("adam", weight_decay=0.01)
    for _ in range(3):
        a.train_step(x, t, 0.01)
    saved, opt = a.state_dict(), a.optimizer_state()
    for _ in range(2):
        a.train_step(x, t, 0.01)
    b = Network(mlp(), seed=9)
    b.load_state_dict(saved)
    b.load_optimizer_state(opt)
    for _ in range(2):
        b.train_step(x, t, 0.01)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])


def test_train_step_reports_nonfinite_and_skips_update():
    net = Network(mlp(), seed=0)
    x, t = data()
    x["x"][2, 3] = np.nan
    before = net.state_dict()
    loss = net.train_step(x, t, 0.1)
    assert not np.isfinite(loss)
    for k, v in before.items():
        np.testing.assert_array_equal(net.params[k], v)
    where = net.find_nonfinite(x, t)
    assert where is not None and "'x'" in where
    x["x"][2, 3] = 0.0
    net.params["fc1.weight"][0, 0] = np.inf
    where = net.find_nonfinite(x, t)
    assert "fc1.weight" in where
    net.params["fc1.weight"][0, 0] = 0.0
    assert net.find_nonfinite(x, t) is None


# ---- the Network's checks ---------------------------------------------------------

def test_wrong_inputs_raise_data_errors():
    from nnspec.errors import DataError
    net = Network(mlp(loss=LOSSES[-1]), seed=0)
    x, t = data(loss=LOSSES[-1])
    with pytest.raises(DataError, match=r"'x'.*\[B, 12\].*\[7, 11\]"):
        net.forward(x=np.zeros((7, 11)))
    with pytest.raises(DataError, match="no array given for input 'x'"):
        net.forward(y=x["x"])
    with pytest.raises(DataError, match="batch of 3 rows"):
        net.gradients(x, {"t": t["t"][:3]})
    if LOSSES[-1] == "xent":
        with pytest.raises(DataError, match="integers"):
            net.gradients(x, {"t": t["t"].astype(np.float64)})
    with pytest.raises(DataError, match=r"expected \[5, 8\], got \[8, 5\]"):
        net.load_state_dict({**net.state_dict(), "fc1.weight": np.zeros((8, 5))})
    with pytest.raises(DataError, match="missing"):
        net.load_state_dict({})


def test_params_are_live_views():
    net = Network(mlp(), seed=0)
    w = net.params["fc0.weight"]
    x, t = data()
    net.train_step(x, t, 0.1)
    assert w is net.params["fc0.weight"]
    np.testing.assert_array_equal(w, net.state_dict()["fc0.weight"])
    net.load_state_dict({k: np.ones_like(v) for k, v in net.state_dict().items()})
    assert np.all(w == 1)


def test_init_is_reproducible_and_auto_picks_he_for_relu():
    from nnspec.init import resolve
    a, b = Network(mlp(act="relu"), seed=4), Network(mlp(act="relu"), seed=4)
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    c = Network(mlp(act="relu"), seed=5)
    assert not np.array_equal(a.params["fc0.weight"], c.params["fc0.weight"])
    g = mlp(act="relu")
    assert resolve(g, "fc0.weight") == "he"        # fc0 -> relu
    assert resolve(g, "fc1.weight") == "glorot"    # the last layer feeds the loss
    assert resolve(mlp(act="tanh"), "fc0.weight") == "glorot"
    assert np.all(a.params["fc0.bias"] == 0.1)


# ---- float32 code, the disk cache ------------------------------------------------

def test_float32_step_has_no_float64():
    net = Network(mlp(dtype="float32", sizes=(6, 5, 3), name="f32"), seed=0)
    x, t = data(sizes=(6, 5, 3), dtype="float32")
    net.train_step(x, t, 0.1)
    src = net._train.source
    body = src[src.index("T = np.float32"):]
    # every float literal in generated code is typed: T(0.5), never a bare 0.5
    bare = [m for m in re.finditer(r"(?<![\w.(])(\d+\.\d*(e-?\d+)?)", body)
            if not body[:m.start()].endswith("T(")]
    assert not bare, [body[m.start() - 20:m.end() + 5] for m in bare]
    # and the values stay float32 all through the step
    assert net.params["fc0.weight"].dtype == np.float32
    loss, grads = net.gradients(x, t)
    assert all(v.dtype == np.float32 for v in grads.values())


def _run_fresh(code: str, cache: Path, env_extra=None) -> subprocess.CompletedProcess:
    env = dict(os.environ, NNSPEC_CACHE=str(cache), PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=600)


def test_second_process_loads_the_step_from_disk(tmp_path):
    """A second process compiles nothing: no Numba compile event, the step a
    cache hit, no file of the cache written (how long a warm restart takes is
    measured in bench/compile_time.py, not here)."""
    code = textwrap.dedent(f"""
        import sys
        from numba.core import event
        sys.path.insert(0, {str(ROOT / 'tests')!r})
        from test_backend import mlp, data
        from nnspec.model import Network
        with event.install_recorder("numba:compile") as compiles:
            net = Network(mlp(dtype="float32", name="cached"), seed=0)
            x, t = data(dtype="float32")
            net.train_step(x, t, 0.1)
        print("COMPILED", [e.data["dispatcher"].py_func.__qualname__
                           for _, e in compiles.buffer if e.is_start])
        step = getattr(net._train, "programs", [net._train])[0]   # a split step's halves
        print("HITS", sum(step.fn.stats.cache_hits.values()))
        print("PATH", step.path)
    """)
    first = _run_fresh(code, tmp_path)
    assert first.returncode == 0, first.stderr
    assert "COMPILED []" not in first.stdout        # the probe sees compiles
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}
    second = _run_fresh(code, tmp_path)
    assert second.returncode == 0, second.stderr
    assert "COMPILED []" in second.stdout, second.stdout
    assert "HITS 1" in second.stdout, second.stdout
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()} == files
    path = Path(re.search(r"PATH (.*)", second.stdout).group(1))
    assert path.parent.parent == tmp_path
    assert path.name.startswith(("step_cached_train_", "step_cached_accumulate_"))


def test_convolution_threads_leave_the_blas_as_they_found_it():
    """Convolutions split the batch over threads with a one-thread BLAS inside;
    afterwards the BLAS has its thread count back, and the result equals the
    NumPy reference whether the batch was split or not."""
    from nnspec.backend.cpu import blas_threads
    from nnspec.backend.jit import jitted, openblas_threads
    from nnspec.ops import conv
    fns = openblas_threads()
    if fns is None:
        pytest.skip("SciPy's OpenBLAS does not export its thread setters")
    get = fns[0]
    rng = np.random.default_rng(3)
    attrs = {"stride": [1, 1], "dilation": [1, 1], "pad": [[1, 1], [1, 1]], "groups": 1}
    extra = conv._extra(attrs, 2)
    for channels in (3, 16):          # im2col + GEMM, and channels-last
        x = rng.standard_normal((5, channels, 6, 7))
        w = rng.standard_normal((4, channels, 3, 3))
        want = all_ops()["conv"].reference(attrs, x, w)
        for k in (2, 1):
            blas_threads(k)
            before = get()
            out = np.zeros((5, 4, 6, 7))
            jitted(conv.conv_nobias)(x, w, out, *extra)
            assert get() == before
            np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("small", ["0", "1"])
def test_channels_last_convolutions_either_blocking(small, tmp_path):
    """The channels-last kernels (forward, and the input gradient of a stride-1
    convolution) multiply whole images, or blocks of a few output rows that
    cross image boundaries where the BLAS has a fast path for small products;
    both match the reference (NNSPEC_BLAS_SMALL_GEMM forces either).  Heavy
    weights (conv.ROWS_HEAVY floats and more per group) take several images
    per GEMM, in the forward and both gradients, on an odd batch, one group
    or two."""
    code = textwrap.dedent("""
        import numpy as np
        from nnspec.backend.jit import jitted
        from nnspec.ops import all_ops, conv
        rng = np.random.default_rng(5)
        heavy = [((5, 32, 5, 6), (256, 32, 3, 3), 1), ((3, 64, 3, 5), (512, 32, 3, 3), 2)]
        for xs, ws, groups in heavy:
            assert ws[1] * ws[2] * ws[3] * (ws[0] // groups) >= conv.ROWS_HEAVY
        for xs, ws, groups in [((3, 16, 5, 40), (24, 16, 3, 3), 1),
                               ((2, 32, 5, 40), (32, 16, 3, 3), 2)] + heavy:
            attrs = {"stride": [1, 1], "dilation": [1, 1], "pad": [[1, 1], [1, 1]],
                     "groups": groups}
            extra = conv._extra(attrs, 2)
            x, w = rng.standard_normal(xs), rng.standard_normal(ws)
            y = np.zeros((xs[0], ws[0]) + xs[2:])
            jitted(conv.conv_nobias)(x, w, y, *extra)
            np.testing.assert_allclose(y, all_ops()["conv"].reference(attrs, x, w),
                                       rtol=1e-10, atol=1e-10)
            g, dx = rng.standard_normal(y.shape), np.zeros(xs)
            jitted(conv.conv_grad_input)(g, w, x, dx, *extra)
            want = all_ops()["conv_grad_input"].reference(attrs, g, w, x)
            np.testing.assert_allclose(dx, want, rtol=1e-10, atol=1e-10)
            dw = np.zeros(ws)
            jitted(conv.conv_grad_weight)(x, g, w, dw, *extra)
            want = all_ops()["conv_grad_weight"].reference(attrs, x, g, w)
            np.testing.assert_allclose(dw, want, rtol=1e-10, atol=1e-9)
        print("OK")
    """)
    r = _run_fresh(code, tmp_path, {"NNSPEC_BLAS_SMALL_GEMM": small})
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]


@pytest.mark.parametrize("xs, ws, pad", [
    ((3, 16, 17, 19), (17, 16, 3, 3), [[1, 1], [1, 1]]),       # partial tiles, both sides
    ((1, 16, 16, 17), (16, 16, 3, 3), [[2, 0], [0, 1]]),       # asymmetric padding
    ((2, 20, 19, 18), (16, 20, 3, 3), [[0, 0], [0, 0]]),       # valid
    ((1, 16, 12, 12), (24, 16, 3, 3), [[2, 2], [2, 2]]),       # full
    ((2, 64, 72, 66), (32, 64, 3, 3), [[1, 1], [1, 1]]),       # several blocks per image
], ids=["odd", "asymmetric", "valid", "full", "blocks"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_winograd_convolutions_match_the_reference(xs, ws, pad, dtype):
    """3x3 stride-1 convolutions with 16+ channels and planes of
    conv.WINO_MIN_PIXELS or more get the Winograd F(2x2, 3x3) kernels from
    `kernel_for` (forward with and without a bias, input gradient, and the
    weight gradient where one side has at most conv.WINO_GW_MAX_C channels
    and the other at least conv.WINO_GW_MIN_C): all match the reference (the
    weight gradient's on every geometry, chosen or not), on odd sizes,
    partial tiles, every padding, and planes split into several blocks of
    tiles (12 in the forward, 3 in the weight gradient).  Other shapes keep
    the general kernels."""
    from nnspec.backend.jit import jitted
    from nnspec.ops import conv
    rng = np.random.default_rng(11)
    attrs = {"stride": [1, 1], "dilation": [1, 1], "pad": pad, "groups": 1}
    x, w, b = rng.standard_normal(xs), rng.standard_normal(ws), rng.standard_normal(ws[0])
    oshape = conv.conv_out_shape("conv", attrs, xs, ws)
    sym = ("B",) + tuple(oshape[1:])
    ops = all_ops()
    fwd, extra = ops["conv"].kernel_for(attrs, [("B",) + xs[1:], ws], sym)
    fwd_b, _ = ops["conv"].kernel_for({**attrs, "bias": True}, [("B",) + xs[1:], ws, ws[:1]], sym)
    gi, _ = ops["conv_grad_input"].kernel_for(attrs, [sym, ws, ("B",) + xs[1:]], ("B",) + xs[1:])
    assert (fwd, fwd_b, gi) == (conv.conv_wino_nobias, conv.conv_wino_bias,
                                conv.conv_wino_grad_input)
    gw_fits = (min(xs[1], ws[0]) <= conv.WINO_GW_MAX_C
               and max(xs[1], ws[0]) >= conv.WINO_GW_MIN_C)      # "blocks": 64 and 32
    gw, _ = ops["conv_grad_weight"].kernel_for(attrs, [("B",) + xs[1:], sym, ws], ws)
    assert gw is (conv.conv_wino_grad_weight if gw_fits else conv.conv_grad_weight)
    for c in (96, 16):                          # both sides over WINO_GW_MAX_C, under _MIN_C
        cw = (c, c, 3, 3)
        assert ops["conv_grad_weight"].kernel_for(
            attrs, [("B", c) + xs[2:], ("B", c) + sym[2:], cw], cw)[0] is conv.conv_grad_weight
    strided = {**attrs, "stride": [2, 1]}
    assert ops["conv"].kernel_for(strided, [xs, ws], oshape)[0] is conv.conv_nobias
    small = ("B", xs[1], 11, 13)                # 143 outputs a plane: under WINO_MIN_PIXELS
    assert ops["conv"].kernel_for(attrs, [small, ws], small)[0] is conv.conv_nobias
    tol = {"float64": 1e-10, "float32": 2e-5}[dtype]
    f = [a.astype(dtype) for a in (x, w, b)]
    y = np.full(oshape, np.nan, dtype)
    jitted(fwd)(f[0], f[1], y, *extra)
    want = ops["conv"].reference(attrs, x, w)
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol * np.abs(want).max())
    jitted(fwd_b)(f[0], f[1], f[2], y, *extra)
    want = ops["conv"].reference(attrs, x, w, b)
    np.testing.assert_allclose(y, want, rtol=tol, atol=tol * np.abs(want).max())
    g = rng.standard_normal(oshape)
    dx = np.full(xs, np.nan, dtype)
    jitted(gi)(g.astype(dtype), f[1], f[0], dx, *extra)
    want = ops["conv_grad_input"].reference(attrs, g, w, x)
    np.testing.assert_allclose(dx, want, rtol=tol, atol=tol * np.abs(want).max())
    dw = np.full(ws, np.nan, dtype)
    jitted(conv.conv_wino_grad_weight)(f[0], g.astype(dtype), f[1], dw, *extra)
    want = ops["conv_grad_weight"].reference(attrs, x, g, w)
    np.testing.assert_allclose(dw, want, rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.parametrize("xs, ws, attrs", [
    # an image's rows in two blocks (26 rows and 14)
    ((2, 16, 40, 200), (3, 16, 5, 5), {"stride": [1, 1], "dilation": [1, 1],
                                       "pad": [[2, 2], [1, 3]], "groups": 1}),
    ((1, 32, 60, 400), (4, 16, 5, 5), {"stride": [2, 1], "dilation": [1, 2],
                                       "pad": [[1, 0], [2, 1]], "groups": 2}),
    ((2, 16, 9000), (3, 16, 15), {"stride": [1], "dilation": [1], "pad": [[7, 7]],
                                  "groups": 1}),
], ids=["blocks", "groups2-strided-dilated", "1d"])
def test_channels_last_weight_gradient_in_blocks_of_rows(xs, ws, attrs):
    """Where an image's columns would pass conv.ROWS_MAX floats, the weight
    gradient gathers channels-last rows a block at a time; every row is added
    once, in every group, at any stride and dilation, 1-d too."""
    from nnspec.backend.jit import jitted
    from nnspec.ops import conv
    rng = np.random.default_rng(7)
    extra = conv._extra(attrs, len(ws) - 2)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    g = rng.standard_normal(conv.conv_out_shape("conv", attrs, x.shape, w.shape))
    k = int(np.prod(ws[1:]))
    assert k * int(np.prod(g.shape[2:])) > conv.ROWS_MAX      # the channels-last path
    dw = np.zeros(w.shape)
    jitted(conv.conv_grad_weight)(x, g, w, dw, *extra)
    want = all_ops()["conv_grad_weight"].reference(attrs, x, g, w)
    np.testing.assert_allclose(dw, want, rtol=1e-10, atol=1e-9)


KEEP_FREED = """
import resource, sys
import numpy as np
from numba import njit
if sys.argv[1] == "keep":
    from nnspec.backend.cpu import keep_freed_memory
    keep_freed_memory()

@njit
def step(n, k):             # a step's temporaries: k buffers of about 4 MB
    bufs = []
    for j in range(k):
        b = np.empty(n + j * 1024, np.float32)
        b[::1024] = 1.0     # one touch per page
        bufs.append(b)
    s = 0.0
    for b in bufs:
        s += b[0]
    return s

step(1 << 20, 6)
per = []
for _ in range(5):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step(1 << 20, 6)
    per.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
print("FAULTS", min(per))
"""


def test_keep_freed_memory_stops_faulting_temporaries_in_again():
    """Compiled steps malloc their large temporaries at every call; with glibc's
    own thresholds the freed block at the top of the heap is given back and
    faulted in again at the next step (the control run), with
    cpu.keep_freed_memory it is kept."""
    import ctypes
    if not hasattr(ctypes.CDLL(None), "mallopt"):
        pytest.skip("not glibc")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(ROOT)
    faults = {}
    for mode in ("none", "keep"):
        r = subprocess.run([sys.executable, "-c", KEEP_FREED, mode], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        faults[mode] = float(r.stdout.split("FAULTS")[1].split()[0])
    assert faults["none"] > 1000, faults       # the check sees the faults ...
    assert faults["keep"] < 20, faults          # ... and they are gone


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, attrs", [
    ((2, 3, 11, 12), {"kernel": [3, 3], "stride": [2, 2], "pad": [1, 1]}),
    ((1, 2, 9, 10), {"kernel": [2, 3], "stride": [1, 2], "pad": [[1, 0], [0, 2]]}),
    ((2, 2, 13), {"kernel": [4], "stride": [3], "pad": [[2, 1]]}),
    ((1, 2, 7, 7), {"kernel": [3, 3], "stride": [1, 1], "pad": [0, 0], "ceil_mode": True}),
], ids=["k3s2-pad1", "asym-sides", "1d", "k3s1"])
def test_max_pool_switches_on_ties_take_the_first_in_row_major_order(shape, attrs, dtype):
    """Undilated 1-d and 2-d max pools run down columns and then along rows; on
    ties (a ReLU's zeros, small integers here) the switch is the first maximum
    in row-major order, as the reference's argmax, and the values equal the
    reference's."""
    from nnspec.backend.jit import jitted
    from nnspec.ops import pool
    attrs = {"dilation": [1] * len(attrs["kernel"]), **attrs}
    rng = np.random.default_rng(11)
    x = rng.integers(0, 3, shape).astype(dtype)
    x[0, 0] = 0                                 # a plane of nothing but ties
    extra = pool._extra(attrs)
    oshape = pool.pool_shape("maxpool", attrs, shape)
    sw, y = np.zeros(oshape, np.int64), np.zeros(oshape, dtype)
    jitted(pool.maxpool_switches)(x, sw, *extra)
    jitted(pool.maxpool)(x, y, *extra)
    np.testing.assert_array_equal(sw, all_ops()["maxpool_switches"].reference(attrs, x))
    np.testing.assert_array_equal(y, all_ops()["maxpool"].reference(attrs, x))


def test_large_arrays_on_huge_page_boundaries(monkeypatch):
    """memory.zeros: arrays of HUGE_MIN bytes and more start on a 2 MB boundary
    (their own mapping, advised to use huge pages), are zero and writable, and
    outlive every other reference to their mapping; small ones, and all with
    NNSPEC_HUGEPAGES=0, are plain np.zeros."""
    import gc

    from nnspec import memory
    n = memory.HUGE_MIN // 4 + 3
    a = memory.zeros(n, "float32")
    assert a.shape == (n,) and a.dtype == np.float32 and a.flags.writeable
    assert a.ctypes.data % memory.HUGE_PAGE == 0 and not a.any()
    a[-1] = 7.0
    b = a[-5:]
    del a
    gc.collect()
    assert b[-1] == 7.0 and not b[:-1].any()
    small = memory.zeros(1000, "float64")
    assert small.base is None and small.dtype == np.float64 and not small.any()
    monkeypatch.setenv("NNSPEC_HUGEPAGES", "0")
    assert memory.zeros(n, "float32").base is None


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm")
def test_touch_maps_pages_and_keeps_values(monkeypatch):
    """memory.touch maps every page of a large array (the process's resident
    size grows by the array's size) without changing a value, on one core
    and on several, in the huge-page mapping and in a plain array; small and
    strided arrays are left alone."""
    from nnspec import memory
    from nnspec.backend import cores

    def resident():
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    n = 3 * memory.HUGE_MIN // 8 + 5          # float64: not a whole number of pages
    for n_cores, huge in [(1, "1"), (2, "1"), (3, "0")]:
        monkeypatch.setattr(cores, "available", lambda n_cores=n_cores: n_cores)
        monkeypatch.setenv("NNSPEC_HUGEPAGES", huge)
        a, b = memory.zeros(n, "float64"), memory.zeros(n, "float64")
        before = resident()
        memory.touch(a, b)
        assert resident() - before >= 0.9 * (a.nbytes + b.nbytes)
        assert not a.any() and not b.any()
        rng = np.random.default_rng(n_cores)
        c = rng.standard_normal(n)
        keep = c.copy()
        memory.touch(c, c[::2], c[:10])
        np.testing.assert_array_equal(c, keep)


@pytest.mark.parametrize("bias", [False, True])
def test_convolutions_of_one_image_per_gemm_write_the_output_plane(bias):
    """Where an image's columns fill a GEMM (few channels, a large plane: a
    stem), the forward writes each product into its output plane, adds the
    bias there, and the weight gradient takes g's plane as it is; both match
    the reference."""
    from nnspec.backend.jit import jitted
    from nnspec.ops import conv
    attrs = {"stride": [2, 2], "dilation": [1, 1], "pad": [[3, 3], [3, 3]], "groups": 1}
    extra = conv._extra(attrs, 2)
    rng = np.random.default_rng(17)
    x, w = rng.standard_normal((3, 3, 121, 119)), rng.standard_normal((8, 3, 7, 7))
    b = rng.standard_normal(8)
    oshape = conv.conv_out_shape("conv", attrs, x.shape, w.shape)
    assert 3 * 7 * 7 * oshape[2] * oshape[3] > 1 << 17       # one image per GEMM
    y = np.zeros(oshape)
    if bias:
        jitted(conv.conv_bias)(x, w, b, y, *extra)
    else:
        jitted(conv.conv_nobias)(x, w, y, *extra)
    want = all_ops()["conv"].reference(attrs, x, w, b if bias else None)
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-10)
    g, dw = rng.standard_normal(oshape), np.zeros(w.shape)
    jitted(conv.conv_grad_weight)(x, g, w, dw, *extra)
    np.testing.assert_allclose(dw, all_ops()["conv_grad_weight"].reference(attrs, x, g, w),
                               rtol=1e-10, atol=1e-8)
