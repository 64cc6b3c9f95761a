"""Whole zoo networks, at small input sizes, differentiated by nnspec's
autodiff: the gradient of the loss along a random direction in parameter
space agrees with central finite differences, in float64."""
import numpy as np
import pytest

import nnspec
from nnspec.backend.numpy_ref import run
from nnspec.init import initial_values
from nnspec.passes.autodiff import backward

# spec, --set overrides that keep it small, batch, relative tolerance.
# VGG-16 stacks 13 ReLUs without normalisation: at random initialisation so
# many units sit near zero that even a 1e-7 step flips a few, and the finite
# difference itself moves by 1e-3 between step sizes (the analytic value sits
# where small steps converge), so it gets a looser bound.  Xception at 32x32
# with batch 2 is so curved (batch norm over two examples and 1x1 maps) that
# central differences need a 1e-8 step: at 1e-4 they are off by 10x, at 1e-7
# by 5e-5, at 1e-8 by 1e-7.
CASES = [
    ("mlp", {"hidden": 16}, 3, 1e-6),
    ("maxout_mlp", {"hidden": 8, "pieces": 3}, 3, 1e-6),
    ("lenet5", {}, 2, 1e-6),
    ("cnn", {}, 2, 1e-6),
    ("resnet18", {"size": 32, "classes": 5}, 4, 1e-6),
    ("densenet121", {"size": 32, "classes": 4, "growth": 4}, 4, 1e-6),
    ("googlenet", {"size": 64, "classes": 4, "aux": False}, 1, 1e-6),
    ("wavenet", {"quant": 8, "length": 40, "channels": 4, "skip": 6}, 2, 1e-6),
    ("vgg16", {"size": 32, "classes": 3}, 1, 5e-3),
    ("xception", {"size": 32, "classes": 3}, 2, 1e-6, 1e-8),
]
STEP = 1e-7   # small enough that no ReLU or max switches between the two sides


def with_loss(graph):
    """The spec's loss, or sum(output * r) for a fixed random r."""
    if "loss" in graph.meta:
        return graph.meta["loss"]
    out = next(iter(graph.outputs.values()))
    r = graph.input("r_direction", graph.shape(out), kind="target")
    m = graph.add("mul", (out, r))
    return graph.add("sum", (m,), {"axes": None, "keepdims": False})


def feeds_for(graph, batch, rng):
    feeds = {}
    for nid in graph.inputs + graph.targets:
        shape = tuple(batch if d == "B" else d for d in graph.shape(nid))
        if graph.dtype_of(nid).startswith("int"):
            feeds[nid] = rng.integers(0, 3, size=shape).astype(np.int64)
        else:
            feeds[nid] = rng.normal(size=shape)
    return feeds


@pytest.mark.parametrize("name, overrides, batch, rtol, eps",
                         [c if len(c) == 5 else c + (STEP,) for c in CASES],
                         ids=[c[0] for c in CASES])
def test_zoo_gradient_matches_finite_differences(name, overrides, batch, rtol, eps):
    graph = nnspec.lower(f"specs/{name}.nn", set=overrides, dtype="float64")
    loss = with_loss(graph)
    g, grads = backward(graph, loss)
    rng = np.random.default_rng(0)
    values = initial_values(graph, seed=1, dtype="float64")
    for p in graph.params:   # zero biases put exact ties at ReLUs fed by all-zero inputs
        values[p] = values[p] + 0.05 * rng.normal(size=values[p].shape)
    feeds = {**values, **feeds_for(graph, batch, rng)}
    params = list(grads)
    out = run(g, feeds, [grads[p] for p in params])
    direction = {p: rng.normal(size=values[p].shape) for p in params}
    analytic = sum(float(np.sum(out[grads[p]] * direction[p])) for p in params)

    def loss_at(eps):
        shifted = dict(feeds)
        for p in params:
            shifted[p] = values[p] + eps * direction[p]
        return float(run(graph, shifted, [loss])[loss])

    numeric = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    assert np.isclose(analytic, numeric, rtol=rtol, atol=1e-8), (analytic, numeric)
