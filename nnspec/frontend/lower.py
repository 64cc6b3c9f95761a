"""Lowering: evaluate a spec's AST and build the IR graph.

The network body runs like a small program: arithmetic and conditionals on
parameters happen now, and every layer application adds nodes to the graph.
A cell applied to a sequence becomes one `loop` node whose body is a graph of
its own (built once, whatever the sequence length).
"""
from __future__ import annotations

import functools
import inspect
import math

from ..errors import Loc, ShapeError, SpecError, did_you_mean
from ..ir import BATCH, TIME, Graph
from ..ops import all_layers
from ..ops.base import fmt
from . import ast, limits, teacher, tree
from .values import (Builtin, CellResult, Instance, Layer, Repeat, Symbol, Tensor,
                     TimeIndex, ZeroInit, type_name)

TRAIN_KEYS = ("loss", "optimizer", "schedule", "batch", "epochs", "clip", "data", "seed",
              "lr", "bptt", "metrics", "decoder_input", "start", "teacher_forcing", "args",
              "sync_bn")
CELL_OPTIONS = ("reverse", "direction", "merge", "init", "mask", "bptt", "parent", "teacher",
                "teacher_state")
BINOPS = {"+": "add", "-": "sub", "*": "mul", "/": "div"}


class Scope:
    """Variables of one block, cell or network body, and the naming prefix of
    the layers made in it."""

    def __init__(self, lowerer, prefix: str = "", graph=None, cell=None):
        self.low = lowerer
        self.vars: dict = {}
        self.prefix = prefix
        self.graph = graph if graph is not None else lowerer.graph
        self.cell = cell               # CellBuild while lowering a cell body

    def lookup(self, name: str, loc):
        if name in self.vars:
            return self.vars[name]
        if self.cell is not None and name in self.cell.states:
            # a bare state name is its sequence: the value assigned at step t
            st = self.cell.states[name]
            if st["new"] is None:
                raise SpecError(f"state '{name}' is read before it is assigned", loc,
                                f"read the previous step as {name}[t-1]")
            return Tensor(st["new"], self.graph)
        return self.low.lookup_global(name, loc, self)


class CellBuild:
    """State of a cell body being lowered."""

    def __init__(self, body: Graph, outer: Scope):
        self.body = body
        self.outer = outer
        self.seq = {}                  # input name -> body node of x[t]
        self.states = {}               # state name -> {"prev": nid, "new": nid|None, ...}
        self.captures = {}             # outer node id -> body node id
        self.tree = None               # tree.TreeBuild when applied with parent=
        self.teacher = None            # teacher.Teacher when the call gives teacher=


class LayerCtx:
    """What a layer function sees (see docs/internals.md)."""

    def __init__(self, low: "Lowerer", scope: Scope, inst: Instance, loc: Loc | None):
        self.low, self.scope, self.inst, self.loc = low, scope, inst, loc

    @property
    def graph(self) -> Graph:
        return self.scope.graph

    @property
    def name(self) -> str:
        return self.inst.name

    @property
    def dtype(self) -> str:
        return self.low.graph.dtype

    def shape(self, x: str) -> tuple:
        return self.graph.shape(x)

    def _leaf(self, suffix, shape, trainable, **kw):
        key = suffix
        shape = tuple(int(d) for d in shape)
        if key in self.inst.params:
            pid = self.inst.params[key]
            have = self.low.graph.shape(pid)
            if have != shape:
                self.fail(f"{self.inst.kind} '{self.inst.name}' is applied again to an input "
                          f"that needs {suffix} of shape {fmt(shape)}, but its shared "
                          f"{suffix} has shape {fmt(have)}",
                          hint="a layer value shares its parameters; call the layer again "
                               "for new ones")
        else:
            pid = self.low.graph.param(f"{self.inst.name}.{suffix}", shape, trainable=trainable,
                                       layer=self.inst.name, loc=self.loc, **kw)
            self.inst.params[key] = pid
        return self.low.bring(self.scope, pid)

    def param(self, suffix, shape, *, init="auto", fan_in=1, fan_out=1):
        return self._leaf(suffix, shape, True, init=init, fan_in=fan_in, fan_out=fan_out)

    def state(self, suffix, shape, *, init="zeros"):
        return self._leaf(suffix, shape, False, init=init)

    def emit(self, op, inputs, attrs=None, **kw):
        nid = self.graph.add(op, inputs, attrs, name=self.inst.name, layer=self.inst.name,
                             loc=self.loc, **kw)
        self.inst.last = nid
        self.inst.graph = self.graph
        return nid

    def const(self, value):
        return self.graph.const(value)

    def choice(self, value, choices, what):
        v = symbol_name(value)
        if v not in choices:
            raise SpecError(f"{self.inst.kind}: {what} must be one of "
                            f"{', '.join(map(str, choices))}; got {v!r}", self.loc,
                            did_you_mean(str(v), [str(c) for c in choices]))
        return v

    def fail(self, message, hint=None):
        raise SpecError(message, self.loc, hint)


