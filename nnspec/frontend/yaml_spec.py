"""The YAML form of a spec: the same AST as `.nn` text, written as YAML.

    import: lib/blocks.nn               # or a list of paths
    consts: {width: 64}
    blocks:
      residual:
        args: [c, {stride: 1}]          # a name, or {name: default}
        inputs: [x]
        body:
          - y: [x, "conv2d(c, 3, pad=same)", relu]     # a list is a chain
          - return: "relu(y + x)"
    cells:
      rnn: {args: [n], inputs: [x], body: [...]}
    network:
      name: net
      args: [{classes: 10}]
      body:
        - {input: x, shape: [64]}                      # dtype: int|float
        - h: "x -> dense(32) -> relu"
        - {output: logits, value: "h -> dense(classes)"}
    train:
      - {target: label, dtype: int}
      - loss: "cross_entropy(logits, label)"

Every scalar is nnspec expression text (YAML quoting is only YAML's):
`data: digits` is the name `digits`, `data: '"x.npz"'` the string.  The
statements are one mapping each: `{input|target: NAME, shape, dtype}`,
`{output: NAME, value}`, `{if: TEST, then: [...], else: [...]}`,
`{for: VAR, in: EXPR, do: [...]}`, `{state: NAME, init: EXPR}`,
`{return: EXPR or [EXPR, ...]}`, and otherwise one key: `{NAME: VALUE}`,
`{"h[t]": VALUE}`, `{"a, b": VALUE}`.

The file is read with `yaml.compose` (SafeLoader: no tags are constructed),
which keeps the position of every scalar, so errors point into the YAML.
"""
from __future__ import annotations

import dataclasses
import re

import yaml

from ..errors import Loc, SpecError, did_you_mean
from . import ast, limits
from .parser import KEYWORDS, parse_expr

TOP_KEYS = ("import", "consts", "blocks", "cells", "network", "train")
DEF_KEYS = ("args", "inputs", "body")
NETWORK_KEYS = ("name", "args", "body")
STMT_KEYS = {                      # statement kind -> (allowed keys, required keys)
    "input": (("input", "shape", "dtype"), ("input",)),
    "target": (("target", "shape", "dtype"), ("target",)),
    "output": (("output", "value"), ("output",)),
    "if": (("if", "then", "else"), ("if", "then")),
    "for": (("for", "in", "do"), ("for", "in", "do")),
    "state": (("state", "init"), ("state", "init")),
    "return": (("return",), ("return",)),
}
NAME = re.compile(r"[A-Za-z_][A-Za-z_0-9]*\Z")
AT = re.compile(r"\s*([A-Za-z_][A-Za-z_0-9]*)\s*\[(.*)\]\s*\Z")


def parse_yaml(text: str, file: str = "<spec>") -> ast.Module:
    """YAML text -> ast.Module (the same nodes `.nn` text gives)."""
    return _Reader(text, file).module()


class _TooBig(Exception):
    def __init__(self, message, mark, limit=None):
        super().__init__(message)
        self.message, self.mark, self.limit = message, mark, limit


class _Loader(yaml.SafeLoader):
    """SafeLoader's composer, refusing a document nested deeper than
    `limits.MAX_DEPTH` (composing recurses) before it recurses, and one of
    more than `limits.MAX_YAML_NODES` nodes counted with aliases expanded
    (aliases of aliases make billions of nodes from a few lines)."""

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and not hasattr(target, "size"):
                raise _TooBig("an alias refers to a node that holds it", event.start_mark)
            return super().compose_node(parent, index)
        self.depth += 1
        try:
            if self.depth > limits.MAX_DEPTH:
                raise _TooBig(f"nested too deeply: more than {limits.MAX_DEPTH} levels",
                              self.peek_event().start_mark, "MAX_DEPTH")
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if not hasattr(node, "size"):
            children = node.value if isinstance(node, yaml.SequenceNode) else \
                [c for kv in node.value for c in kv] if isinstance(node, yaml.MappingNode) \
                else []
            node.size = 1 + sum(c.size for c in children)
            if node.size > limits.MAX_YAML_NODES:
                raise _TooBig(f"more than {limits.MAX_YAML_NODES:,} values, aliases expanded",
                              node.start_mark, "MAX_YAML_NODES")
        return node


