"""ONNX's Scan as an nnspec cell: the body graph is read node by node as the
cell's step, written into the spec as `cell onnx_scanN()(x)`.

    Scan(states..., x)            x [B, T, F] scanned along axis 1 (batch first)
      body(h, c, x_t) -> (h', c', y_t)
    cell onnx_scan1()(x) {
        state h = zeros(n)        the body's state inputs: h[t-1]; its scan input x[t]
        state c = zeros(n)
        ...                       the body's nodes, converted as the graph's are
        c[t] = ...                the body's new states
        h[t] = ...
        return h                  its one scan output
    }

A scan read backwards (scan_input_directions and scan_output_directions 1)
is the cell with `reverse=true`; the Scan's final states are `r.h`, `r.c`.
The cell's weights are the initializers its body reads, each layer holding
its own (an initializer two body nodes read is two layers' weights).

Only what a cell expresses is read: one scan output and scan inputs along
axis 1, of which one is computed from the network's inputs and any others are
zeros (a teacher-forced cell's teacher and forcing mask at inference: the
body reads its slices as constant zeros), states that start from zeros (a
`ConstantOfShape` of the batch size and the state's size), and a body whose
every node the importer converts.
Anything else is an error naming the Scan node and the attribute, input or
body node.
"""
from __future__ import annotations

import numpy as np

from .reader import Unsupported, identifier
from .reader_ops import call, op

SCAN_ATTRS = ("body", "num_scan_inputs", "scan_input_axes", "scan_output_axes",
              "scan_input_directions", "scan_output_directions")


@op("Scan", attrs=SCAN_ATTRS, inputs=1 << 20)
def _scan(r, node):
    if r.opset < 9:
        raise Unsupported("Scan before opset 9 (its sequence_lens input) is not supported")
    a = r.attrs(node)
    body, m = a["body"], int(a["num_scan_inputs"])
    n_states = len(node.input) - m
    k = len(body.output) - n_states
    if k != 1:
        raise Unsupported(f"{k} scan outputs are not supported (a cell returns one sequence)")
    for key, n in (("scan_input_axes", m), ("scan_output_axes", k)):
        axes = [int(v) for v in a.get(key, [0] * n)]
        if axes != [1] * n:
            raise Unsupported(f"attribute '{key}' = {axes} is not supported (nnspec's "
                              f"sequences are [B, T, ...]: axis 1)")
    ways = {int(v) for key, n in (("scan_input_directions", m), ("scan_output_directions", k))
            for v in a.get(key, [0] * n)}
    if len(ways) > 1:
        raise Unsupported("attributes 'scan_input_directions' and 'scan_output_directions' "
                          "differ (a cell writes its outputs in the order it reads its input)")
    for i in node.input[:n_states]:
        if not _zeros(r, i):
            raise Unsupported(f"initial state '{i}' is not supported (only zeros: a "
                              f"ConstantOfShape of the batch size and the state's size)")
    scanned = list(node.input[n_states:])
    data = [j for j, i in enumerate(scanned) if not _zeros(r, i)]
    if len(data) != 1:
        raise Unsupported(f"{len(data)} scan inputs computed from the network's inputs are "
                          f"not supported (a cell reads one sequence; others may be zeros)")
    x = r.data(scanned[data[0]])

    sub = r.subgraph(body)
    step = [i.name for i in body.input[n_states:]]
    for j, name in enumerate(step):
        if j != data[0]:        # a slice of zeros: a teacher-forced cell's teacher at inference
            rest = sub.shape(name)[1:]
            sub.consts[name] = np.zeros((1, *rest) if all(isinstance(d, int) for d in rest)
                                        else (), sub.dtypes.get(name, np.float32))
    sub.walk()
    if sub.errors:
        raise Unsupported("its body cannot be imported: " + "; ".join(sub.errors))
    from .writer import reserved
    names = [_state_name(body.output[s].name, s) for s in range(n_states)]
    if len(set(names)) < len(names) or any(s in reserved() or s == "x" for s in names):
        names = [f"s{s + 1}" for s in range(n_states)]
    name = f"onnx_scan{len(r.definitions) + 1}"
    text, weights = _cell_text(sub, body, name, names, step[data[0]])
    r.definitions[name] = text
    seq = f"{node.output[n_states] or node.name}#seq"
    kw = {"reverse": "true"} if ways == {1} else {}
    layer = r.emit(node, call(name, **kw), [x], weights=weights, defs=(name,), output=seq)
    r.cells[seq] = tuple(names)
    for s, out in enumerate(node.output[:n_states]):
        if out and (out in r.uses or out in r.outputs):
            final = r.emit(node, f"{{0}}.{names[s]}", [seq], stage=False, output=out,
                           name=f"{layer.name}_{names[s]}")
            r.finals[final.output] = (seq, names[s])
    if node.output[n_states]:
        r.alias(node.output[n_states], seq)


def _zeros(r, name) -> bool:
    """Whether `name` is zeros: a constant, or a ConstantOfShape of the batch size."""
    if r.is_const(name):
        v = np.asarray(r.consts[name])
        return v.dtype != object and not v.any()
    return r.view(name)[1] == "zeros"


def _state_name(output: str, k: int) -> str:
    """A state's name from the body output holding its new value: nnspec's
    exporter names it `<cell>/state:h`."""
    tail = output.rsplit("state:", 1)[-1] if "state:" in output else ""
    return identifier(tail) if tail else f"s{k + 1}"


def _cell_text(sub, body, name, states, x) -> tuple[str, list]:
    """The cell definition of a body `sub` (a Reader) read, `x` the body input
    of the sequence's step, and its weights in the order the cell creates them."""
    from .writer import Names, live, reserved, statements
    n_states = len(states)
    ins = [i.name for i in body.input]
    refs = {v: f"{s}[t-1]" for v, s in zip(ins, states)}
    refs[x] = "x[t]"
    outs = [sub.view(o.name)[0] for o in body.output]
    outputs: dict = {}
    for v, s in zip(outs, states):
        if v in refs or v not in sub.producer:
            raise Unsupported(f"body output '{v}' is not computed by the step (a state "
                              f"must be assigned a new value)")
        outputs.setdefault(v, []).append(f"{s}[t]")
    y = outs[n_states]
    if y not in sub.producer:
        raise Unsupported(f"body output '{y}' is not computed by the step")
    if y not in outputs:
        outputs[y] = ["local out"]
    layers = live(sub.layers, outputs)
    words = reserved() | {name, "x", "out", *states}
    body_lines = statements(layers, refs, outputs, Names(words), "    ")
    size = [sub.shape(i)[1:] for i in ins[:n_states]]
    if any(len(d) != 1 or not isinstance(d[0], int) for d in size):
        raise Unsupported(f"states of shapes {[list(d) for d in size]} are not supported "
                          f"(a state is [B, n])")
    decl = [f"    state {s} = zeros({d[0]})" for s, d in zip(states, size)]
    ret = outputs[y][0].removeprefix("local ")
    ret = ret[:-3] if ret.endswith("[t]") else ret
    text = (f"# A Scan's step, read from its body graph.\ncell {name}()(x) {{\n"
            + "\n".join(decl + body_lines) + f"\n    return {ret}\n}}\n")
    return text, [w for layer in layers for w in layer.weights]
