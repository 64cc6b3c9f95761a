"""Writing imported layers as a readable spec: the second half of `nnspec import`.

    layers (reader.py) -> fold repeats into blocks -> statements -> spec text

* **Chains.** A value read once, by a chain stage right after it, is not
  named: the stage goes on the same chain (so the layers keep their order).
  A layer with weights ends its statement, so the statement's name, the
  ONNX node's, is the layer's (`conv1.weight`).
* **Blocks.** Where the graph passes through a single value between layers
  (a *cut*), the layers between cuts are units; consecutive units that are
  the same (calls, weight shapes, wiring) become one `block` applied
  `unit * n` times, each with its own weights.
* **Train section.** Class scores ([B, C]) get `cross_entropy` against an int
  `label`; a softmax output `nll(log(p), label)`; anything else `mse`
  against a target of its shape.
"""
from __future__ import annotations

import numpy as np

from . import OnnxImportError
from .reader import Layer, identifier
from .reader_cells import CELLS

HELPERS = {
    "onnx_clip": """\
# ONNX's Clip: min(max(x, lo), hi), as ReLUs (MobileNet's ReLU6 is onnx_clip(0, 6)).
block onnx_clip(lo, hi)(x) {
    return relu(x - lo) - relu(x - hi) + lo
}
""",
}
DEFINITIONS = {**CELLS, **HELPERS}
BUILTINS = ("range", "len", "min", "max", "abs", "round", "floor", "ceil", "sqrt", "zeros",
            "final", "sgd", "adam", "cosine", "step", "constant", "children", "t",
            "loss", "optimizer", "schedule", "batch", "epochs", "data", "seed", "lr", "clip",
            "target")
MAX_PERIOD = 12


RESERVED: set = set()


def reserved() -> set:
    if RESERVED:
        return RESERVED
    from ..frontend.parser import KEYWORDS
    from ..ops import all_layers
    LAYERS = all_layers()
    RESERVED.update(set(KEYWORDS) | set(LAYERS) | set(BUILTINS) | set(DEFINITIONS))
    return RESERVED


class Names:
    def __init__(self, taken):
        self.taken = set(taken)

    def __call__(self, base: str) -> str:
        name, i = base, 1
        if name in RESERVED:
            name = base = base + "_"
        while name in self.taken:
            i += 1
            name = f"{base}_{i}"
        self.taken.add(name)
        return name


def write(r, layers, name: str = "imported") -> tuple:
    """The spec text of the layers `r` (a Reader) read, every weight in the
    order lowering the spec creates them, and the spec's names of the ONNX
    inputs and outputs."""
    words = reserved()
    names = Names(words)
    refs, inputs = {}, []
    time_dims = set()
    for i in r.inputs:
        if i not in r.used_inputs:
            continue
        refs[i] = names(identifier(i))
        dims = []
        for d in r.example_shape(i):
            if isinstance(d, int) and d > 0:
                dims.append(str(d))
            else:
                time_dims.add(d)
                dims.append("T")
        if len(time_dims) > 1:
            raise OnnxImportError(f"input '{i}' has several dynamic axes "
                                  f"{sorted(map(str, time_dims))}: nnspec allows the batch "
                                  f"and one time axis T")
        dtype = "int" if np.dtype(r.dtypes.get(i, np.float32)).kind in "iu" else ""
        inputs.append(f"    input {refs[i]}: {dtype}[{', '.join(dims)}]")
    outputs, out_names = {}, {}
    for o in r.outputs:
        out_names[o] = names(identifier(o))
        outputs.setdefault(r.view(o)[0], []).append(out_names[o])
    layers, blocks = fold(live(layers, outputs), outputs, words)
    lines = statements(layers, refs, outputs, names, "    ")
    defs = []
    for d in dict.fromkeys(d for layer in _all(layers) for d in layer.defs):
        defs.append(DEFINITIONS.get(d) or r.definitions.get(d) or blocks[d])
    train = train_section(r, layers, outputs, names)
    text = (f"# Imported from ONNX by `nnspec import`; weights in the .npz (or .nnc) beside it.\n"
            + "".join(f"\n{d}" for d in defs)
            + f"\nnetwork {identifier(name)} {{\n" + "\n".join(inputs + lines) + "\n}\n"
            + train)
    weights = [w for layer in layers for w in layer.weights]
    return text, weights, {i: refs[i] for i in r.inputs if i in refs}, out_names


