"""What a trained network computes, as arrays: a layer's feature maps, a
convolution's filters, single activations projected back to the input
through the deconvnet (Zeiler and Fergus 2014), and saliency maps (Simonyan
et al. 2014).

    maps(net, "conv_relu.relu", x)          # the layer's output for x
    filters(net)                            # the first convolution's weights [O, C, kh, kw]
    deconv(net, "maxpool_1", x, unit=5)     # unit 5's strongest activation alone, projected
    saliency(net, x, cls=3)                 # d(score of class 3) / dx
    top = strongest(net, "maxpool_1", xs, units=8, top=9)   # what `nnspec visualize` draws

Layers are named as `nnspec inspect` names them (a block's name stands for
its output).  `x` is one example, shaped like the network's input, or a
batch of them; a result has the same batch axis, or none.  A unit is a
channel (axis 1 of the layer's output; a feature of a dense layer).

Projections are graphs built from the network's graph by passes/deconv.py
and compiled by the CPU backend as steps of calls (each kernel is compiled
once per signature and shared with every network, so a new network or
layer costs little compiling); they run over the network's own parameter
arena, so they see its current weights.
"""
from __future__ import annotations

import difflib
import weakref
from dataclasses import dataclass

import numpy as np

from ..errors import DataError, SpecError
from ..inspect import field_box, receptive_fields
from ..passes.deconv import SEED, project, truncate

BATCH = 256                 # rows per program call
_programs: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


# ---- layers ----------------------------------------------------------------------

def layer_names(graph) -> dict:
    """Layer name -> its output node: the layers `nnspec inspect` lists, the
    blocks, and the network's outputs."""
    names = {}
    for inst in graph.meta.get("layers", []):
        if not inst.get("in_step") and inst.get("output") in graph:
            names.setdefault(inst["name"], inst["output"])
    for k, v in graph.outputs.items():
        names.setdefault(k, v)
    return names


def layer_node(graph, name: str) -> str:
    """The node holding layer `name`'s output; a SpecError at the nearest
    name's layer (with "did you mean"), or at the network's input."""
    names = layer_names(graph)
    if name in names:
        return names[name]
    near = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
    where = names[near[0]] if near else (graph.inputs or [None])[0]
    loc = graph.node(where).loc if where is not None else None
    if near:
        hint = f"did you mean '{near[0]}'? (the layer marked above)"
    else:
        shown = list(names)[:12]
        hint = (f"its layers: {', '.join(shown)}" + (", ..." if len(names) > 12 else "")
                + " (`nnspec inspect` lists them)")
    raise SpecError(f"no layer named '{name}' in network {graph.name}", loc, hint)


def _unit_layer(net, name: str) -> str:
    """`name`'s node, which must have a batch axis and units (axis 1)."""
    node = layer_node(net.graph, name)
    shape = net.graph.shape(node)
    if len(shape) < 2 or shape[0] != "B" or any(not isinstance(d, int) for d in shape[1:]):
        raise DataError(f"layer '{name}' has shape [{', '.join(map(str, shape))}]: it needs a "
                        f"batch axis, then units (channels) and fixed sizes")
    if not str(net.graph.dtype_of(node)).startswith("float"):
        raise DataError(f"layer '{name}' holds {net.graph.dtype_of(node)} values, not activations")
    return node


# ---- running graphs over the network's weights --------------------------------------

def _input(net) -> str:
    if len(net.inputs) != 1:
        raise DataError(f"visualising needs a network with one input; {net.graph.name} "
                        f"takes {', '.join(net.inputs)}")
    return next(iter(net.inputs))


def examples(net, x) -> tuple[np.ndarray, bool]:
    """`x` as a checked batch, and whether it was one example."""
    name = _input(net)
    a = np.asarray(x)
    single = a.shape == tuple(net.inputs[name])
    return net._feeds({name: a[None] if single else a}, None)[name], single


def _run(net, key, make, feeds: dict) -> np.ndarray:
    """The only output of the graph `make()` for `feeds`, in batches; the
    compiled program is kept per network and `key`."""
    progs = _programs.setdefault(net, {})
    if key not in progs:
        from ..backend.cpu import compile_program
        g = make()
        progs[key] = (g, compile_program(g, "infer", net.dtype, net._playout, net._slayout,
                                         whole=False))
    g, p = progs[key]
    out = next(iter(g.outputs.values()))
    n = len(next(iter(feeds.values())))
    parts = []
    for lo in range(0, n, BATCH):
        part = {k: np.ascontiguousarray(v[lo:lo + BATCH]) for k, v in feeds.items()}
        p(net._P, net._S, net._G, net._M, net._V, net._hp0, part)
        parts.append(p.value(out, len(next(iter(part.values())))).copy())
    return np.concatenate(parts)


