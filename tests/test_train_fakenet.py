"""A NumPy stand-in for `nnspec.model.Network` (softmax regression) so the
data and training code are tested on their own; plus checks of the stand-in."""
import math

import numpy as np

from nnspec.ir import Graph


class FakeNet:
    """x [B, *in_shape] -> y = softmax(W x + b) [B, 10]; loss: cross-entropy with label [B]."""

    def __init__(self, in_shape=(64,), classes=10, seed=0, nan_at_step=None, train=None):
        g = Graph("fake")
        g.input("x", ("B",) + tuple(in_shape))
        g.input("label", ("B",), dtype="int64", kind="target")
        g.add("dense", ("x",), name="fc", layer="fc", shape=("B", classes), dtype="float32")
        g.outputs["y"] = "fc"
        g.meta["train"] = dict(train or {"optimizer": {"name": "sgd", "lr": 0.5, "momentum": 0.9},
                                        "batch": 32, "epochs": 3, "data": "digits", "seed": 0})
        self.graph = g
        self.inputs = {"x": ("B",) + tuple(in_shape)}
        self.targets = {"label": ("B",)}
        self.outputs = ["y"]
        rng = np.random.default_rng(seed)
        d = math.prod(in_shape)
        self.params = {"fc.weight": (rng.standard_normal((classes, d)) * 0.01).astype(np.float32),
                       "fc.bias": np.zeros(classes, np.float32)}
        self.state = {"fc.seen": np.zeros((), np.int64)}
        self.nan_at_step = nan_at_step
        self.steps = 0
        self.optimizer = None
        self.velocity = {}

    # -- forward / backward ------------------------------------------------
    def _logits(self, x):
        x = x.reshape(len(x), -1)
        return x @ self.params["fc.weight"].T + self.params["fc.bias"]

    def _loss(self, logits, y):
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        return float(-np.log(p[np.arange(len(y)), y] + 1e-12).mean()), p

    def forward(self, **inputs):
        return {"y": self._logits(inputs["x"])}

    def __call__(self, x):
        return self.forward(x=x)["y"]

    def gradients(self, inputs, targets):
        x, y = inputs["x"].reshape(len(inputs["x"]), -1), targets["label"]
        loss, p = self._loss(self._logits(x), y)
        p[np.arange(len(y)), y] -= 1
        p /= len(y)
        return loss, {"fc.weight": (p.T @ x).astype(np.float32),
                      "fc.bias": p.sum(0).astype(np.float32)}

    def set_optimizer(self, name, **hyper):
        self.optimizer = (name, hyper)
        self.velocity = {k: np.zeros_like(v) for k, v in self.params.items()}

    def train_step(self, inputs, targets, lr):
        self.steps += 1
        if self.nan_at_step is not None and self.steps >= self.nan_at_step:
            self.params["fc.weight"][:] = np.nan
        loss, grads = self.gradients(inputs, targets)
        mom = self.optimizer[1].get("momentum", 0.0)
        for k, gr in grads.items():
            self.velocity[k] = (mom * self.velocity[k] + gr).astype(np.float32)
            self.params[k] = (self.params[k] - np.float32(lr) * self.velocity[k]).astype(np.float32)
        self.state["fc.seen"] = self.state["fc.seen"] + len(targets["label"])
        return loss

    def evaluate_batch(self, inputs, targets):
        out = self.forward(**inputs)
        return self._loss(out["y"], targets["label"])[0], out

    def find_nonfinite(self, inputs, targets):
        if not np.all(np.isfinite(self._logits(inputs["x"]))):
            return "node 'fc' (layer fc)"
        return None

    # -- state ---------------------------------------------------------------
    def state_dict(self):
        return {**{k: v.copy() for k, v in self.params.items()},
                **{k: v.copy() for k, v in self.state.items()}}

    def load_state_dict(self, d):
        for k in self.params:
            self.params[k] = np.array(d[k], np.float32)
        for k in self.state:
            self.state[k] = np.array(d[k])

    def optimizer_state(self):
        return {"name": self.optimizer[0], "velocity": {k: v.copy() for k, v in self.velocity.items()}}

    def load_optimizer_state(self, d):
        self.velocity = {k: np.array(v) for k, v in d["velocity"].items()}


def test_fake_gradients_match_finite_differences():
    net = FakeNet(in_shape=(4,), classes=3)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 1, 0])
    _, g = net.gradients({"x": x}, {"label": y})
    w = net.params["fc.weight"].astype(np.float64)
    eps = 1e-3
    for i, j in [(0, 0), (2, 3)]:
        net.params["fc.weight"] = w.copy(); net.params["fc.weight"][i, j] += eps
        lp = net._loss(net._logits(x.astype(np.float64)), y)[0]
        net.params["fc.weight"] = w.copy(); net.params["fc.weight"][i, j] -= eps
        lm = net._loss(net._logits(x.astype(np.float64)), y)[0]
        assert abs((lp - lm) / (2 * eps) - g["fc.weight"][i, j]) < 1e-4