def live(layers, outputs: dict) -> list:
    """The layers without those nothing reads: a layer without weights whose
    value is no output and read by no other (a final state a cell's `init=`
    reads from the cell itself)."""
    layers = list(layers)
    while True:
        read = {i for layer in layers for i in layer.inputs} | set(outputs)
        kept = [layer for layer in layers if layer.weights or layer.output in read]
        if len(kept) == len(layers):
            return layers
        layers = kept


def _all(layers):
    for layer in layers:
        yield layer
        yield from getattr(layer, "body", ())


# ---- statements -------------------------------------------------------------------------------

def statements(layers, refs: dict, outputs: dict, names: Names, indent: str) -> list[str]:
    """One statement per value that is named.  `outputs`: value -> list of
    output names ("return" for a block's result; in a cell, "h[t]" for a new
    state and "local y" for the value it returns)."""
    producer = {layer.output: layer for layer in layers}
    readers: dict = {}
    for layer in layers:
        for i in layer.inputs:
            readers.setdefault(i, []).append(layer)

    at = {id(layer): k for k, layer in enumerate(layers)}

    def inline(v) -> bool:
        # only into the layer right after it: a chain keeps the layers' order, which
        # is the order lowering the spec creates their nodes in
        p, rs = producer.get(v), readers.get(v, [])
        return (p is not None and not p.weights and v not in outputs and len(rs) == 1
                and rs[0].stage and rs[0].inputs[0] == v and at[id(rs[0])] == at[id(p)] + 1)

    def expr(layer) -> list:
        if not layer.stage:
            return [layer.call.format(*[refs[i] for i in layer.inputs])]
        v = layer.inputs[0]
        head = expr(producer[v]) if inline(v) else [refs[v]]
        # a stage reading other values too names them as {1}, ... (`init={1}`)
        text = layer.call.format(*[refs[i] for i in layer.inputs]) if len(layer.inputs) > 1 \
            else layer.call
        return head + [text]

    lines = []
    for layer in layers:
        if inline(layer.output):
            continue
        parts = expr(layer)
        text = parts[0] + "".join(
            (f"\n{indent}    -> " if len(parts) > 4 and k % 3 == 0 else " -> ") + p
            for k, p in enumerate(parts[1:], 1))
        outs = outputs.get(layer.output, [])
        if outs == ["return"]:
            lines.append(f"{indent}return {text}")
            continue
        if outs and (outs[0].endswith("[t]") or outs[0].startswith("local ")):
            # a cell's new state `h[t]`, or a value its `return` names
            refs[layer.output] = outs[0].removeprefix("local ")
            lines.append(f"{indent}{refs[layer.output]} = {text}")
            continue
        if outs:
            refs[layer.output] = outs[0]
            lines.append(f"{indent}output {outs[0]} = {text}")
            lines += [f"{indent}output {o} = {outs[0]} -> identity" for o in outs[1:]]
        else:
            refs[layer.output] = names(layer.name)
            lines.append(f"{indent}{refs[layer.output]} = {text}")
    for v, outs in outputs.items():
        if v not in producer and outs != ["return"]:     # an input given back
            lines += [f"{indent}output {o} = {refs[v]} -> identity" for o in outs]
    return lines


# ---- folding repeats into blocks ---------------------------------------------------------------

