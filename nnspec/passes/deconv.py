"""Projections of one layer's activations back to the input: the deconvnet of
Zeiler and Fergus (2014), and the input gradient (saliency).

    g = project(graph, "conv_relu_1.relu")            # the deconvnet
    g = project(graph, "logits", rectify=False)       # the gradient (saliency)

Both build, from the forward graph in eval mode, a graph with one more input,
`SEED` (shaped like the layer's output: the activations to project), whose
output `PROJECTION` is the projection onto the network's input.  It is an
ordinary graph: the CPU backend compiles and runs it like any program.

The deconvnet is the backward pass (passes/autodiff.py) with one rule changed,
as Springenberg et al. (2015, figure 1) put it: where backpropagation masks
the signal by the sign of a ReLU's forward input, the deconvnet rectifies the
signal itself.  Per op, reading the projection from the layer down:

    conv (2-d, 1-d)      the transposed convolution with the same weights
                         (conv_grad_input: the filters flipped, in and out
                         channels swapped); the bias is left out
    maxpool              unpool at the switches this input's forward pass
                         recorded (maxpool_switches); where overlapping
                         windows chose one position their values add
    relu                 relu of the signal (Zeiler and Fergus)
    leaky_relu           leaky_relu of the signal (the same slope)
    elu                  relu of the signal (the rectification of its
                         positive part; positive-homogeneous like relu)
    batchnorm (eval)     scaled by gamma / sqrt(running_var + eps), the
                         shift left out: the linear part of the eval-mode op
    dropout (eval)       identity (eval mode's mask is all ones)
    avgpool              each value spread evenly over its window
    reshape, flatten     the inverse reshape
    add                  the signal goes to both branches
    concat               the signal is split back into the parts
    dense (linear)       the transposed weight matrix, the bias left out
    any other op         its gradient rule at this input (tanh, sigmoid:
                         the signal times the local slope)

Every rule but the rectifiers' is the op's own gradient (for a linear map,
its transpose), so the deconvnet needs no new op.  With `rectify=False` every
op uses its gradient: the projection is then d(seed . layer) / d(input), the
saliency map of Simonyan et al. (2014) when the seed is one class's one-hot.
"""
from __future__ import annotations

from ..errors import SpecError
from ..ir import Graph
from .autodiff import backward, copy_graph
from .mode import specialise

SEED = "deconv/seed"
PROJECTION = "projection"


def _self_on_signal(gb, node, g):
    """The op itself applied to the signal (its attrs kept)."""
    return [gb.add(node.op, (g,), node.attrs)]


def _relu_on_signal(gb, node, g):
    return [gb.add("relu", (g,))]


# the ops whose deconvnet rule is not their gradient
RECTIFY = {"relu": _self_on_signal, "leaky_relu": _self_on_signal, "elu": _relu_on_signal}


def project(graph: Graph, node: str, *, rectify: bool = True) -> Graph:
    """The graph computing the projection of `node`'s activations onto the
    network's input: inputs the network's input and `SEED` (shaped like
    `node`), output `PROJECTION`.  `rectify`: the deconvnet's rule at
    rectifiers; False gives the input gradient."""
    if len(graph.inputs) != 1:
        raise SpecError(f"projecting onto the input needs a network with one input; "
                        f"{graph.name} has {len(graph.inputs)}: {', '.join(graph.inputs)}")
    x = graph.inputs[0]
    g = specialise(graph, training=False)
    seed = g.add("input", (), {"kind": "input"}, name=SEED, shape=g.shape(node),
                 dtype=g.dtype_of(node))
    g, grads = backward(g, None, [x], seeds=[(node, seed)],
                        rules=RECTIFY if rectify else None)
    if x not in grads:
        raise SpecError(f"'{node}' does not depend on the input '{x}': nothing to project")
    g.outputs = {PROJECTION: grads[x]}
    g.meta.pop("loss", None)
    return g


def truncate(graph: Graph, node: str) -> Graph:
    """The forward graph with `node` as its only output (named after it): a
    program that stops at that layer."""
    g = copy_graph(graph)
    g.outputs = {node: node}
    g.meta.pop("loss", None)
    return g