def _forward(net, node: str, xb: np.ndarray) -> np.ndarray:
    """Node `node`'s eval-mode values for the batch `xb`."""
    return _run(net, ("forward", node), lambda: truncate(net.graph, node), {_input(net): xb})


def _project(net, node, xb, seeds, rectify: bool) -> np.ndarray:
    seeds = np.ascontiguousarray(seeds, dtype=net.dtype)
    return _run(net, ("project", node, rectify),
                lambda: project(net.graph, node, rectify=rectify),
                {_input(net): xb, SEED: seeds})


# ---- the API -----------------------------------------------------------------------

def maps(net, layer: str, x) -> np.ndarray:
    """Layer `layer`'s feature maps (its eval-mode output) for `x`."""
    node = _unit_layer(net, layer)
    xb, single = examples(net, x)
    a = _forward(net, node, xb)
    return a[0] if single else a


def filters(net, layer: str | None = None) -> np.ndarray:
    """The weights [out, in / groups, (kh,) kw] of convolution `layer`, by
    default the network's first convolution."""
    convs = [n for n in net.graph.nodes() if n.op == "conv"]
    if layer is None:
        if not convs:
            raise DataError(f"network {net.graph.name} has no convolution: no filters to show")
        node = convs[0]
    else:
        node = net.graph.node(layer_node(net.graph, layer))
        if node.op != "conv":
            names = [n for n, v in layer_names(net.graph).items() if v in {c.id for c in convs}]
            raise DataError(f"layer '{layer}' is a {node.op}, not a convolution: it has no "
                            f"filters" + (f"; the convolutions: {', '.join(names)}" if names else ""))
    w = node.inputs[1]
    if w not in net.params:
        raise DataError(f"convolution '{node.id}' computes its weights ('{w}'): no filters "
                        f"to show")
    return net.params[w].copy()


def _check_unit(layer: str, shape, unit, what: str = "units") -> int:
    if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) \
            or not 0 <= unit < shape[1]:
        raise DataError(f"'{layer}' has {what} 0..{shape[1] - 1} (shape "
                        f"[{', '.join(map(str, shape))}]), not {unit!r}")
    return int(unit)


def _alone(a: np.ndarray, unit: int, position=None) -> np.ndarray:
    """Seeds holding, for each row i, only the activation a[i, unit] at its
    maximum (or at `position`), zeros elsewhere."""
    seeds = np.zeros_like(a)
    for i, plane in enumerate(a[:, unit]):
        at = tuple(position) if position is not None else \
            np.unravel_index(int(np.argmax(plane)), plane.shape)
        seeds[(i, unit) + at] = plane[at]
    return seeds


def deconv(net, layer: str, x, unit: int, *, position=None) -> np.ndarray:
    """The deconvnet's projection onto the input of unit `unit`'s activation
    in layer `layer`, alone (every other activation of the layer zero): the
    one at the unit's maximum for each input, or at `position` (the unit's
    spatial indices)."""
    node = _unit_layer(net, layer)
    unit = _check_unit(layer, net.graph.shape(node), unit)
    xb, single = examples(net, x)
    a = _forward(net, node, xb)
    if position is not None:
        position = tuple(int(p) for p in position)
        if len(position) != a.ndim - 2 or any(
                not 0 <= p < n for p, n in zip(position, a.shape[2:])):
            raise DataError(f"layer '{layer}': position {list(position)} is not inside its "
                            f"maps {list(a.shape[2:])}")
    seeds = _alone(a, unit, position)
    out = _project(net, node, xb, seeds, rectify=True)
    return out[0] if single else out


def _scores(net, output):
    """The node of a [B, classes] output (default the first)."""
    out = output or net.outputs[0]
    if out not in net.graph.outputs:
        raise DataError(f"no output named '{out}'; the network's outputs: "
                        f"{', '.join(net.outputs)}")
    node = net.graph.outputs[out]
    shape = net.graph.shape(node)
    if len(shape) != 2 or shape[0] != "B":
        raise DataError(f"'{out}' is [{', '.join(map(str, shape))}]: class scores are "
                        f"[B, classes]")
    return out, node


def predicted(net, x, *, output: str | None = None):
    """The class with the largest score of `output` (default the first) for `x`."""
    _, node = _scores(net, output)
    xb, single = examples(net, x)
    c = np.argmax(_forward(net, node, xb), axis=1)
    return c[0] if single else c


