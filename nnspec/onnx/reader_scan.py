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

A masked cell (`mask=m`) is a Scan that also scans m [B, T] and whose body
writes each output through `Where(Cast(m[t], bool), new, old)`: the old
state, or zeros for the scan output (nnspec's exporter).  Those Where nodes
read as the new values, and the cell is written with `mask=`.  A tree cell's
Scan (`parent=`, `children(h)`) is read with reader_tree.py.

Only what a cell expresses is read: one scan output and scan inputs along
axis 1, of which one is computed from the network's inputs (besides a mask
and a tree's one-hots) and any others are zeros (a teacher-forced cell's
teacher and forcing mask at inference: the body reads its slices as
constant zeros), states that start from zeros (a `ConstantOfShape` of the
batch size and the state's size), and a body whose every node the importer
converts.
Anything else is an error naming the Scan node and the attribute, input or
body node.
"""
from __future__ import annotations

import numpy as np

from .reader import Unsupported, identifier
from .reader_ops import call, op
from .reader_tree import HERE, PARENT, const, only, producers, tree_body, tree_inputs, \
    unsqueezed

BOOL = 9                # TensorProto.BOOL: a mask's Cast

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
    step = [i.name for i in body.input[n_states:]]
    tree = tree_inputs(r, scanned)
    if tree and ways == {1}:
        raise Unsupported("a tree cell's Scan (it reads the one-hot node positions) scanning "
                          "from the end is not supported (a tree runs children first)")
    rest = [j for j in range(m) if j not in tree.values()]
    mask = _mask_input(r, body, step, scanned, rest)
    data = [j for j in rest if j != mask and not _zeros(r, scanned[j])]
    if len(data) != 1:
        raise Unsupported(f"{len(data)} scan inputs computed from the network's inputs are "
                          f"not supported (a cell reads one sequence; others may be zeros)")
    x = r.data(scanned[data[0]])

    sub = r.subgraph(body)
    for j, name in enumerate(step):
        if j in rest and j not in (data[0], mask):
            # a slice of zeros: a teacher-forced cell's teacher at inference
            dims = sub.shape(name)[1:]
            sub.consts[name] = np.zeros((1, *dims) if all(isinstance(d, int) for d in dims)
                                        else (), sub.dtypes.get(name, np.float32))
    new, chains = _unmask(sub, body, n_states, None if mask is None else step[mask])
    sums = tree_body(sub, body, n_states, step[tree[HERE]], step[tree[PARENT]], new, chains) \
        if tree else {}
    names = _state_names(body, [s for s in range(n_states) if s not in sums])
    for s, red in sums.values():
        sub.special[id(red)] = _children(names[s])
    sub.walk()
    if sub.errors:
        raise Unsupported("its body cannot be imported: " + "; ".join(sub.errors))
    name = f"onnx_scan{len(r.definitions) + 1}"
    text, weights = _cell_text(sub, body, name, names, step[data[0]])
    r.definitions[name] = text
    kw, ins = {"reverse": "true"} if ways == {1} else {}, [x]
    for key, j in (("parent", tree.get(PARENT)), ("mask", mask)):
        if j is not None:           # a stage's other inputs are {1}, {2}
            kw[key] = f"{{{len(ins)}}}"
            ins.append(r.data(r.view(scanned[j])[0], accept=(PARENT,)) if key == "parent"
                       else r.data(scanned[j]))
    seq = f"{node.output[n_states] or node.name}#seq"
    layer = r.emit(node, call(name, **kw), ins, weights=weights, defs=(name,), output=seq)
    r.cells[seq] = tuple(names.values())
    for s, out in enumerate(node.output[:n_states]):
        if not out or out not in r.uses and out not in r.outputs:
            continue
        if s in sums:
            raise Unsupported(f"output '{out}' (the final children's sums of a tree cell) is "
                              f"not supported (a cell gives its states, not the sums)")
        final = r.emit(node, f"{{0}}.{names[s]}", [seq], stage=False, output=out,
                       name=f"{layer.name}_{names[s]}")
        r.finals[final.output] = (seq, names[s])
    if node.output[n_states]:
        r.alias(node.output[n_states], seq)


def _state_names(body, kept) -> dict:
    """{state k: its name} for the states the cell declares, named after the
    body outputs holding them (s1, s2, ... where those clash)."""
    from .writer import reserved
    names = [_state_name(body.output[s].name, s) for s in kept]
    if len(set(names)) < len(names) or any(s in reserved() or s == "x" for s in names):
        names = [f"s{s + 1}" for s in range(len(kept))]
    return dict(zip(kept, names))


def _children(state):
    """The converter of a tree cell's row-t read of the sums: `children(h)`."""
    def convert(r, node):
        r.emit(node, f"children({state})", [], stage=False)
    return convert


def _mask_input(r, body, step, scanned, candidates):
    """Which scanned input is a cell's mask= (nnspec's exporter: a [B, T] 0/1
    sequence the body reads only through Cast to bool, for the Where nodes
    keeping the state and zeroing the output where it is 0), else None."""
    found = [j for j in candidates if not _zeros(r, scanned[j])
             and _readers(body, step[j])
             and all(n.op_type == "Cast" and r.attrs(n).get("to") == BOOL
                     for n in _readers(body, step[j]))]
    return found[0] if len(found) == 1 and len(candidates) > 1 else None


def _readers(graph, value) -> list:
    return [n for n in graph.node if value in n.input]


def _unmask(sub, body, n_states, mask) -> tuple[dict, dict]:
    """Each body output k (the new states, then the scan output): its value
    before masking, and the nodes between that and the output (Identity; with
    a mask, the Where choosing it where the mask is 1, else the old state or
    zeros).  The mask's Cast and Unsqueeze nodes are skipped and each Where
    reads as its chosen value."""
    made = producers(body)
    new, chains, conds = {}, {}, []
    for k, o in enumerate(body.output):
        v, chain = o.name, []
        while v in made and made[v].op_type == "Identity":
            chain.append(made[v])
            v = made[v].input[0]
        if mask is not None:
            where = made.get(v)
            other = where.input[2] if where is not None and where.op_type == "Where" else None
            keep = body.input[k].name if k < n_states else None
            zero = const(sub, other) if other is not None and keep is None else None
            cond = _mask_cond(sub, made, where.input[0], len(sub.shape(o.name)), mask) \
                if other is not None else None
            if cond is None or (other != keep if keep else zero is None or zero.any()):
                raise Unsupported(f"body output '{o.name}' is not masked as nnspec's cells are "
                                  f"(Where(mask, new, {'the old state' if keep else 'zeros'}))")
            conds += cond
            chain.append(where)
            sub.special[id(where)] = _chosen
            v = where.input[1]
        new[k], chains[k] = v, chain[::-1]
    if mask is not None:
        casts = {id(n): n for n in conds if n.op_type == "Cast"}.values()
        spread = {id(n): n for n in conds if n.op_type == "Unsqueeze"}.values()
        wheres = [c[0] for c in chains.values()]
        ok = only(sub, mask, *casts) and all(
            only(sub, n.output[0], *[m for m in list(spread) + wheres
                                     if n.output[0] in m.input]) for n in casts) and all(
            only(sub, n.output[0], *[w for w in wheres if w.input[0] == n.output[0]])
            for n in spread)
        if not ok:
            raise Unsupported(f"the mask '{mask}' is read other than by the Where nodes "
                              f"masking the body's outputs")
        sub.skip.update(id(n) for n in list(casts) + list(spread))
    return new, chains


def _mask_cond(sub, made, c, rank, mask):
    """The nodes of a Where's condition when it is the mask cast to bool,
    unsqueezed to the value's rank (axes 1..rank-1); else None."""
    nodes = []
    if rank > 1:
        if not unsqueezed(sub, made.get(c), range(1, rank)):
            return None
        nodes.append(made[c])
        c = made[c].input[0]
    cast = made.get(c)
    if cast is None or cast.op_type != "Cast" or sub.attrs(cast).get("to") != BOOL \
            or cast.input[0] != mask:
        return None
    return nodes + [cast]


def _chosen(r, node):
    """A mask's Where read as the value it keeps where the mask is 1."""
    base, view, info = r.view(node.input[1])
    r.data(node.input[1], accept=(view,))
    r.alias(node.output[0], base, view, info)


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
    """The cell definition of a body `sub` (a Reader) read, `states` {body
    state k: its name} (a tree's sums are not among them), `x` the body input
    of the sequence's step, and its weights in the order the cell creates them."""
    from .writer import Names, live, reserved, statements
    n_states = len(body.output) - 1
    ins = [i.name for i in body.input]
    refs = {ins[k]: f"{s}[t-1]" for k, s in states.items()}
    refs[x] = "x[t]"
    outs = [sub.view(o.name)[0] for o in body.output]
    outputs: dict = {}
    for k, s in states.items():
        v = outs[k]
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
    words = reserved() | {name, "x", "out", *states.values()}
    body_lines = statements(layers, refs, outputs, Names(words), "    ")
    size = [sub.shape(ins[k])[1:] for k in states]
    if any(len(d) != 1 or not isinstance(d[0], int) for d in size):
        raise Unsupported(f"states of shapes {[list(d) for d in size]} are not supported "
                          f"(a state is [B, n])")
    decl = [f"    state {s} = zeros({d[0]})" for s, d in zip(states.values(), size)]
    ret = outputs[y][0].removeprefix("local ")
    ret = ret[:-3] if ret.endswith("[t]") else ret
    text = (f"# A Scan's step, read from its body graph.\ncell {name}()(x) {{\n"
            + "\n".join(decl + body_lines) + f"\n    return {ret}\n}}\n")
    return text, [w for layer in layers for w in layer.weights]