class Lowerer:
    def __init__(self, modules: dict, main: ast.Module, dtype: str = "float32"):
        self.modules = modules          # path -> ast.Module (imports resolved)
        self.main = main
        self.graph: Graph | None = None
        self.dtype = dtype
        self.defs: dict = {}            # name -> ast.Block | value of a const
        self.layers = all_layers()
        self.builtins = make_builtins()
        self.counters: dict = {}
        self.instances: list[Instance] = []
        self.names: set = set()         # the instances' names
        self.stack: list[str] = []      # blocks being expanded (recursion guard)
        self.tapes: list[dict] = []     # instances made inside a block/cell application
        self.forced: list = []          # (loop id, teacher id) of each teacher-forced cell
        self.iterations = 0             # `for` iterations so far (limits.MAX_ITERATIONS)

    # ---- module-level names ----------------------------------------------------
    def collect(self, module: ast.Module, seen=None):
        seen = seen if seen is not None else set()
        if module.file in seen:
            return
        seen.add(module.file)
        for item in module.items:
            if isinstance(item, ast.Import):
                self.collect(self.modules[(module.file, item.path)], seen)
        for item in module.items:
            if isinstance(item, ast.Block):
                if item.name in self.layers:
                    raise SpecError(f"{item.kind} '{item.name}' has the name of a built-in layer",
                                    item.loc, "choose another name")
                self.defs[item.name] = item
            elif isinstance(item, ast.Const):
                scope = Scope(self)
                self.defs[item.name] = self.eval(item.value, scope)

    def lookup_global(self, name, loc, scope):
        if name in self.defs:
            return self.defs[name]
        if name in self.layers:
            return self.layers[name]
        if name in self.builtins:
            return self.builtins[name]
        known = list(scope.vars) + list(self.defs) + list(self.layers) + list(self.builtins)
        raise SpecError(f"unknown name '{name}'", loc, did_you_mean(name, known))

    def visible(self, scope):
        return list(scope.vars) + list(self.defs) + list(self.layers) + list(self.builtins)

    # ---- naming ----------------------------------------------------------------
    def new_instance(self, scope: Scope, base: str, kind: str, hint: str | None = None) -> Instance:
        """A new layer instance, or, while a block or cell value is applied
        again, the instance its first application made at this point (so a
        block value applied twice shares every weight inside it)."""
        if self.tapes:
            tape = self.tapes[-1]
            if tape["pos"] < len(tape["list"]):
                inst = tape["list"][tape["pos"]]
                tape["pos"] += 1
                return inst
            inst = self._create_instance(scope, base, kind, hint)
            tape["list"].append(inst)
            tape["pos"] += 1
            return inst
        return self._create_instance(scope, base, kind, hint)

    def _create_instance(self, scope, base, kind, hint) -> Instance:
        name = f"{scope.prefix}{hint or base}"
        n = self.counters.get(name, 0)
        self.counters[name] = n + 1
        if n:
            name = f"{name}_{n}"
        while name in self.names:
            n += 1
            self.counters[f"{scope.prefix}{hint or base}"] = n + 1
            name = f"{scope.prefix}{hint or base}_{n}"
        inst = Instance(name, kind=kind)
        self.instances.append(inst)
        self.names.add(name)
        return inst

    # ---- the network -------------------------------------------------------------
    def library(self):
        """Check a file without a network: valid when it is a library that
        defines or imports blocks or cells."""
        self.collect(self.main)
        if not any(isinstance(d, ast.Block) for d in self.defs.values()):
            self.no_network()

    def no_network(self):
        blocks = any(isinstance(d, ast.Block) for d in self.defs.values())
        raise SpecError("this file defines no network" + ("" if blocks else " and no blocks"),
                        Loc(self.main.file, 1, 1, self.main.source),
                        "add `network NAME { ... }`" + (", or import this file from one"
                                                       if blocks else ""))

    def lower(self, overrides: dict | None = None) -> Graph:
        self.collect(self.main)
        nets = [i for i in self.main.items if isinstance(i, ast.Network)]
        trains = [i for i in self.main.items if isinstance(i, ast.Train)]
        if not nets:
            self.no_network()
        if len(nets) > 1:
            raise SpecError("a file holds at most one network", nets[1].loc)
        if len(trains) > 1:
            raise SpecError("a file holds at most one train section", trains[1].loc)
        net = nets[0]
        self.graph = Graph(net.name, self.dtype)
        scope = Scope(self)
        overrides = dict(overrides or {})
        names = [p.name for p in net.params]
        for key in overrides:
            if key not in names:
                raise SpecError(f"network '{net.name}' has no argument '{key}'", net.loc,
                                did_you_mean(key, names) or
                                f"its arguments: {', '.join(names) or 'none'}")
        args = {}
        for p in net.params:
            if p.name in overrides:
                args[p.name] = overrides[p.name]
            elif p.default is not None:
                args[p.name] = self.eval(p.default, scope)
            else:
                raise SpecError(f"network argument '{p.name}' has no default; give it with "
                                f"--set {p.name}=...", p.loc)
            scope.vars[p.name] = args[p.name]
        self.exec(net.body, scope)
        if not self.graph.outputs:
            raise SpecError(f"network '{net.name}' has no output", net.loc,
                            "add `output NAME = ...`")
        self.graph.meta["args"] = {k: v if not isinstance(v, Symbol) else v.name
                                   for k, v in args.items()}
        if self.forced:
            self.graph.meta["teacher_forcing"] = teacher.meta(self.graph, self.forced)
        if trains:
            self.graph.meta["train"] = self.lower_train(trains[0], scope)
            self.graph.meta["loss"] = self.graph.meta["train"]["loss"]
        self.graph.meta["layers"] = [
            {"name": i.name, "kind": i.kind, "output": i.last,
             "shape": list((i.graph or self.graph).shape(i.last)),
             "in_step": i.graph is not None and i.graph is not self.graph,
             "params": sorted(i.params.values())}
            for i in self.instances if i.last is not None]
        return self.graph

    def lower_train(self, train: ast.Train, scope: Scope) -> dict:
        cfg: dict = {"loss": None}
        for st in train.body:
            if isinstance(st, ast.Input):
                self.exec([st], scope)
            elif isinstance(st, ast.Assign):
                if st.name not in TRAIN_KEYS:
                    raise SpecError(f"unknown train setting '{st.name}'", st.loc,
                                    did_you_mean(st.name, TRAIN_KEYS) or
                                    f"settings: {', '.join(TRAIN_KEYS)}")
                if st.name in ("data", "args") and isinstance(st.value, ast.Call):
                    cfg[st.name] = self.train_call(st, scope)
                    continue
                if st.name == "args":
                    raise SpecError("args names the network's arguments for training, as "
                                    "a call", st.value.loc, f"args = {self.main_name()}(size = 32)")
                v = self.eval(st.value, scope, symbols=True)
                if st.name == "loss":
                    if not isinstance(v, Tensor) or self.graph.shape(v.nid) != ():
                        raise SpecError("the loss must be a scalar tensor (a loss layer, or a "
                                        "weighted sum of them)", st.value.loc)
                    v = v.nid
                if st.name == "sync_bn" and not isinstance(v, bool):
                    raise SpecError(f"sync_bn takes true or false, got {type_name(v)}",
                                    st.value.loc, "sync_bn = true")
                if st.name == "teacher_forcing":
                    teacher.check_setting(v, st.value.loc, bool(self.forced))
                cfg[st.name] = plain(v)
            else:
                raise SpecError("a train section holds `target` declarations and settings "
                                f"({', '.join(TRAIN_KEYS)})", st.loc)
        if cfg["loss"] is None:
            raise SpecError("the train section needs a loss", train.loc,
                            "for example: loss = cross_entropy(logits, label)")
        return cfg

    def train_call(self, st: ast.Assign, scope: Scope):
        """`data = digits(size = 32)`: the data set's text with its options,
        "digits(size=32)" (nnspec.data reads it); `args = net(size = 32)`: the
        network's arguments for training, {"size": 32}."""
        call = st.value
        if not isinstance(call.func, ast.Name) or call.args:
            raise SpecError(f"{st.name} takes a name with keyword options, e.g. "
                            f"{'digits(size = 32)' if st.name == 'data' else 'net(size = 32)'}",
                            call.loc)
        opts = {}
        for kw in call.kwargs:
            v = plain(self.eval(kw.value, scope, symbols=True))
            if kw.name in opts or not isinstance(v, (bool, int, float, str)):
                raise SpecError(f"{st.name}: option '{kw.name}' " + (
                    "given twice" if kw.name in opts else "takes a number, a bool or a name"),
                    kw.loc)
            opts[kw.name] = v
        if st.name == "args":
            if call.func.id != self.main_name():
                raise SpecError(f"args names this file's network, '{self.main_name()}'",
                                call.func.loc)
            return opts
        text = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}"
                         for k, v in opts.items())
        return f"{call.func.id}({text})"

    def main_name(self) -> str:
        return next(i.name for i in self.main.items if isinstance(i, ast.Network))

    # ---- statements ----------------------------------------------------------------
    def exec(self, stmts, scope: Scope):
        for st in stmts:
            ret = self.exec_one(st, scope)
            if ret is not None:
                return ret
        return None

    def exec_one(self, st, scope: Scope):
        if isinstance(st, ast.Assign):
            if scope.cell is not None and st.name in scope.cell.states:
                raise SpecError(f"'{st.name}' is a state of this cell; assign it as "
                                f"{st.name}[t] = ...", st.loc)
            v = st.value
            # the value's name names the layer that makes it: the call, or a
            # chain's last stage (`h = x -> dense(8) -> relu` and
            # `h = relu(dense(x, 8))` both name the relu `h`)
            makes = isinstance(v, (ast.Call, ast.Chain))
            hint = st.name if makes and st.name not in scope.vars else None
            scope.vars[st.name] = self.eval(v, scope, hint=hint)
        elif isinstance(st, ast.Unpack):
            v = self.eval(st.value, scope)
            if not isinstance(v, (tuple, list)) or len(v) != len(st.names):
                n = len(v) if isinstance(v, (tuple, list)) else 1
                raise SpecError(f"cannot unpack {n} value(s) into {len(st.names)} names",
                                st.loc)
            for name, x in zip(st.names, v):
                scope.vars[name] = x
        elif isinstance(st, ast.AssignAt):
            self.assign_state(st, scope)
        elif isinstance(st, ast.Output):
            if scope.cell is not None or scope.graph is not self.graph or scope.prefix:
                raise SpecError("`output` belongs in the network body; blocks use `return`",
                                st.loc)
            v = self.eval(st.value, scope, hint=st.name) if st.value is not None \
                else scope.lookup(st.name, st.loc)
            t = self.want_tensor(v, st.value.loc if st.value else st.loc, "an output")
            scope.vars[st.name] = t
            self.graph.outputs[st.name] = t.nid
        elif isinstance(st, ast.Return):
            vals = [self.eval(e, scope) for e in st.values]
            return vals[0] if len(vals) == 1 else tuple(vals)
        elif isinstance(st, ast.Input):
            self.declare_input(st, scope)
        elif isinstance(st, ast.State):
            self.declare_state(st, scope)
        elif isinstance(st, ast.If):
            test = self.eval(st.test, scope)
            if isinstance(test, Tensor):
                raise SpecError("`if` tests a value known when the network is built (an "
                                "argument), not a tensor", st.test.loc)
            return self.exec(st.body if test else st.orelse, scope)
        elif isinstance(st, ast.For):
            it = self.eval(st.iter, scope)
            if isinstance(it, int) and not isinstance(it, bool):
                it = range(it)
            if not isinstance(it, (list, tuple, range)):
                raise SpecError(f"`for` needs a list or range, got {type_name(it)}",
                                st.iter.loc)
            self.iterations += len(it)
            if self.iterations > limits.MAX_ITERATIONS:
                raise SpecError(f"too many `for` iterations: a network is built with at most "
                                f"{limits.MAX_ITERATIONS:,}, all loops together", st.iter.loc,
                                limits.hint("MAX_ITERATIONS"))
            for v in it:
                scope.vars[st.var] = v
                ret = self.exec(st.body, scope)
                if ret is not None:
                    return ret
        else:  # pragma: no cover - the grammar makes no other statement
            raise SpecError(f"unsupported statement {type(st).__name__}", st.loc)
        return None

    def declare_input(self, st: ast.Input, scope: Scope):
        if scope.graph is not self.graph or scope.prefix:
            raise SpecError(f"`{st.kind}` belongs in the network body or the train section",
                            st.loc)
        dims = []
        for e in st.shape or []:
            d = self.eval(e, scope, symbols=True)
            if isinstance(d, Symbol) and d.name == TIME:
                d = TIME
            if not (d == TIME or (isinstance(d, int) and not isinstance(d, bool) and d > 0)):
                raise SpecError(f"a dimension must be a positive integer or T, got {d!r}",
                                e.loc)
            dims.append(d)
        dtype = "int64" if st.dtype == "int" else self.dtype
        if st.name in self.graph or st.name in scope.vars:
            raise SpecError(f"'{st.name}' is already defined", st.loc)
        nid = self.graph.input(st.name, (BATCH, *dims), dtype, kind=st.kind, loc=st.loc)
        scope.vars[st.name] = Tensor(nid, self.graph)

    # ---- expressions ----------------------------------------------------------------
    def eval(self, e, scope: Scope, *, hint: str | None = None, symbols: bool = False):
        try:
            return self._eval(e, scope, hint, symbols)
        except SpecError:
            raise
        except RecursionError:
            raise SpecError("expression nested too deeply", e.loc) from None

    def _eval(self, e, scope, hint, symbols):
        if isinstance(e, ast.Number):
            return e.value
        if isinstance(e, ast.String):
            return e.value
        if isinstance(e, ast.Bool):
            return e.value
        if isinstance(e, ast.Name):
            if symbols and e.id not in scope.vars and e.id not in self.defs \
                    and e.id not in self.layers and e.id not in self.builtins:
                return Symbol(e.id)
            v = scope.lookup(e.id, e.loc)
            if isinstance(v, ast.Block) and v.kind == "block" and not v.params:
                return self.make_layer(v, [], {}, e.loc, scope)
            return v
        if isinstance(e, ast.List):
            return [self.eval(x, scope, symbols=symbols) for x in e.items]
        if isinstance(e, ast.Tuple):
            return tuple(self.eval(x, scope, symbols=symbols) for x in e.items)
        if isinstance(e, ast.Cond):
            test = self.eval(e.test, scope)
            if isinstance(test, Tensor):
                raise SpecError("a conditional tests a value known when the network is built, "
                                "not a tensor", e.test.loc)
            return self.eval(e.then if test else e.orelse, scope, hint=hint, symbols=symbols)
        if isinstance(e, ast.BoolOp):
            left = self.eval(e.left, scope)
            if e.op == "and":
                return self.eval(e.right, scope) if left else left
            return left if left else self.eval(e.right, scope)
        if isinstance(e, ast.Not):
            return not self.eval(e.value, scope)
        if isinstance(e, ast.Compare):
            return self.compare(e, self.eval(e.left, scope), self.eval(e.right, scope))
        if isinstance(e, ast.Neg):
            v = self.eval(e.value, scope)
            if isinstance(v, Tensor):
                return self.tensor_op("neg", [v], e.loc, scope)
            if isinstance(v, TimeIndex):
                raise SpecError("a time index is t or t-1", e.loc)
            return self.number_op(lambda a: -a, v, e.loc)
        if isinstance(e, ast.BinOp):
            return self.binop(e, self.eval(e.left, scope), self.eval(e.right, scope), scope)
        if isinstance(e, ast.Call):
            return self.call(e, scope, hint=hint)
        if isinstance(e, ast.Chain):
            return self.chain(e, scope, hint)
        if isinstance(e, ast.Index):
            return self.index(e, scope)
        if isinstance(e, ast.Attr):
            v = self.eval(e.value, scope)
            if isinstance(v, Tensor) and v.cell is not None and e.name in v.cell.finals:
                return v.cell.finals[e.name]
            hint = None
            if isinstance(v, Tensor) and v.cell is not None:
                hint = did_you_mean(e.name, list(v.cell.finals)) or \
                    f"its final states: {', '.join(v.cell.finals)}"
            elif isinstance(v, Tensor):
                hint = "a cell's result has its final states as attributes, e.g. enc.h"
            raise SpecError(f"{type_name(v)} has no attribute '{e.name}'", e.loc, hint)
        raise SpecError(f"cannot evaluate {type(e).__name__}", e.loc)  # pragma: no cover

    def number_op(self, fn, *vals_and_loc):
        *vals, loc = vals_and_loc
        for v in vals:
            if not isinstance(v, (int, float)):
                raise SpecError(f"expected a number, got {type_name(v)}", loc)
        try:
            return bounded(fn(*vals), loc)
        except (ZeroDivisionError, OverflowError, ValueError, TypeError) as ex:
            raise SpecError(f"arithmetic error: {ex}", loc) from None

    def compare(self, e, a, b):
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            raise SpecError("comparisons work on values known when the network is built, "
                            "not on tensors", e.loc)
        if isinstance(a, Symbol):
            a = a.name
        if isinstance(b, Symbol):
            b = b.name
        ops = {"==": lambda: a == b, "!=": lambda: a != b, "<": lambda: a < b,
               "<=": lambda: a <= b, ">": lambda: a > b, ">=": lambda: a >= b}
        try:
            return ops[e.op]()
        except TypeError:
            raise SpecError(f"cannot compare {type_name(a)} with {type_name(b)}", e.loc) from None

    def binop(self, e, a, b, scope):
        op = e.op
        if isinstance(a, TimeIndex) and op in "+-" and isinstance(b, int):
            off = a.offset + (b if op == "+" else -b)
            return TimeIndex(off)
        if isinstance(a, Tensor) or isinstance(b, Tensor):
            if op == "**" and isinstance(a, Tensor) and b == 2:
                return self.tensor_op("square", [a], e.loc, scope)
            if op not in BINOPS:
                raise SpecError(f"operator '{op}' does not apply to tensors", e.loc,
                                "tensors take + - * /")
            return self.tensor_op(BINOPS[op], [a, b], e.loc, scope)
        from ..ops.base import LayerDef
        if op == "*":      # `relu * 3`: a bare layer name is the layer without arguments
            a = Layer("layer", a, [], {}, e.loc) if isinstance(a, LayerDef) else a
            b = Layer("layer", b, [], {}, e.loc) if isinstance(b, LayerDef) else b
        if op == "*" and isinstance(a, Layer) and isinstance(b, int):
            return self.repeat(a, b, e.loc)
        if op == "*" and isinstance(b, Layer) and isinstance(a, int):
            return self.repeat(b, a, e.loc)
        if op == "+" and isinstance(a, list) and isinstance(b, list):
            return a + b
        if op == "*" and isinstance(a, list) and isinstance(b, int):
            if len(a) * b > limits.MAX_ITEMS:
                raise SpecError(f"a list of {len(a) * b:,} items; at most {limits.MAX_ITEMS:,}",
                                e.loc, limits.hint("MAX_ITEMS"))
            return a * b
        fns = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y,
               "/": lambda x, y: x / y, "//": lambda x, y: x // y, "%": lambda x, y: x % y,
               "**": power}
        return self.number_op(fns[op], a, b, e.loc)

    def repeat(self, layer: Layer, n: int, loc):
        if n < 1:
            raise SpecError(f"a layer is repeated a positive number of times, not {n}", loc)
        if n > limits.MAX_REPEAT:
            raise SpecError(f"a layer is repeated at most {limits.MAX_REPEAT:,} times, not "
                            f"{n:,}", loc, limits.hint("MAX_REPEAT"))
        return Repeat(layer, n)

    def tensor_op(self, op, vals, loc, scope):
        ids = []
        for v in vals:
            if isinstance(v, Tensor):
                ids.append(self.bring(scope, v.nid, v.graph))
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                ids.append(scope.graph.const(v))
            else:
                raise SpecError(f"'{op}' needs tensors or numbers, got {type_name(v)}", loc)
        try:
            nid = scope.graph.add(op, ids, name=f"{scope.prefix}{op}", loc=loc)
        except ShapeError as ex:
            ex.loc = ex.loc or loc
            raise
        self.check_size(scope.graph, loc)
        return Tensor(nid, scope.graph)

    def check_size(self, graph: Graph, loc):
        if len(graph) > limits.MAX_NODES:
            raise SpecError(f"the graph has more than {limits.MAX_NODES:,} nodes", loc,
                            limits.hint("MAX_NODES"))

    def want_tensor(self, v, loc, what) -> Tensor:
        if isinstance(v, (tuple, list)) and len(v) == 1:
            v = v[0]
        if not isinstance(v, Tensor):
            raise SpecError(f"{what} must be a tensor, got {type_name(v)}", loc)
        return v

    # ---- calls, chains, layers -----------------------------------------------------
    def call(self, e: ast.Call, scope, *, chain_input=None, hint=None):
        if isinstance(e.func, ast.Name) and e.func.id == tree.NAME and chain_input is None \
                and not self.user_defined(tree.NAME, scope):
            return tree.children(self, e, scope)
        if isinstance(e.func, ast.Name) and not self.user_defined(e.func.id, scope) \
                and e.func.id not in self.builtins:
            raise SpecError(f"unknown layer '{e.func.id}'", e.func.loc,
                            did_you_mean(e.func.id, self.visible(scope)))
        f = self.eval(e.func, scope)
        args = [self.eval(a, scope) for a in e.args]
        kwargs = {}
        for kw in e.kwargs:
            if kw.name in kwargs:
                raise SpecError(f"argument '{kw.name}' given twice", kw.loc)
            kwargs[kw.name] = (self.eval(kw.value, scope, symbols=True), kw.loc)
        if chain_input is not None:
            args = [chain_input] + args
        return self.apply(f, args, kwargs, e.loc, scope, hint=hint)

    def user_defined(self, name: str, scope) -> bool:
        """A variable, block, cell or layer of that name is visible."""
        return name in scope.vars or name in self.defs or name in self.layers

    def apply(self, f, args, kwargs, loc, scope, hint=None):
        from ..ops.base import LayerDef
        if isinstance(f, Builtin):
            try:
                return bounded(f.fn(*args, **{k: v for k, (v, _) in kwargs.items()}), loc)
            except SpecError:
                raise
            except Exception as ex:
                raise SpecError(f"{f.name}: {ex}", loc) from None
        if isinstance(f, LayerDef) or isinstance(f, ast.Block):
            inputs, rest = split_inputs(args, f.inputs if isinstance(f, LayerDef) else None)
            if isinstance(f, ast.Block):
                layer = self.make_layer(f, rest, kwargs, loc, scope)
                inputs = []
                if rest and any(isinstance(a, Tensor) for a in rest):
                    raise SpecError(f"{f.kind} '{f.name}' takes its arguments and its inputs "
                                    f"in two calls: {f.name}(...)(x)", loc)
                if args and isinstance(args[0], Tensor):   # chain input
                    return self.apply_layer(layer, [args[0]], loc, scope, hint)
                return layer
            layer = Layer("layer", f, rest, kwargs, loc)
            if inputs:
                return self.apply_layer(layer, inputs, loc, scope, hint)
            return layer
        if isinstance(f, (Layer, Repeat)):
            if kwargs:
                raise SpecError("a layer value is applied to inputs only; give arguments "
                                "where it is made", loc)
            if not args or not all(isinstance(a, Tensor) for a in args):
                raise SpecError("a layer value is applied to tensors", loc)
            return self.apply_layer(f, list(args), loc, scope, hint)
        raise SpecError(f"{type_name(f)} cannot be called", loc)

    def make_layer(self, block: ast.Block, args, kwargs, loc, scope) -> Layer:
        opts, locs = {}, {}
        if block.kind == "cell":
            for k in CELL_OPTIONS:
                if k in kwargs:
                    opts[k], locs[k] = kwargs.pop(k)
        bound = self.bind(block.name, [p.name for p in block.params], args,
                          {k: v for k, (v, _) in kwargs.items()}, loc,
                          {k: l for k, (_, l) in kwargs.items()})
        env = {}
        for p in block.params:
            if p.name in bound:
                env[p.name] = bound[p.name]
            elif p.default is not None:
                s = Scope(self)
                s.vars.update(env)
                env[p.name] = self.eval(p.default, s)
            else:
                raise SpecError(f"{block.kind} '{block.name}' needs argument '{p.name}'", loc)
        return Layer(block.kind, block, [], env, loc, options=opts, option_locs=locs)

    def bind(self, what, names, args, kwargs, loc, kwlocs):
        if len(args) > len(names):
            raise SpecError(f"'{what}' takes {len(names)} argument(s), got {len(args)}", loc)
        out = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise SpecError(f"'{what}' has no argument '{k}'", kwlocs.get(k, loc),
                                did_you_mean(k, names) or
                                f"its arguments: {', '.join(names) or 'none'}")
            if k in out:
                raise SpecError(f"argument '{k}' given twice", kwlocs.get(k, loc))
            out[k] = v
        return out

    def chain(self, e: ast.Chain, scope, hint):
        v = self.eval(e.stages[0], scope)
        last = len(e.stages) - 1
        for i, stage in enumerate(e.stages[1:], 1):
            h = hint if i == last else None
            if isinstance(v, (list, tuple)) and all(isinstance(x, Tensor) for x in v):
                inputs = list(v)
            elif isinstance(v, Tensor):
                inputs = [v]
            else:
                raise SpecError(f"a chain passes tensors along; this stage gets "
                                f"{type_name(v)}", stage.loc)
            if isinstance(stage, ast.Call):
                f = None
                if isinstance(stage.func, ast.Name) \
                        and not self.user_defined(stage.func.id, scope) \
                        and stage.func.id not in self.builtins:
                    raise SpecError(f"unknown layer '{stage.func.id}'", stage.func.loc,
                                    did_you_mean(stage.func.id, self.visible(scope)))
                f = self.eval(stage.func, scope)
                if isinstance(f, ast.Block) or isinstance(f, Builtin):
                    call = self.call(stage, scope, hint=h)
                    v = self.apply_value(call, inputs, stage.loc, scope, h)
                    continue
                v = self.call(stage, scope, chain_input=None, hint=h) if not inputs else \
                    self._call_with_inputs(stage, f, inputs, scope, h)
            else:
                if isinstance(stage, ast.Name) and not self.user_defined(stage.id, scope):
                    raise SpecError(f"unknown layer '{stage.id}'", stage.loc,
                                    did_you_mean(stage.id, self.visible(scope)))
                f = self.eval(stage, scope)
                v = self.apply_value(f, inputs, stage.loc, scope, h)
        return v

    def _call_with_inputs(self, stage, f, inputs, scope, hint):
        args = [self.eval(a, scope) for a in stage.args]
        kwargs = {}
        for kw in stage.kwargs:
            if kw.name in kwargs:
                raise SpecError(f"argument '{kw.name}' given twice", kw.loc)
            kwargs[kw.name] = (self.eval(kw.value, scope, symbols=True), kw.loc)
        return self.apply(f, inputs + args, kwargs, stage.loc, scope, hint)

    def apply_value(self, f, inputs, loc, scope, hint):
        from ..ops.base import LayerDef
        if isinstance(f, LayerDef):
            f = Layer("layer", f, [], {}, loc)
        elif isinstance(f, ast.Block):
            f = self.make_layer(f, [], {}, loc, scope)
        if isinstance(f, (Layer, Repeat)):
            return self.apply_layer(f, inputs, loc, scope, hint)
        raise SpecError(f"{type_name(f)} is not a layer; a chain stage must be a layer",
                        loc)

    def apply_layer(self, layer, inputs, loc, scope, hint=None):
        if isinstance(layer, Repeat):
            v = inputs
            for i in range(layer.times):
                cur = layer.layer if i == 0 else layer.layer.fresh()
                out = self.apply_layer(cur, v, loc, scope)
                v = [out] if isinstance(out, Tensor) else list(out)
            return v[0] if len(v) == 1 else tuple(v)
        if layer.kind == "layer":
            return self.apply_builtin(layer, inputs, loc, scope, hint)
        if layer.kind == "block":
            return self.apply_block(layer, inputs, loc, scope, hint)
        return self.apply_cell(layer, inputs, loc, scope, hint)

    def apply_builtin(self, layer: Layer, inputs, loc, scope, hint):
        ld = layer.target
        if layer.instance is None:
            layer.instance = self.new_instance(scope, ld.name, ld.name, hint)
        ids = [self.bring(scope, t.nid, t.graph) for t in inputs]
        n_in = ld.inputs
        if n_in is not None and len(ids) != n_in:
            raise SpecError(f"layer '{ld.name}' takes {n_in} input(s), got {len(ids)}",
                            layer.loc if layer.loc else loc)
        kwargs = {k: (v.name if isinstance(v, (Symbol, Builtin)) else v)
                  for k, (v, _) in layer.kwargs.items()}
        kwlocs = {k: l for k, (_, l) in layer.kwargs.items()}
        self.check_signature(ld, len(ids), layer.args, kwargs, kwlocs, layer.loc or loc)
        ctx = LayerCtx(self, scope, layer.instance, layer.loc or loc)
        try:
            out = ld.fn(ctx, *ids, *layer.args, **kwargs)
        except SpecError as ex:
            ex.loc = ex.loc or ctx.loc
            raise
        except (TypeError, ValueError, IndexError, KeyError, ZeroDivisionError) as ex:
            raise SpecError(f"{ld.name}: {ex}", ctx.loc) from None
        self.check_size(scope.graph, ctx.loc)
        if isinstance(out, (tuple, list)):
            return tuple(Tensor(o, scope.graph) for o in out)
        return Tensor(out, scope.graph)

    def check_signature(self, ld, n_inputs, args, kwargs, kwlocs, loc):
        params = _parameters(ld.fn)
        var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
        positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        names = [p.name for p in params if p.kind != p.VAR_POSITIONAL]
        for k in kwargs:
            if k not in names:
                raise SpecError(f"layer '{ld.name}' has no argument '{k}'", kwlocs.get(k, loc),
                                did_you_mean(k, names[n_inputs if not var_pos else 0:]) or
                                f"its arguments: {', '.join(names[n_inputs:])}")
        if not var_pos:
            if n_inputs + len(args) > len(positional):
                raise SpecError(f"layer '{ld.name}' takes {len(positional) - n_inputs} "
                                f"argument(s) besides its input, got {len(args)}", loc)
            for p in positional[n_inputs + len(args):]:
                if p.default is p.empty and p.name not in kwargs:
                    raise SpecError(f"layer '{ld.name}' needs argument '{p.name}'", loc)

    def apply_block(self, layer: Layer, inputs, loc, scope, hint):
        block: ast.Block = layer.target
        if len(inputs) != len(block.inputs):
            raise SpecError(f"block '{block.name}' takes {len(block.inputs)} input(s), "
                            f"got {len(inputs)}", loc)
        if block.name in self.stack:
            raise SpecError(f"block '{block.name}' calls itself", loc)
        if len(self.stack) >= limits.MAX_CALL_DEPTH:
            raise SpecError(f"blocks nested too deeply: more than {limits.MAX_CALL_DEPTH} "
                            f"applied one inside another", loc, limits.hint("MAX_CALL_DEPTH"))
        if layer.instance is None:
            layer.instance = self.new_instance(scope, block.name, "block", hint)
        inst = layer.instance
        inner = Scope(self, prefix=inst.name + ".", graph=scope.graph, cell=scope.cell)
        inner.vars.update(layer.kwargs)
        for name, t in zip(block.inputs, inputs):
            inner.vars[name] = t
        self.stack.append(block.name)
        try:
            ret = self.run_body(block, inner, inst, loc)
        finally:
            self.stack.pop()
        if ret is None:
            raise SpecError(f"block '{block.name}' returns nothing", block.loc,
                            "end it with `return ...`")
        if isinstance(ret, Tensor):
            inst.last, inst.graph = ret.nid, ret.graph
        return ret

    def run_body(self, block: ast.Block, inner: Scope, inst: Instance, loc):
        """Run a block's or cell's body.  The layer instances it makes are
        recorded on `inst`, and replayed when the same value is applied again."""
        self.tapes.append({"list": inst.tape, "pos": 0})
        try:
            return self.exec(block.body, inner)
        except SpecError as ex:
            raise ex.called_from(f"{block.kind} '{block.name}'", loc)
        finally:
            self.tapes.pop()

    # ---- cells ------------------------------------------------------------------
    def apply_cell(self, layer: Layer, inputs, loc, scope, hint):
        opts = layer.options
        direction = opts.get("direction", "forward")
        direction = symbol_name(direction)
        if opts.get("reverse"):
            direction = "reverse"
        if direction not in ("forward", "reverse", "bidir"):
            raise SpecError(f"direction must be forward, reverse or bidir; got {direction!r}",
                            loc, did_you_mean(str(direction), ["forward", "reverse", "bidir"]))
        if opts.get("parent") is not None and direction != "forward":
            raise SpecError("a tree cell (parent=) runs bottom-up, children before parents; "
                            "it takes no reverse= or direction=", loc)
        if direction != "forward" and opts.get("teacher") is not None:
            raise SpecError(f"a teacher stands in for the previous step of a forward "
                            f"recurrence; this cell runs {direction}",
                            layer.option_locs.get("teacher", loc),
                            "teacher forcing trains a generator, which runs forward")
        if direction == "bidir":
            merge = opts.get("merge", Symbol("concat"))
            merge = symbol_name(merge)
            if merge not in ("concat", "sum"):
                raise SpecError(f"merge must be concat or sum; got {merge!r}", loc)
            fw = self.run_cell(layer, inputs, loc, scope, hint, reverse=False)
            bw = self.run_cell(layer.fresh(), inputs, loc, scope,
                               (hint or layer.name) + "_reverse", reverse=True)
            if isinstance(fw, tuple):
                raise SpecError(f"a cell run both ways returns one sequence; "
                                f"'{layer.target.name}' returns {len(fw)}", loc)
            out = self.merge_ways(merge, fw, bw, loc, scope, "bidir")
            # final states: each way's as <state>_forward and <state>_backward (the
            # backward way's after it has read the first step), and <state> merged
            # as the sequences are: PyTorch's h_n[0] and h_n[1], and their concat
            finals = {}
            for sname, f in fw.cell.finals.items():
                b = bw.cell.finals[sname]
                finals[sname] = self.merge_ways(merge, f, b, loc, scope, f"bidir.{sname}")
                finals[f"{sname}_forward"], finals[f"{sname}_backward"] = f, b
            return Tensor(out.nid, out.graph, CellResult(fw.cell.loop, finals))
        return self.run_cell(layer, inputs, loc, scope, hint, reverse=direction == "reverse")

    def merge_ways(self, merge, f, b, loc, scope, name):
        """A bidirectional cell's two ways merged: summed, or joined along the
        last axis (the forward way first)."""
        if merge == "sum":
            return self.tensor_op("add", [f, b], loc, scope)
        nid = scope.graph.add("concat", [f.nid, b.nid], {"axis": -1},
                              name=f"{scope.prefix}{name}", loc=loc)
        return Tensor(nid, scope.graph)

    def run_cell(self, layer: Layer, inputs, loc, scope, hint, reverse):
        block: ast.Block = layer.target
        if len(inputs) != len(block.inputs):
            raise SpecError(f"cell '{block.name}' takes {len(block.inputs)} sequence(s), "
                            f"got {len(inputs)}", loc)
        if scope.cell is not None:
            raise SpecError("a cell cannot run inside another cell's step", loc)
        if layer.instance is None:
            layer.instance = self.new_instance(scope, block.name, "cell", hint)
        inst = layer.instance
        g = scope.graph
        body = Graph(f"{inst.name}.step", self.dtype)
        build = CellBuild(body, scope)
        inner = Scope(self, prefix=inst.name + ".", graph=body, cell=build)
        inner.vars.update(layer.kwargs)
        inner.vars["t"] = TimeIndex(0)
        seq_ids = []
        for name, x in zip(block.inputs, inputs):
            xs = g.shape(x.nid)
            if len(xs) < 3 and not (len(xs) == 2 and g.dtype_of(x.nid).startswith("int")):
                raise SpecError(f"cell '{block.name}' runs over a sequence [B, T, ...]; its "
                                f"input '{name}' has shape {fmt(xs)}", loc,
                                "declare the input as `input x: [T, features]`")
            step = body.input(f"{name}[t]", (xs[0], *xs[2:]), g.dtype_of(x.nid), kind="step")
            build.seq[name] = step
            seq_ids.append(self.bring(scope, x.nid, x.graph))
        if layer.options.get("parent") is not None:
            seq_ids += tree.start(self, build, layer.options, g, seq_ids[0], loc, scope)
        # initial values given at the call site
        init = opts_init(layer.options.get("init"))
        build.teacher = teacher.option(layer.options, layer.option_locs, g, seq_ids[0], loc)
        ret = self.run_body(block, inner, inst, loc)
        for sname, st in build.states.items():
            if st["new"] is None:
                raise SpecError(f"cell state '{sname}' is never assigned; add "
                                f"{sname}[t] = ...", st["loc"])
        if build.tree is not None:
            tree.finish(build)
        if ret is None:
            raise SpecError(f"cell '{block.name}' returns nothing", block.loc,
                            "end it with `return h` (the sequence of a state)")
        rets = list(ret) if isinstance(ret, tuple) else [ret]
        outs = []
        for r in rets:
            if isinstance(r, Tensor) and r.graph is body:
                outs.append(r.nid)
            else:
                raise SpecError("a cell returns values computed in its step", block.loc)
        # initial state inputs of the loop node
        init_ids, state_specs = [], []
        for sname, st in build.states.items():
            given = init.get(sname)
            if given is None and isinstance(init.get("*"), CellResult):
                given = init["*"].finals.get(sname)
            if given is not None:
                t = self.want_tensor(given, loc, f"initial state '{sname}'")
                want = body.shape(st["prev"])
                if g.shape(t.nid) != want:
                    raise SpecError(f"initial state '{sname}' has shape "
                                    f"{fmt(g.shape(t.nid))}, the cell needs {fmt(want)}", loc)
                state_specs.append({"name": sname, "init": "input", "index": len(init_ids)})
                init_ids.append(self.bring(scope, t.nid, t.graph))
            elif st["init"] is not None:
                state_specs.append({"name": sname, "init": "input", "index": len(init_ids)})
                init_ids.append(st["init"])
            else:
                state_specs.append({"name": sname, "init": "zeros"})
        for sname, st in build.states.items():
            body.outputs[f"state:{sname}"] = st["new"]
        for k, o in enumerate(outs):
            body.outputs[f"out:{k}"] = o
        captured = list(build.captures.items())
        extra, extra_attrs = self.cell_mask_bptt(layer.options, g, seq_ids[0], loc, scope)
        steps = [build.seq[n] for n in block.inputs]
        if build.tree is not None:
            steps += [build.tree.here, build.tree.parent]
        if build.teacher is not None:
            forced, forced_steps = teacher.finish(build.teacher, build.states, block.name, g,
                                                  seq_ids[0], inst.name, self.dtype, loc)
            seq_ids, steps = seq_ids + forced, steps + forced_steps
        attrs = {"body": body, "reverse": bool(reverse), "n_seq": len(seq_ids),
                 "n_init": len(init_ids), "states": state_specs,
                 "state_inputs": [build.states[s]["prev"] for s in build.states],
                 "seq_inputs": steps,
                 "captures": [b for _, b in captured],
                 "outputs": [f"out:{k}" for k in range(len(outs))], **extra_attrs}
        loop = g.add("loop", seq_ids + init_ids + [o for o, _ in captured] + extra, attrs,
                     name=inst.name, layer=inst.name, loc=loc, shape=(), dtype="loop")
        if build.teacher is not None:
            self.forced.append((loop, build.teacher.outer))
        seq_shape = g.shape(seq_ids[0])
        results = []
        for k, o in enumerate(outs):
            s = body.shape(o)
            nid = g.add("loop_output", (loop,), {"kind": "seq", "index": k},
                        name=f"{inst.name}.out{k if k else ''}", layer=inst.name, loc=loc,
                        shape=(s[0], seq_shape[1], *s[1:]), dtype=body.dtype_of(o))
            results.append(nid)
        finals = {}
        for k, sname in enumerate(build.states):
            if build.states[sname].get("hidden"):
                continue
            nid = g.add("loop_output", (loop,), {"kind": "final", "index": k},
                        name=f"{inst.name}.{sname}", layer=inst.name, loc=loc,
                        shape=body.shape(build.states[sname]["new"]),
                        dtype=body.dtype_of(build.states[sname]["new"]))
            finals[sname] = Tensor(nid, g)
        inst.last, inst.graph = results[0], g
        cr = CellResult(loop, finals)
        ts = [Tensor(r, g, cr) for r in results]
        return ts[0] if len(ts) == 1 else tuple(ts)

    def cell_mask_bptt(self, opts, g, seq, loc, scope):
        """The `mask=` and `bptt=` options of a cell call: extra loop inputs and attrs.

        mask: a [B, T] tensor of 0/1; at a step with mask 0 an example keeps its
        state and emits zeros (padding changes neither outputs nor gradients).
        bptt = k: the gradient through the states is cut every k steps."""
        inputs, attrs = [], {}
        if opts.get("mask") is not None:
            m = self.want_tensor(opts["mask"], loc, "mask")
            want = tuple(g.shape(seq)[:2])
            if tuple(g.shape(m.nid)) != want:
                raise SpecError(f"mask has shape {fmt(g.shape(m.nid))}; the sequence needs "
                                f"{fmt(want)} (batch, time)", loc)
            mid = self.bring(scope, m.nid, m.graph)
            if not g.dtype_of(mid).startswith("float"):
                raise SpecError("mask is a float tensor of 0s and 1s", loc,
                                "declare it as `input mask: [T]`")
            inputs.append(mid)
            attrs["mask"] = True
        if opts.get("bptt") is not None:
            k = opts["bptt"]
            if not isinstance(k, int) or isinstance(k, bool) or k < 0:
                raise SpecError(f"bptt takes a number of steps (0 = full), got {k!r}", loc)
            attrs["bptt"] = k
        return inputs, attrs

    def declare_state(self, st: ast.State, scope: Scope):
        build = scope.cell
        if build is None:
            raise SpecError("`state` declares a cell's state; it belongs in a `cell`", st.loc)
        if st.name in build.states:
            raise SpecError(f"state '{st.name}' is declared twice", st.loc)
        v = self.eval(st.init, build.outer if False else scope)
        if isinstance(v, ZeroInit):
            shape = (BATCH, *v.shape)
            init = None
        elif isinstance(v, Tensor):
            if v.graph is scope.graph:
                raise SpecError("a state's initial value comes from outside the step "
                                "(an input or zeros(n))", st.init.loc)
            shape = v.graph.shape(v.nid)
            init = v.nid
        else:
            raise SpecError(f"a state starts from zeros(n) or a tensor, got {type_name(v)}",
                            st.init.loc)
        prev = scope.graph.input(f"{st.name}[t-1]", shape, kind="carry", loc=st.loc)
        build.states[st.name] = {"prev": prev, "new": None, "init": init, "loc": st.loc}

    def assign_state(self, st: ast.AssignAt, scope: Scope):
        build = scope.cell
        if build is None:
            raise SpecError(f"{st.name}[...] = ... assigns a cell state; it belongs in a "
                            f"`cell`", st.loc)
        idx = self.eval(st.index, scope)
        if idx != TimeIndex(0):
            raise SpecError(f"a state is assigned at the current step: {st.name}[t] = ...",
                            st.index.loc)
        if st.name not in build.states:
            raise SpecError(f"'{st.name}' is not a declared state", st.loc,
                            f"declare it first: state {st.name} = zeros(n)")
        state = build.states[st.name]
        if state["new"] is not None:
            raise SpecError(f"state '{st.name}' is assigned twice in one step", st.loc)
        v = self.want_tensor(self.eval(st.value, scope), st.value.loc, f"state '{st.name}'")
        nid = self.bring(scope, v.nid, v.graph)
        want = scope.graph.shape(state["prev"])
        if scope.graph.shape(nid) != want:
            raise SpecError(f"state '{st.name}' starts with shape {fmt(want)} but is assigned "
                            f"shape {fmt(scope.graph.shape(nid))}", st.loc)
        state["new"] = nid

    def index(self, e: ast.Index, scope: Scope):
        base = e.value
        idx = self.eval(e.index, scope)
        if isinstance(idx, TimeIndex):
            build = scope.cell
            if build is None or not isinstance(base, ast.Name):
                raise SpecError("time indices (x[t], h[t-1]) are used inside a cell", e.loc)
            name = base.id
            if name in build.seq:
                if idx.offset != 0:
                    raise SpecError(f"an input is read at the current step: {name}[t]",
                                    e.index.loc)
                return Tensor(build.seq[name], scope.graph)
            if name in build.states:
                st = build.states[name]
                if idx.offset == -1:
                    if build.tree is not None:
                        raise SpecError(f"in a tree cell a node reads its children, not the "
                                        f"node before it: children({name})", e.loc)
                    return Tensor(teacher.read_prev(build.teacher, build.states, name,
                                                    scope.graph, e.loc), scope.graph)
                if idx.offset == 0:
                    if st["new"] is None:
                        raise SpecError(f"{name}[t] is read before it is assigned", e.loc)
                    return Tensor(st["new"], scope.graph)
                raise SpecError(f"a state is read at t or t-1, not {idx}", e.index.loc)
            raise SpecError(f"'{name}' is neither an input nor a state of this cell", base.loc,
                            did_you_mean(name, list(build.seq) + list(build.states)))
        v = self.eval(base, scope)
        if isinstance(v, (list, tuple)) and isinstance(idx, int):
            try:
                return v[idx]
            except IndexError:
                raise SpecError(f"index {idx} out of range for a list of {len(v)}",
                                e.loc) from None
        raise SpecError(f"cannot index {type_name(v)} with {type_name(idx)}", e.loc)

    # ---- graphs inside graphs ----------------------------------------------------
    def bring(self, scope: Scope, nid: str, graph=None) -> str:
        """The id of `nid` as seen from `scope`'s graph: a node of the root graph
        used inside a cell step becomes a captured input of the step."""
        graph = graph if graph is not None else self.graph
        if graph is scope.graph:
            return nid
        build = scope.cell
        if build is None:
            raise SpecError("a value computed inside a cell step is used outside it",
                            None)
        if nid not in build.captures:
            n = graph.node(nid)
            build.captures[nid] = build.body.add("input", (), {"kind": "capture",
                                                               "outer": nid},
                                                 name=nid, shape=n.shape, dtype=n.dtype)
        return build.captures[nid]