def saliency(net, x, cls=None, *, output: str | None = None) -> np.ndarray:
    """The gradient of the score of class `cls` (an int, one per input, or
    None: the predicted class) of output `output` (default the first; it must
    be [B, classes]) with respect to the input: Simonyan et al.'s saliency,
    from the backward pass."""
    out, node = _scores(net, output)
    xb, single = examples(net, x)
    scores = _forward(net, node, xb)
    classes = np.argmax(scores, axis=1) if cls is None else \
        np.broadcast_to(np.asarray(cls), (len(xb),))
    for c in np.unique(classes):
        _check_unit(out, net.graph.shape(node), c.item(), "classes")
    seeds = np.zeros_like(scores)
    seeds[np.arange(len(xb)), classes] = 1
    g = _project(net, node, xb, seeds, rectify=False)
    return g[0] if single else g


# ---- the grid of the strongest activations ------------------------------------------

@dataclass
class Strongest:
    """For each of K units of a layer, the N inputs that excite it most, and
    the projection of each of those activations alone."""
    layer: str
    shape: tuple                # the layer's output per example
    units: list                 # K unit indices
    inputs: np.ndarray          # [K, N] indices into the inputs searched
    values: np.ndarray          # [K, N] the activations projected (each input's maximum)
    positions: list             # [K][N] their spatial indices
    boxes: list                 # [K][N] their receptive fields: [(first, last + 1)] per axis
    projections: np.ndarray     # [K, N, *input shape]
    searched: int               # how many inputs were searched

    def summary(self) -> str:
        n = self.inputs.shape[1]
        out = [f"layer {self.layer} [{', '.join(map(str, self.shape))}]: the {n} strongest "
               f"activations of {len(self.units)} units over {self.searched} inputs"]
        for k, u in enumerate(self.units):
            cells = [f"{v:.4g} (input {i}" + (f" at {list(p)})" if p else ")")
                     for i, v, p in zip(self.inputs[k], self.values[k], self.positions[k])]
            out.append(f"  unit {u}: " + ", ".join(cells))
        return "\n".join(out)


def _maxima(net, node, xb):
    """Per input and unit, the maximum activation and its flat position,
    computed a batch at a time (the whole layer's maps are never held)."""
    m, at = [], []
    for lo in range(0, len(xb), BATCH):
        a = _forward(net, node, xb[lo:lo + BATCH])
        flat = a.reshape(a.shape[0], a.shape[1], -1)
        m.append(flat.max(-1))
        at.append(flat.argmax(-1))
    return np.concatenate(m), np.concatenate(at)


def strongest(net, layer: str, x, units=8, top: int = 9) -> Strongest:
    """The deconvnet grid: `units` (a count K, the K units whose strongest
    activation over `x` is largest, or a list of unit indices), and for each
    the `top` inputs of `x` with the largest maximum activation, projected."""
    node = _unit_layer(net, layer)
    shape = tuple(net.graph.shape(node))[1:]
    xb, _ = examples(net, x)
    m, at = _maxima(net, node, xb)
    if isinstance(units, (int, np.integer)) and not isinstance(units, bool):
        if units < 1:
            raise DataError(f"units: a count >= 1, got {units}")
        best = np.argsort(-m.max(0), kind="stable")[:units]
        units = sorted(int(u) for u in best)
    else:
        units = [_check_unit(layer, ("B",) + shape, u) for u in units]
    if top < 1:
        raise DataError(f"top: a count >= 1, got {top}")
    top = min(top, len(xb))
    idx = np.stack([np.argsort(-m[:, u], kind="stable")[:top] for u in units])
    rows, cols = idx.reshape(-1), np.repeat(units, top)
    sp = shape[1:]
    pos = [np.unravel_index(int(at[i, u]), sp) if sp else () for i, u in zip(rows, cols)]
    seeds = np.zeros((len(rows),) + shape, net.dtype)
    for j, (i, u) in enumerate(zip(rows, cols)):
        seeds[(j, u) + tuple(pos[j])] = m[i, u]
    pos = [tuple(int(j) for j in p) for p in pos]
    proj = _project(net, node, xb[rows], seeds, rectify=True)
    field = receptive_fields(net.graph, starts=True).get(node)
    size = xb.shape[2:]
    boxes = [field_box(field, p) if field else [(0, n) for n in size] for p in pos]
    k, n = len(units), top
    return Strongest(layer, shape, units, idx, m[idx, np.array(units)[:, None]],
                     [pos[r * n:(r + 1) * n] for r in range(k)],
                     [boxes[r * n:(r + 1) * n] for r in range(k)],
                     proj.reshape((k, n) + proj.shape[1:]), len(xb))
