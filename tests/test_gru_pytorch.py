"""specs/gru.nn with reset_after = true is PyTorch's GRU (the reset gate
applied to the recurrent product, r * (W_hn h + b_hn)): an nn.GRU state dict
(weight_ih_l0 [3H, I], weight_hh_l0 [3H, H], bias_ih_l0, bias_hh_l0, gates in
the order r, z, n) loads by renaming its keys, and the forward matches
PyTorch's documented equations (and torch itself, where installed)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

import nnspec
from nnspec.backend import numpy_ref
from nnspec.passes.mode import specialise

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_loop_compiled import cell_source  # noqa: E402

I, H, B, T = 3, 5, 4, 6
TORCH_NAMES = {"weight_ih_l0": "ih.weight", "bias_ih_l0": "ih.bias",
               "weight_hh_l0": "hh.weight", "bias_hh_l0": "hh.bias"}


def network(reset_after: bool):
    return nnspec.compile(f"""{cell_source("gru")}
network t {{
    input x: [{T}, {I}]
    rnn = x -> gru({H}, reset_after={str(reset_after).lower()})
    output s = rnn
}}""", dtype="float64", seed=0)


def torch_state_dict(rng) -> dict:
    return {"weight_ih_l0": rng.standard_normal((3 * H, I)) * 0.5,
            "weight_hh_l0": rng.standard_normal((3 * H, H)) * 0.5,
            "bias_ih_l0": rng.standard_normal(3 * H) * 0.5,
            "bias_hh_l0": rng.standard_normal(3 * H) * 0.5}


def load_torch(net, sd: dict, layer: str = "rnn"):
    net.load_state_dict({f"{layer}.{TORCH_NAMES[k]}": v for k, v in sd.items()})


def pytorch_gru(x, sd):
    """torch.nn.GRU's equations (its documentation), batch first, h0 = 0."""
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    Wi, Wh, bi, bh = (sd[k] for k in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0",
                                       "bias_hh_l0"))
    h = np.zeros((x.shape[0], H))
    out = []
    for t in range(x.shape[1]):
        gi, gh = x[:, t] @ Wi.T + bi, h @ Wh.T + bh
        r = sig(gi[:, :H] + gh[:, :H])
        z = sig(gi[:, H:2 * H] + gh[:, H:2 * H])
        n = np.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out, 1)


def test_reset_after_has_pytorch_parameters():
    net = network(True)
    shapes = {k: v.shape for k, v in net.state_dict().items()}
    sd = torch_state_dict(np.random.default_rng(0))
    assert shapes == {f"rnn.{TORCH_NAMES[k]}": v.shape for k, v in sd.items()}


def test_pytorch_state_dict_loads_and_runs_as_pytorch():
    """The reference and the compiled loop against PyTorch's equations."""
    rng = np.random.default_rng(1)
    sd = torch_state_dict(rng)
    x = rng.standard_normal((B, T, I))
    want = pytorch_gru(x, sd)
    net = network(True)
    load_torch(net, sd)
    g = specialise(net.graph, False)
    ref = numpy_ref.run(g, {"x": x, **net.params}, [g.outputs["s"]])[g.outputs["s"]]
    np.testing.assert_allclose(ref, want, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(net.forward(x=x)["s"], want, rtol=1e-12, atol=1e-13)


def test_against_torch_gru():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    sd = torch_state_dict(rng)
    x = rng.standard_normal((B, T, I))
    gru = torch.nn.GRU(I, H, batch_first=True).double()
    gru.load_state_dict({k: torch.tensor(v) for k, v in sd.items()})
    want = gru(torch.tensor(x))[0].detach().numpy()
    net = network(True)
    load_torch(net, sd)
    g = specialise(net.graph, False)
    ref = numpy_ref.run(g, {"x": x, **net.params}, [g.outputs["s"]])[g.outputs["s"]]
    np.testing.assert_allclose(ref, want, rtol=1e-12, atol=1e-13)