def opts_init(v) -> dict:
    if v is None:
        return {}
    if isinstance(v, Tensor) and v.cell is not None:
        return {"*": v.cell}
    if isinstance(v, dict):
        return v
    raise SpecError("init= takes the result of another cell (its final states start this "
                    "one)", None)


def split_inputs(args, n_inputs):
    """Leading tensors are a layer's inputs; the rest are its arguments."""
    k = 0
    while k < len(args) and (n_inputs is None or k < n_inputs):
        a = args[k]
        if isinstance(a, Tensor):
            k += 1
        elif n_inputs is None and k == 0 and isinstance(a, (list, tuple)) and a \
                and all(isinstance(x, Tensor) for x in a):
            return list(a), list(args[1:])
        else:
            break
    return list(args[:k]), list(args[k:])


def symbol_name(v):
    """A bare name given as a keyword value (`merge=sum`, `init=zeros`, `mode=max`)
    may also name a layer or a built-in; an enum keyword wants the name."""
    from ..ops.base import LayerDef
    return v.name if isinstance(v, (Symbol, Builtin, LayerDef)) else v


@functools.lru_cache(maxsize=None)
def _parameters(fn) -> list:
    """A layer function's parameters after `ctx` (inspect.signature is slow)."""
    return list(inspect.signature(fn).parameters.values())[1:]