class _Reader:
    def __init__(self, text: str, file: str):
        self.text, self.file = text, file

    # ---- positions and errors ------------------------------------------------------
    def loc(self, node, offset: int = 0) -> Loc:
        m = node.start_mark
        return Loc(self.file, m.line + 1, m.column + 1 + offset, self.text)

    def fail(self, msg, node, hint=None):
        raise SpecError(msg, self.loc(node) if node is not None else
                        Loc(self.file, 1, 1, self.text), hint)

    def mapping(self, node, what, hint=None) -> list:
        """(key node, value node) pairs of a mapping, its keys plain and unique."""
        if not isinstance(node, yaml.MappingNode):
            self.fail(f"{what} is a mapping, got {_kind(node)}", node, hint)
        seen = {}
        for k, _ in node.value:
            if not isinstance(k, yaml.ScalarNode):
                self.fail(f"a key in {what} is a plain name, got {_kind(k)}", k)
            if k.value in seen:
                self.fail(f"key '{k.value}' appears twice in {what}", k,
                          f"the first one is on line {seen[k.value].start_mark.line + 1}")
            seen[k.value] = k
        return node.value

    def sequence(self, node, what, hint=None) -> list:
        if not isinstance(node, yaml.SequenceNode):
            self.fail(f"{what} is a list, got {_kind(node)}", node, hint)
        return node.value

    def name(self, node, what) -> str:
        if not isinstance(node, yaml.ScalarNode) or not NAME.match(node.value.strip()):
            got = repr(node.value) if isinstance(node, yaml.ScalarNode) else _kind(node)
            self.fail(f"{what} is a name, got {got}", node)
        n = node.value.strip()
        if n in KEYWORDS:
            self.fail(f"'{n}' is a keyword, not a name", node)
        return n

    def check_keys(self, pairs, allowed, required, what, node):
        """The keys of a mapping by name; `node` is what a missing key points at."""
        for k, _ in pairs:
            if k.value not in allowed:
                self.fail(f"unknown key '{k.value}' in {what}", k,
                          did_you_mean(k.value, allowed) or f"its keys: {', '.join(allowed)}")
        have = {k.value for k, _ in pairs}
        for r in required:
            if r not in have:
                self.fail(f"{what} needs the key '{r}'", node)
        return {k.value: (k, v) for k, v in pairs}

    # ---- expressions -----------------------------------------------------------------
    def expr(self, node, what="a value") -> ast.Expr:
        """A scalar's text parsed as an nnspec expression, located in the YAML."""
        if not isinstance(node, yaml.ScalarNode):
            self.fail(f"{what} is an expression (a YAML scalar), got {_kind(node)}", node)
        src, line, col = self.scalar_source(node)
        if not src.strip():
            self.fail(f"{what} is empty", node, "write an expression, e.g. 3 or x -> relu")
        try:
            e = parse_expr(src, self.file, line, col)
        except SpecError as ex:
            loc = ex.loc or self.loc(node)
            ex.loc = Loc(self.file, loc.line, loc.col, self.text)
            raise
        return self.relocate(e)

    def scalar_source(self, node):
        """The text to parse, and the file line/column where it starts."""
        m, end = node.start_mark, node.end_mark
        if node.style is None and m.line == end.line:       # plain, one line
            return node.value, m.line + 1, m.column + 1
        if node.style is None:
            # plain, several lines: the raw text keeps each line's column;
            # a line continuation folds the newlines as YAML does
            raw = self.text[m.index:end.index]
            return raw.replace("\n", "\\\n"), m.line + 1, m.column + 1
        if node.style in "'\"" and m.line == end.line:
            return node.value, m.line + 1, m.column + 2
        if node.style in "|>":
            # block scalar: its lines as they stand in the file, folded
            lines = self.text[m.index:end.index].split("\n")[1:]
            while lines and not lines[-1].strip():
                lines.pop()
            return "\\\n".join(lines), m.line + 2, 1
        return node.value, m.line + 1, m.column + 2          # quoted over several lines

    def relocate(self, e):
        """Point the locations of a parsed expression at the YAML text."""
        if isinstance(e, list):
            return [self.relocate(x) for x in e]
        if not isinstance(e, ast.Node):
            return e
        for f in dataclasses.fields(e):
            if f.name != "loc":
                self.relocate(getattr(e, f.name))
        if e.loc is not None:
            e.loc = Loc(self.file, e.loc.line, e.loc.col, self.text)
        return e

    def value(self, node, what="a value") -> ast.Expr:
        """A statement's value: a scalar expression, or a list read as a chain."""
        if isinstance(node, yaml.SequenceNode):
            return self.chain(node)
        if isinstance(node, yaml.MappingNode):
            self.fail(f"{what} is an expression or a chain (a list), got a mapping", node,
                      "quote expressions that contain ': ' or start with '{'")
        return self.expr(node, what)

    def chain(self, node) -> ast.Chain:
        stages = []
        for item in self.sequence(node, "a chain"):
            if isinstance(item, yaml.SequenceNode):     # several tensors: [[a, b], concat]
                e = ast.List([self.expr(x, "a chain input") for x in item.value],
                             loc=self.loc(item))
            else:
                e = self.expr(item, "a chain stage")
            stages += e.stages if isinstance(e, ast.Chain) else [e]
        if not stages:
            self.fail("a chain lists at least one value", node)
        if len(stages) == 1:
            return stages[0]
        return ast.Chain(stages, loc=stages[0].loc)

    # ---- the module ------------------------------------------------------------------
    def module(self) -> ast.Module:
        loader = None
        try:
            loader = _Loader(self.text)
            root = loader.get_single_node()
        except yaml.reader.ReaderError as e:       # a control character: YAML refuses it
            pos = e.position
            col = pos - self.text.rfind("\n", 0, pos)
            raise SpecError(f"YAML: the character {chr(e.character)!r} is not allowed",
                            Loc(self.file, self.text.count("\n", 0, pos) + 1, col, self.text),
                            "YAML allows no control characters but tab and newline") from None
        except _TooBig as e:
            raise SpecError(f"YAML: {e.message}", Loc(self.file, e.mark.line + 1,
                                                      e.mark.column + 1, self.text),
                            limits.hint(e.limit) if e.limit else None) from None
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            loc = Loc(self.file, mark.line + 1, mark.column + 1, self.text) if mark else \
                Loc(self.file, 1, 1, self.text)
            hint = f"{e.context}" if e.context else None
            if "'\\t'" in str(e.problem):
                hint = "YAML indents with spaces, not tabs"
            raise SpecError(f"YAML: {e.problem or 'cannot read this'}", loc, hint) from None
        except yaml.YAMLError as e:
            raise SpecError(f"YAML: {e}", Loc(self.file, 1, 1, self.text)) from None
        finally:
            if loader is not None:
                loader.dispose()
        if root is None:
            raise SpecError("the YAML file is empty", Loc(self.file, 1, 1, self.text),
                            "a spec has the keys " + ", ".join(TOP_KEYS))
        items = []
        for k, v in self.mapping(root, "a YAML spec", "a spec has the keys "
                                 + ", ".join(TOP_KEYS)):
            key = k.value
            if key == "import":
                paths = v.value if isinstance(v, yaml.SequenceNode) else [v]
                for p in paths:
                    if not isinstance(p, yaml.ScalarNode) or not p.value:
                        self.fail("an import is a file path", p)
                    items.append(ast.Import(p.value, loc=self.loc(p)))
            elif key == "consts":
                for ck, cv in self.mapping(v, "consts", "consts: {name: value, ...}"):
                    items.append(ast.Const(self.name(ck, "a const"), self.value(cv),
                                           loc=self.loc(ck)))
            elif key in ("blocks", "cells"):
                kind = key[:-1]
                for bk, bv in self.mapping(v, key, f"{key}: {{NAME: {{args, inputs, body}}}}"):
                    items.append(self.block(bk, bv, kind))
            elif key == "network":
                items.append(self.network(k, v))
            elif key == "train":
                items.append(ast.Train(self.body(v, "the train section"), loc=self.loc(k)))
            else:
                self.fail(f"unknown top-level key '{key}'", k,
                          did_you_mean(key, TOP_KEYS) or f"the keys: {', '.join(TOP_KEYS)}")
        return ast.Module(self.file, items, self.text, loc=Loc(self.file, 1, 1, self.text))

    def block(self, key, node, kind) -> ast.Block:
        name = self.name(key, f"a {kind}'s name")
        what = f"{kind} '{name}'"
        keys = self.check_keys(self.mapping(node, what), DEF_KEYS, ("inputs", "body"), what,
                               key)
        params = self.params(keys["args"][1]) if "args" in keys else []
        inputs = self.names(keys["inputs"][1], f"the inputs of {what}")
        body = self.body(keys["body"][1], f"the body of {what}")
        return ast.Block(name, params, inputs, body, kind, loc=self.loc(key))

    def network(self, key, node) -> ast.Network:
        keys = self.check_keys(self.mapping(node, "the network"), NETWORK_KEYS,
                               ("name", "body"), "the network", key)
        name_node = keys["name"][1]
        name = self.name(name_node, "the network's name")
        params = self.params(keys["args"][1]) if "args" in keys else []
        body = self.body(keys["body"][1], "the network body")
        return ast.Network(name, params, body, loc=self.loc(name_node))

    def params(self, node) -> list:
        out = []
        for p in self.sequence(node, "args", "args: [a, {b: default}, ...]"):
            if isinstance(p, yaml.MappingNode):
                pairs = self.mapping(p, "an argument")
                if len(pairs) != 1:
                    self.fail("an argument with a default is one key: {name: default}", p)
                k, v = pairs[0]
                out.append(ast.Param(self.name(k, "an argument"), self.value(v),
                                     loc=self.loc(k)))
            else:
                out.append(ast.Param(self.name(p, "an argument"), None, loc=self.loc(p)))
        return out

    def names(self, node, what) -> list:
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        return [self.name(n, "an input") for n in items]

    # ---- statements ------------------------------------------------------------------
    def body(self, node, what) -> list:
        if isinstance(node, yaml.ScalarNode) and node.value == "" :
            return []
        return [self.stmt(s) for s in self.sequence(
            node, what, "a body is a list of statements: - {input: x, shape: [64]}, "
                        "- y: x -> relu, ...")]

    def stmt(self, node) -> ast.Stmt:
        pairs = self.mapping(node, "a statement",
                             "write `- NAME: VALUE`, or a mapping such as {input: x, shape: [64]}")
        if not pairs:
            self.fail("an empty statement", node)
        kinds = [k for k, _ in pairs if k.value in STMT_KEYS]
        if kinds:
            kind = kinds[0].value
            allowed, required = STMT_KEYS[kind]
            keys = self.check_keys(pairs, allowed, required, f"`{kind}`", node)
            return getattr(self, "stmt_" + kind)(keys, kinds[0])
        if len(pairs) != 1:
            self.fail("an assignment is one key, `NAME: VALUE`", pairs[1][0],
                      "start another list item (`- `) for the next statement")
        k, v = pairs[0]
        target = k.value
        if "," in target:
            names = [n.strip() for n in target.split(",")]
            for n in names:
                if not NAME.match(n) or n in KEYWORDS:
                    self.fail(f"cannot assign to '{target}'", k, "write `a, b: VALUE`")
            return ast.Unpack(names, self.value(v), loc=self.loc(k))
        m = AT.match(target)
        if m:
            inner = target.index("[") + 1
            index = self.relocate(self._sub_expr(m.group(2), k, inner))
            return ast.AssignAt(m.group(1), index, self.value(v), loc=self.loc(k))
        if not NAME.match(target):
            self.fail(f"cannot assign to '{target}'", k, "a statement key is a name, "
                      "NAME[t], or one of " + ", ".join(STMT_KEYS))
        if target in KEYWORDS:
            self.fail(f"'{target}' is a keyword, not a name", k,
                      did_you_mean(target, STMT_KEYS))
        return ast.Assign(target, self.value(v), loc=self.loc(k))

    def _sub_expr(self, text, node, offset):
        m = node.start_mark
        col = m.column + 1 + offset + (1 if node.style in ("'", '"') else 0)
        try:
            return parse_expr(text, self.file, m.line + 1, col)
        except SpecError as ex:
            ex.loc = Loc(self.file, ex.loc.line, ex.loc.col, self.text) if ex.loc else \
                self.loc(node)
            raise

    def stmt_input(self, keys, key, kind="input") -> ast.Input:
        name = self.name(keys[kind][1], f"the {kind}'s name")
        dtype = "float"
        if "dtype" in keys:
            d = keys["dtype"][1]
            if not isinstance(d, yaml.ScalarNode) or d.value not in ("int", "float"):
                got = d.value if isinstance(d, yaml.ScalarNode) else _kind(d)
                self.fail(f"dtype is int or float, got {got!r}", d,
                          did_you_mean(str(got), ("int", "float")))
            dtype = d.value
        shape = None
        if "shape" in keys:
            s = keys["shape"][1]
            if isinstance(s, yaml.SequenceNode):
                shape = [self.expr(d, "a dimension") for d in s.value]
            else:
                e = self.expr(s, "a shape")
                if not isinstance(e, ast.List):
                    self.fail("a shape is a list of sizes, e.g. [1, 28, 28] or [T, 16]", s)
                shape = e.items
        return ast.Input(name, dtype, shape, kind, loc=self.loc(keys[kind][1]))

    def stmt_target(self, keys, key) -> ast.Input:
        return self.stmt_input(keys, key, "target")

    def stmt_output(self, keys, key) -> ast.Output:
        n = keys["output"][1]
        value = self.value(keys["value"][1]) if "value" in keys else None
        return ast.Output(self.name(n, "an output"), value, loc=self.loc(n))

    def stmt_if(self, keys, key) -> ast.If:
        test = self.expr(keys["if"][1], "an if test")
        body = self.body(keys["then"][1], "`then`")
        orelse = []
        if "else" in keys:
            e = keys["else"][1]
            orelse = [self.stmt(e)] if isinstance(e, yaml.MappingNode) else self.body(e, "`else`")
        return ast.If(test, body, orelse, loc=self.loc(key))

    def stmt_for(self, keys, key) -> ast.For:
        var, it = keys["for"][1], keys["in"][1]
        if isinstance(it, yaml.SequenceNode):           # in: [64, 128, 256]
            it = ast.List([self.expr(x, "a list item") for x in it.value], loc=self.loc(it))
        else:
            it = self.expr(it, "`in`")
        return ast.For(self.name(var, "a loop variable"), it,
                       self.body(keys["do"][1], "`do`"), loc=self.loc(var))

    def stmt_state(self, keys, key) -> ast.State:
        n = keys["state"][1]
        return ast.State(self.name(n, "a state"), self.expr(keys["init"][1], "a state's init"),
                         loc=self.loc(n))

    def stmt_return(self, keys, key) -> ast.Return:
        v = keys["return"][1]
        values = [self.value(x) for x in v.value] if isinstance(v, yaml.SequenceNode) \
            else [self.value(v)]
        if not values:
            self.fail("`return` needs a value", v)
        return ast.Return(values, loc=self.loc(key))


def _kind(node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    if isinstance(node, yaml.ScalarNode):
        return f"'{node.value}'" if node.value else "nothing"
    return "nothing"
