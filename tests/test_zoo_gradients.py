"""Whole zoo networks, at small input sizes, differentiated by nnspec's
autodiff: the gradient of the loss along a random direction in parameter
space (of unit length) agrees with central finite differences, in float64."""
import numpy as np
import pytest

import nnspec
from nnspec.backend.numpy_ref import run
from nnspec.init import initial_values
from nnspec.passes.autodiff import backward

# spec, --set overrides that keep it small, batch, relative tolerance.
CASES = [
    ("mlp", {"hidden": 16}, 3, 1e-6),
    ("maxout_mlp", {"hidden": 8, "pieces": 3}, 3, 1e-6),
    ("lenet5", {}, 2, 1e-6),
    ("cnn", {}, 2, 1e-6),
    ("resnet18", {"size": 32, "classes": 5}, 4, 1e-6),
    ("densenet121", {"size": 32, "classes": 4, "growth": 4}, 4, 1e-6),
    ("googlenet", {"size": 64, "classes": 4, "aux": False}, 1, 1e-6),
    ("wavenet", {"quant": 8, "length": 40, "channels": 4, "skip": 6}, 2, 1e-6),
    ("vgg16", {"size": 32, "classes": 3}, 1, 1e-6),
    # Xception: 5e-7 alone, 2.4e-6 once in the full suite (the BLAS's other
    # summation order there puts a kink of the 36 ReLUs or max pools within
    # the step); the 0.7% that was once taken for a wrong rule is far above
    ("xception", {"size": 32, "classes": 3}, 2, 2e-5),
]
# The direction has unit length, so a step moves the parameters by that much
# whatever their number: small enough that no ReLU or max switches between
# the two sides (at 1e-5 one in GoogLeNet does), large enough that rounding
# stays within the tolerance (at 1e-6 all within 5.1e-7; at 1e-7 up to
# 2e-6).  A direction of unit normals moved Xception's 21 M parameters
# sqrt(21 M) = 4,600 times as far as the step, and VGG-16's 3,900 times: a
# ReLU switched within 1e-7 (Xception off by 5e-5, VGG-16 by 1e-3), which
# had been taken for curvature.
STEP = 1e-6


def with_loss(graph):
    """sum(output * r) for a fixed random r, whatever the spec's train section
    says: every element of the output gets a gradient (a mean cross-entropy
    over a few classes gives small gradients next to the loss, which central
    differences resolve only to rounding)."""
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


@pytest.mark.parametrize("name, overrides, batch, rtol", CASES, ids=[c[0] for c in CASES])
def test_zoo_gradient_matches_finite_differences(name, overrides, batch, rtol):
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
    norm = np.sqrt(sum(float(np.sum(d * d)) for d in direction.values()))
    direction = {p: d / norm for p, d in direction.items()}
    analytic = sum(float(np.sum(out[grads[p]] * direction[p])) for p in params)

    def loss_at(eps):
        shifted = dict(feeds)
        for p in params:
            shifted[p] = values[p] + eps * direction[p]
        return float(run(graph, shifted, [loss])[loss])

    numeric = (loss_at(STEP) - loss_at(-STEP)) / (2 * STEP)
    assert np.isclose(analytic, numeric, rtol=rtol, atol=1e-8), (analytic, numeric)