def bounded(v, loc):
    """`v`, a number a spec computed, when it is within the limits: an integer
    of at most `limits.MAX_INT` in magnitude, a finite float."""
    if isinstance(v, bool) or not isinstance(v, (int, float, complex)):
        return v
    if isinstance(v, complex):
        raise SpecError(f"arithmetic error: the result is a complex number ({v})", loc)
    if isinstance(v, float) and not math.isfinite(v):
        raise SpecError(f"arithmetic error: the result is not a finite number ({v})", loc)
    if isinstance(v, int) and abs(v) > limits.MAX_INT:
        raise SpecError(f"integer too large: {abs(v).bit_length()} bits, more than the "
                        f"limit of {limits.MAX_INT:,}", loc, limits.hint("MAX_INT"))
    return v


def power(x, y):
    """x ** y, refused before it is computed when an integer result would be
    far beyond `limits.MAX_INT` (9 ** 9 ** 9 would take minutes)."""
    if isinstance(x, int) and isinstance(y, int) and y > 0 and abs(x) > 1 \
            and (abs(x).bit_length() - 1) * y > limits.MAX_INT.bit_length():
        raise OverflowError(f"{x} ** {y} is larger than the limit of {limits.MAX_INT:,} "
                            f"(NNSPEC_MAX_INT)")
    return x ** y


