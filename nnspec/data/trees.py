"""A built-in tree task: arithmetic expressions modulo a small number.

    expressions(n, nodes, modulus=5, *, seed=0)

Each example is a random binary expression tree whose leaves are digits
0..modulus-1 and whose inner nodes are `+` or `*`, with 1 to (nodes - 1) // 2
operators; the label is its value modulo `modulus`.  The value depends on the
shape, not just on the tokens: (2 + 3) * 4 = 0 but 2 + 3 * 4 = 4 (mod 5).

A tree of k operators has 2k + 1 nodes, stored in a random topological order
(every child before its parent, so the root is the last real node; the order
itself says little about the shape), then padding up to `nodes`:

    tok     [n, nodes] int64   0 pad, 1 `+`, 2 `*`, 3 + d the digit d
    parent  [n, nodes] int64   the parent's node index; -1 for the root and padding
    mask    [n, nodes] float32 1 for the tree's nodes, 0 for padding
    label   [n] int64          the root's value mod `modulus`

Both operators are commutative, so a cell that sums its children's states
(`children(h)`) loses nothing by not knowing which child is which.

The named set "trees": 10,000 examples, nodes = 15 (or the network's first
input's length), modulus 5; operators 1..7 equally often.  Chance: 20 % for a
uniform guess, 33.6 % for always answering 0 (a zero factor makes products 0,
so 0 is the commonest label); the multiset of tokens alone fixes the value of
every one-operator tree, so structure-blind models score about 53 %
(docs/language.md, "Recursive (tree) networks").
"""
from __future__ import annotations

import numpy as np

from ..errors import DataError
from .registry import register
from .sequences import N_EXAMPLES, _steps

PAD, PLUS, TIMES, DIGIT0 = 0, 1, 2, 3


def expressions(n: int, nodes: int, modulus: int = 5, *, seed: int = 0) -> dict:
    """`n` random expression trees of at most `nodes` nodes (see the module docstring)."""
    if nodes < 3:
        raise DataError(f"expressions: a tree with one operator has 3 nodes; got nodes={nodes}")
    if modulus < 2:
        raise DataError(f"expressions: the modulus must be at least 2, got {modulus}")
    rng = np.random.default_rng(seed)
    tok = np.full((n, nodes), PAD, np.int64)
    parent = np.full((n, nodes), -1, np.int64)
    mask = np.zeros((n, nodes), np.float32)
    label = np.zeros(n, np.int64)
    for i in range(n):
        kids, toks = _random_tree(rng, int(rng.integers(1, (nodes - 1) // 2 + 1)), modulus)
        order = _topological(rng, kids)
        where = np.empty(len(order), np.int64)
        where[order] = np.arange(len(order))
        for j, node in enumerate(order):
            tok[i, j] = toks[node]
            for c in kids[node]:
                parent[i, where[c]] = j
        mask[i, :len(order)] = 1
        label[i] = _value(0, kids, toks, modulus)
    return {"tok": tok, "parent": parent, "mask": mask, "label": label}


def _random_tree(rng, ops: int, modulus: int):
    """(children lists, tokens) of a tree with `ops` operators; node 0 is the root."""
    kids, toks = [], []

    def grow(k):
        node = len(kids)
        kids.append([])
        if k == 0:
            toks.append(DIGIT0 + int(rng.integers(modulus)))
            return node
        toks.append(PLUS if rng.random() < 0.5 else TIMES)
        left = int(rng.integers(k))                  # operators in the left subtree
        kids[node] = [grow(left), grow(k - 1 - left)]
        return node

    grow(ops)
    return kids, toks


def _topological(rng, kids) -> list:
    """A uniformly chosen next node among those whose children are all placed."""
    waiting = [len(k) for k in kids]
    parent_of = {c: p for p, ks in enumerate(kids) for c in ks}
    ready = [v for v, w in enumerate(waiting) if w == 0]
    order = []
    while ready:
        v = ready.pop(int(rng.integers(len(ready))))
        order.append(v)
        p = parent_of.get(v)
        if p is not None:
            waiting[p] -= 1
            if waiting[p] == 0:
                ready.append(p)
    return order


def _value(node, kids, toks, modulus) -> int:
    t = toks[node]
    if t >= DIGIT0:
        return t - DIGIT0
    a, b = (_value(c, kids, toks, modulus) for c in kids[node])
    return (a + b) % modulus if t == PLUS else (a * b) % modulus


@register("trees")
def _trees(net=None) -> dict:
    """Expressions mod 5, up to 7 operators (nodes = 15, or the network's first
    input's length when fixed), 10,000 examples."""
    return expressions(N_EXAMPLES, _steps(net, 15), seed=0)
