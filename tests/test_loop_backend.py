"""The compiled loop (backend/loops.py): one generated @njit function runs all
steps; it agrees with the NumPy reference and its source does not depend on T."""
from __future__ import annotations

import numpy as np
import pytest

from nnspec.backend import numpy_ref

from test_loop import ELMAN, LSTM, MASK, net, params, rebuild

pytest.importorskip("numba")
from nnspec.backend.loops import loop_source, run_loop  # noqa: E402


@pytest.mark.parametrize("cell,reverse,mask", [("elman", True, True), ("lstm", False, False)])
def test_compiled_loop_matches_reference(cell, reverse, mask):
    src, name = (ELMAN, "rnn") if cell == "elman" else (LSTM, "lstm")
    g = net(f"  output y = x -> {name}(4, reverse={'true' if reverse else 'false'})", cell=src)
    if mask:
        g = rebuild(g, "y", mask=True)
    feeds = params(g)
    feeds["x"] = np.random.default_rng(1).standard_normal((2, 5, 3))
    if mask:
        feeds["mask"] = MASK
    want = numpy_ref.run(g, feeds, ["y"])["y"]
    n = g.node("y")
    got = run_loop(n, "float64", *[feeds[i] for i in n.inputs])
    for kind in ("seq", "final", "carry"):
        for a, b in zip(want[kind], got[kind]):
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12)


def test_source_does_not_depend_on_T_and_hoists_the_input_projection():
    texts = [loop_source(net("  output y = x -> rnn(4)", steps=str(T)).node("y"), "float64")[0]
             for T in (10, 1000)]
    assert texts[0] == texts[1]
    pre, loop = texts[0].split("for i in range(T_):")
    assert "hoisted: y.dense" in pre and "linear_bias" in pre and "linear_bias" not in loop
