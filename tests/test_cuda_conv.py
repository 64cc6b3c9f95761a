"""The CUDA convolution kernels' other paths, under Numba's simulator.

The op table's tiny sizes put every GEMM-shaped convolution's batch in one
chunk of columns.  Here the chunking constants of nnspec/ops/conv.py are
lowered so that the same cases run one image per chunk (the GEMMs read and
write the op's arrays in place), in uneven chunks (the weight gradient
accumulating over them), and with every grouped convolution as GEMMs per
group; and pointwise (1x1) convolutions, whose columns are their input,
and a depthwise one with a bias run as added cases.
"""
from __future__ import annotations

import pytest

import test_cuda_ops
from opcases import CA, CASES, P, X, conv, conv_family, tconv

EXTRA = [
    *conv_family("t-pointwise-b1", (1, 3, 4, 5), (4, 3, 1, 1), conv(2)),
    *conv_family("t-pointwise-b2", (2, 3, 4, 5), (4, 3, 1, 1), conv(2)),
    CA("conv", [X(1, 3, 4, 5), P(4, 3, 1, 1), P(4)], "t-pointwise-bias", conv(2, bias=True)),
    CA("conv_transpose", [X(1, 3, 7), P(3, 2, 1), P(2)], "t-pointwise-bias", tconv(1, bias=True)),
    CA("conv", [X(2, 3, 5, 4), P(6, 1, 3, 2), P(6)], "t-depthwise-bias",
       conv(2, groups=3, pad=1, bias=True)),
    *conv_family("t-pointwise-g2", (1, 4, 3, 5), (6, 2, 1, 1), conv(2, groups=2)),
    *conv_family("t-b3", (3, 2, 5, 4), (3, 2, 2, 2), conv(2, pad=[[0, 1], [1, 0]])),
    CA("conv", [X(3, 2, 5, 4), P(3, 2, 2, 2), P(3)], "t-b3-bias", conv(2, bias=True)),
    CA("conv_transpose", [X(3, 2, 4, 3), P(2, 3, 2, 2), P(3)], "t-b3-bias",
       tconv(2, stride=2, pad=[[1, 0], [0, 1]], output_padding=1, bias=True)),
]

# name: (constants of nnspec/ops/conv.py to set, the notes of the cases to run)
SCENARIOS = {
    "defaults": ({}, ["t-pointwise-b1", "t-pointwise-b2", "t-pointwise-bias", "t-depthwise-bias"]),
    "one-image-chunks": ({"CUDA_WIDTH": 1, "CUDA_GEMM_CHANNELS": 1}, [
        "t-pointwise-b2", "t-pointwise-g2", "t-b3", "t-b3-bias", "2d-groups2", "3d-bias-same"]),
    "uneven-chunks": ({"CUDA_WIDTH": 24}, ["t-b3", "t-b3-bias"]),
    "grouped-gemm": ({"CUDA_GEMM_CHANNELS": 1}, [
        "2d-depthwise", "2d-groups2", "3d-sides-s2-dil-groups2", "3d-groups2-dil",
        "2d-groups2-bias-dil"]),
}

SETUP = """
import opcases, test_cuda_conv
import nnspec.ops.conv
opcases.CASES.extend(test_cuda_conv.EXTRA)
for k, v in {consts!r}.items():
    setattr(nnspec.ops.conv, k, v)
"""


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_cuda_conv_paths(scenario, monkeypatch):
    """The scenario's conv cases, on the CUDA backend under the simulator with
    the scenario's constants, equal the ops' NumPy references (checked as the
    op table's family is, by test_cuda_ops.test_cuda_op_table)."""
    consts, notes = SCENARIOS[scenario]
    monkeypatch.setattr(test_cuda_ops, "CASES", [c for c in CASES + EXTRA if c.note in notes])
    monkeypatch.setattr(test_cuda_ops, "RUN", SETUP.format(consts=consts) + test_cuda_ops.RUN)
    test_cuda_ops.test_cuda_op_table("conv")