def fold(layers, outputs: dict, words) -> tuple[list, dict]:
    """Consecutive identical units as one block applied n times."""
    cuts = _cuts(layers, outputs)
    units = [(a, b) for a, b in zip(cuts, cuts[1:])]       # layers[a:b], entered by a value
    out, blocks, k, pos = [], {}, 0, 0
    while k < len(units):
        best = None
        for p in range(1, min(MAX_PERIOD, (len(units) - k) // 2) + 1):
            a, b = units[k][0], units[k + p - 1][1]
            sig = _signature(layers, a, b)
            if sig is None or b - a < 2:
                continue
            reps = 1
            while k + (reps + 1) * p <= len(units):
                a2, b2 = units[k + reps * p][0], units[k + (reps + 1) * p - 1][1]
                if _signature(layers, a2, b2) != sig:
                    break
                reps += 1
            if reps >= 2 and (best is None or (b - a) * reps > best[2]):
                best = (p, reps, (b - a) * reps)
        if best is None:
            k += 1
            continue
        p, reps, _ = best
        a, end = units[k][0], units[k + p * reps - 1][1]
        out += layers[pos:a]
        out.append(_block_call(layers, a, units[k + p - 1][1], end, reps, blocks, words))
        pos, k = end, k + p * reps
    out += layers[pos:]
    return out, blocks


def _cuts(layers, outputs) -> list:
    """Indices i where only the value of layers[i-1] is live."""
    last = {}
    for j, layer in enumerate(layers):
        for v in layer.inputs:
            last[v] = j
    for v in outputs:
        last[v] = len(layers)
    born = {layer.output: j for j, layer in enumerate(layers)}
    live, cuts = {}, []
    for j, layer in enumerate(layers):
        live[layer.output] = j
        for v in list(live):
            if last.get(v, -1) <= j:
                del live[v]
        for v in layer.inputs:
            if v not in born and last.get(v, -1) > j:
                live[v] = -1
        if list(live) == [layer.output] and layer.output not in outputs:
            cuts.append(j + 1)
    return cuts


def _signature(layers, a, b):
    entry = layers[a - 1].output
    local = {layers[j].output: j - a for j in range(a, b)}
    sig = []
    for layer in layers[a:b]:
        ins = []
        for i in layer.inputs:
            if i == entry:
                ins.append("in")
            elif i in local:
                ins.append(local[i])
            else:
                return None
        sig.append((layer.call, layer.stage, layer.defs, tuple(ins),
                    tuple(np.shape(w) for w in layer.weights)))
    return tuple(sig)


def _block_call(layers, a, b, end, reps, blocks, words) -> Layer:
    unit = layers[a:b]
    name = f"unit{len(blocks) + 1}"
    local = Names(words | {name, "x"})
    refs = {layers[a - 1].output: "x"}
    body = statements(unit, refs, {unit[-1].output: ["return"]}, local, "    ")
    blocks[name] = f"block {name}()(x) {{\n" + "\n".join(body) + "\n}\n"
    call = Layer(unit[0].name, "block", [layers[a - 1].output], layers[end - 1].output,
                 f"{name} * {reps}" if reps > 1 else name,
                 weights=[w for layer in layers[a:end] for w in layer.weights],
                 defs=tuple(dict.fromkeys(d for layer in unit for d in layer.defs)) + (name,))
    call.body = unit
    return call


# ---- the train section -------------------------------------------------------------------------

def train_section(r, layers, outputs: dict, names: Names) -> str:
    if not outputs:
        return ""
    value, outs = next(iter(outputs.items()))
    out = outs[0]
    producer = {layer.output: layer for layer in _all(layers)}.get(value)
    shape = r.shape(r.outputs[0])[1:]
    label = names("label")
    classes = len(shape) == 1 or len(shape) == 2 and not isinstance(shape[0], int)
    op = producer.op if producer is not None else ""
    if classes and op == "Softmax":
        target, loss = "int", f"nll(log({out}), {label})"
    elif classes and op == "LogSoftmax":
        target, loss = "int", f"nll({out}, {label})"
    elif classes and isinstance(shape[-1], int) and shape[-1] > 1:
        target, loss = "int", f"cross_entropy({out}, {label})"
    else:
        dims = ", ".join(str(d) if isinstance(d, int) else "T" for d in shape)
        target, loss = f"[{dims}]", f"mse({out}, {label})"
    if target == "int" and len(shape) == 2:
        target = "int[T]"
    kind = "class scores" if target.startswith("int") else "values"
    return (f"\n# A default for `nnspec train` ({out} read as {kind}); give --data.\n"
            f"train {{\n    target {label}: {target}\n    loss = {loss}\n"
            f"    optimizer = adam(lr = 0.001)\n    batch = 32\n    epochs = 10\n}}\n")