def plain(v):
    if isinstance(v, (Symbol, Builtin)):
        return v.name
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    return v


def make_builtins() -> dict:
    def zeros(*shape):
        for d in shape:
            if not isinstance(d, int) or d < 1:
                raise ValueError(f"zeros takes positive sizes, got {d!r}")
        return ZeroInit(tuple(shape))

    def final(x, name=None):
        if not isinstance(x, Tensor) or x.cell is None:
            raise ValueError("final(x) takes the result of a cell")
        if name is None:
            return next(iter(x.cell.finals.values()))
        key = name.name if isinstance(name, Symbol) else name
        if key not in x.cell.finals:
            raise ValueError(f"the cell has no state '{key}'; its states: "
                             f"{', '.join(x.cell.finals)}")
        return x.cell.finals[key]

    def optimizer(name, allowed):
        def make(**kw):
            for k in kw:
                if k not in allowed:
                    hint = did_you_mean(k, allowed)
                    raise ValueError(f"no setting '{k}'" + (f"; {hint}" if hint else
                                     f"; settings: {', '.join(allowed)}"))
            return {"name": name, **{k: plain(v) for k, v in kw.items()}}
        return make

    def rng(*a):
        for x in a:
            if not isinstance(x, int):
                raise ValueError("range takes integers")
        r = range(*a)
        if len(r) > limits.MAX_ITEMS:
            raise ValueError(f"range of {len(r):,} values; at most {limits.MAX_ITEMS:,} "
                             f"(NNSPEC_MAX_ITEMS)")
        return list(r)

    fns = {
        "range": rng,
        "len": len,
        "min": min,
        "max": max,
        "abs": abs,
        "round": round,
        "floor": math.floor,
        "ceil": math.ceil,
        "sqrt": math.sqrt,
        "zeros": zeros,
        "final": final,
        "sgd": optimizer("sgd", ("lr", "momentum", "nesterov", "weight_decay")),
        "adam": optimizer("adam", ("lr", "beta1", "beta2", "eps", "weight_decay")),
        "cosine": optimizer("cosine", ("min_lr", "warmup")),
        "step": optimizer("step", ("every", "gamma")),
        "constant": optimizer("constant", ()),
        **{name: teacher.decay_builtin(name) for name in teacher.DECAYS},
    }
    return {k: Builtin(k, f) for k, f in fns.items()}
