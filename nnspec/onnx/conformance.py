"""ONNX's own backend node tests over nnspec (backend.py).

    python -m nnspec.onnx.conformance            # run every case of an implemented op
    python -m nnspec.onnx.conformance --table    # the per-op table (markdown)
    python -m nnspec.onnx.conformance --docs     # ... written into docs/onnx.md
    python -m nnspec.onnx.conformance --compiled # through the compiled backend (slow)

`onnx.backend.test.case.node.collect_testcases()` builds each case in memory:
a one-node model (or, `_expanded`, the op's function body in other ops), its
inputs and the outputs ONNX's reference code computed.  An op is
*implemented* when the importer has a converter for it (reader_ops.CONVERTERS);
every case of an implemented op passes, or is in `EXCLUDED` with the reason.
An `_expanded` case counts under the op it expands when the importer has
converters for all the ops of its body, and is not run otherwise.
"""
from __future__ import annotations

import sys
import warnings
from collections import Counter, defaultdict

import numpy as np

# Cases of implemented ops that nnspec cannot run, and why.  Most share a
# reason; the groups are spelled out below.
NO_BATCH = "an input without the batch axis first (a scalar, a 1-d tensor, or inputs " \
           "whose first axes differ): nnspec's inputs are [B, ...]"
INT = "integer tensors: nnspec computes in float32/float64 (int inputs are ids)"
BATCH_AXIS = "reduces, softmaxes, concatenates or reshapes over the batch axis (axis 0)"
CONST_TENSOR = "a constant tensor operand broadcast against the input: nnspec has no " \
               "constant tensors outside a layer's weights"
EXCLUDED: dict = {}


def _exclude(reason, *names):
    for n in names:
        EXCLUDED[n] = reason


_exclude(INT,
        "test_add_int16", "test_add_int8", "test_add_uint16", "test_add_uint32",
        "test_add_uint64", "test_add_uint8", "test_clip_default_int8_inbounds",
        "test_clip_default_int8_inbounds_expanded", "test_clip_default_int8_max",
        "test_clip_default_int8_min", "test_div_int16", "test_div_int32_trunc",
        "test_div_int8", "test_div_uint16", "test_div_uint32", "test_div_uint64",
        "test_div_uint8", "test_maxpool_2d_uint8", "test_mul_int16", "test_mul_int8",
        "test_mul_uint16", "test_mul_uint32", "test_mul_uint64", "test_mul_uint8",
        "test_squeeze", "test_sub_int16", "test_sub_int8", "test_sub_uint16",
        "test_sub_uint32", "test_sub_uint64", "test_sub_uint8", "test_unsqueeze_axis_0")
_exclude(NO_BATCH,
        "test_add_bcast", "test_div_bcast", "test_matmul_bcast", "test_mul_bcast",
        "test_reduce_sum_empty_set_non_reduced_axis_zero", "test_sub_bcast",
        "test_transpose_all_permutations_2")
_exclude(BATCH_AXIS,
        "test_concat_1d_axis_0", "test_concat_1d_axis_negative_1", "test_concat_2d_axis_0",
        "test_concat_2d_axis_negative_2", "test_concat_3d_axis_0",
        "test_concat_3d_axis_negative_3", "test_flatten_axis0", "test_flatten_axis2",
        "test_flatten_axis3", "test_flatten_negative_axis1", "test_flatten_negative_axis2",
        "test_flatten_negative_axis3", "test_flatten_negative_axis4",
        "test_gemm_all_attributes", "test_gemm_transposeA", "test_logsoftmax_axis_0",
        "test_reduce_max_default_axes_keepdim_example",
        "test_reduce_max_default_axes_keepdims_random",
        "test_reduce_mean_default_axes_keepdims_example",
        "test_reduce_mean_default_axes_keepdims_random",
        "test_reduce_sum_default_axes_keepdims_example",
        "test_reduce_sum_default_axes_keepdims_random", "test_reshape_allowzero_reordered",
        "test_reshape_negative_extended_dims", "test_reshape_one_dim",
        "test_reshape_reordered_all_dims", "test_softmax_axis_0",
        "test_transpose_all_permutations_3", "test_transpose_all_permutations_4",
        "test_transpose_all_permutations_5", "test_transpose_default")
EXCLUDED.update({
    "test_averagepool_2d_pads": 'avgpool: pad 2 is more than half the window 3',
    "test_averagepool_2d_pads_count_include_pad": 'avgpool: pad 2 is more than half the window 3',
    "test_batchnorm_epsilon_training_mode": 'training mode (outputs running_mean, running_var) is not supported',
    "test_batchnorm_example_training_mode": 'training mode (outputs running_mean, running_var) is not supported',
    "test_clip_min_greater_than_max": 'min > max: ONNX gives max; onnx_clip (ReLUs) assumes min <= max',
    "test_constant_pad": 'only zero padding of the spatial axes, read by a Conv, is supported',
    "test_constant_pad_axes": "input 'axes' is not supported",
    "test_constant_pad_negative_axes": "input 'axes' is not supported",
    "test_convtranspose_autopad_same": "attribute 'auto_pad' = SAME_UPPER is not supported (give pads)",
    "test_convtranspose_kernel_shape": "attribute 'output_shape' is not supported",
    "test_convtranspose_output_shape": "attribute 'output_shape' is not supported",
    "test_dropout_default_mask": "output 'mask' is not supported (inference: dropout is the identity)",
    "test_dropout_default_mask_ratio": "output 'mask' is not supported (inference: dropout is the identity)",
    "test_edge_pad": 'only zero padding of the spatial axes, read by a Conv, is supported',
    "test_gather_0": "a Gather along axis 0 of a 4-d table: the importer reads a Gather as an embedding (int ids into a constant 2-d table)",
    "test_gather_1": "a Gather along axis 1 of a 4-d table: the importer reads a Gather as an embedding (int ids into a constant 2-d table)",
    "test_gather_2d_indices": "a Gather along axis 1 of a 2-d table: the importer reads a Gather as an embedding (int ids into a constant 2-d table)",
    "test_gather_negative_indices": "a Gather from a 1-d table: the importer reads a Gather as an embedding (int ids into a constant 2-d table)",
    "test_gemm_default_matrix_bias": "input 'C' of shape [3, 4] is not supported (a bias: a scalar or [N])",
    "test_gru_batchwise": "attribute 'layout' = 1 is not supported (give X time-major)",
    "test_gru_bidirectional": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_gru_defaults": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_gru_reverse": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_gru_seq_length": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_gru_with_initial_bias": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_identity_opt": "not a tensor (an optional or sequence type): the shape of 'opt_in' is unknown (ONNX shape inference gave none)",
    "test_identity_sequence": "not a tensor (an optional or sequence type): the shape of 'x' is unknown (ONNX shape inference gave none)",
    "test_lstm_batchwise": "attribute 'layout' = 1 is not supported (give X time-major)",
    "test_lstm_bidirectional": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_lstm_defaults": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_lstm_reverse": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_lstm_with_initial_bias": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_lstm_with_peepholes": "input 'sequence_lens' is not supported",
    "test_matmul_1d_1d": 'a constant B of shape [3] is not supported (2-D: a dense layer)',
    "test_matmul_1d_3d": 'a constant B of shape [2, 4, 1] is not supported (2-D: a dense layer)',
    "test_matmul_4d_1d": 'a constant B of shape [3] is not supported (2-D: a dense layer)',
    "test_maxpool_2d_pads": 'maxpool: pad 2 is more than half the window 3',
    "test_maxpool_with_argmax_2d_precomputed_pads": "output 'Indices' is not supported",
    "test_maxpool_with_argmax_2d_precomputed_strides": "output 'Indices' is not supported",
    "test_pow": 'exponent a tensor of powers is not supported (only 2: square)',
    "test_pow_bcast_array": 'exponent [1.0, 2.0, 3.0] is not supported (only 2: square)',
    "test_pow_example": 'exponent [4.0, 5.0, 6.0] is not supported (only 2: square)',
    "test_pow_types_float32_int32": 'exponent [4, 5, 6] is not supported (only 2: square)',
    "test_pow_types_float32_int64": 'exponent [4, 5, 6] is not supported (only 2: square)',
    "test_pow_types_float32_uint32": 'exponent [4, 5, 6] is not supported (only 2: square)',
    "test_pow_types_float32_uint64": 'exponent [4, 5, 6] is not supported (only 2: square)',
    "test_pow_types_int32_float32": 'exponent [4.0, 5.0, 6.0] is not supported (only 2: square)',
    "test_pow_types_int32_int32": 'exponent [4, 5, 6] is not supported (only 2: square)',
    "test_pow_types_int64_float32": 'exponent [4.0, 5.0, 6.0] is not supported (only 2: square)',
    "test_pow_types_int64_int64": 'exponent [4, 5, 6] is not supported (only 2: square)',
    "test_reduce_max_empty_set": 'an empty tensor (a zero-size axis): nnspec sizes are positive',
    "test_reduce_max_empty_set_bool": 'an empty tensor (a zero-size axis): nnspec sizes are positive',
    "test_reflect_pad": 'only zero padding of the spatial axes, read by a Conv, is supported',
    "test_rnn_seq_length": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_scan9_multi_state": "the sequences are scanned along axis 0 ([T, ...], no batch axis): nnspec's are [B, T, ...], scanned along axis 1",
    "test_scan9_scalar": "the sequences are scanned along axis 0 ([T, ...], no batch axis): nnspec's are [B, T, ...], scanned along axis 1",
    "test_scan9_sum": "the sequences are scanned along axis 0 ([T, ...], no batch axis): nnspec's are [B, T, ...], scanned along axis 1",
    "test_scan_sum": "Scan before opset 9 (its sequence_lens input) is not supported",
    "test_simple_rnn_batchwise": "attribute 'layout' = 1 is not supported (give X time-major)",
    "test_simple_rnn_bidirectional": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_simple_rnn_defaults": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_simple_rnn_reverse": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_simple_rnn_with_initial_bias": "X is a time-major graph input [T, B, F]: nnspec's inputs and cells are [B, T, F]",
    "test_slice": 'only a slice of one axis with step 1 is supported',
    "test_slice_default_axes": 'only a slice of one axis with step 1 is supported',
    "test_slice_default_steps": 'only a slice of one axis with step 1 is supported',
    "test_slice_neg_steps": 'only a slice of one axis with step 1 is supported',
    "test_slice_negative_axes": 'only a slice of one axis with step 1 is supported',
    "test_slice_start_out_of_bounds": 'slice: [1000:None] of axis 1 (size 10) is empty',
    "test_training_dropout": "input 'training_mode' = true is not supported",
    "test_training_dropout_default": "input 'training_mode' = true is not supported",
    "test_training_dropout_default_mask": "output 'mask' is not supported (inference: dropout is the identity)",
    "test_training_dropout_mask": "output 'mask' is not supported (inference: dropout is the identity)",
    "test_training_dropout_zero_ratio": "input 'training_mode' = true is not supported",
    "test_training_dropout_zero_ratio_mask": "output 'mask' is not supported (inference: dropout is the identity)",
    "test_wrap_pad": 'only zero padding of the spatial axes, read by a Conv, is supported',
})


def cases(op_type: str | None = None) -> list:
    import onnx.backend.test.case.node as node
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.seterr(all="ignore")
        return node.collect_testcases(op_type)


def implemented() -> set:
    from .reader_ops import CONVERTERS
    return set(CONVERTERS)


def op_of(case) -> str | None:
    """The op a case tests: its node's, or for `_expanded` cases the op of the
    case it expands (None when the body uses ops nnspec's importer lacks)."""
    ops = [n.op_type for n in case.model.graph.node]
    if len(ops) == 1:
        return ops[0]
    return None


def run_case(case, compiled: bool = False) -> str | None:
    """None when nnspec's outputs equal the case's; else why not."""
    from . import OnnxImportError
    from .backend import NnspecBackend
    from ..errors import NNSpecError
    inputs, outputs = case.data_sets[0]
    try:
        rep = NnspecBackend.prepare(case.model, reference=not compiled)
        got = rep.run(inputs)
    except (OnnxImportError, NNSpecError) as e:
        lines = str(e).splitlines()
        return (lines[1] if isinstance(e, OnnxImportError) and len(lines) > 1
                else lines[0]).strip()
    except Exception as e:          # noqa: BLE001  (a bug: reported, not raised)
        return f"error: {type(e).__name__}: {e}"
    for g, w in zip(got, outputs):
        w = np.asarray(w)
        if g.shape != w.shape:
            return f"shape {list(g.shape)}, expected {list(w.shape)}"
        try:
            np.testing.assert_allclose(g, w, rtol=max(case.rtol, 1e-4), atol=max(case.atol, 1e-6))
        except AssertionError:
            return f"values differ (max |error| {float(np.abs(g - w).max()):.3g})"
    return None


def selected(names=None) -> list:
    """(case, op) for every case of an implemented op."""
    ops = implemented()
    expanded = {}
    out = []
    all_cases = cases()
    by_name = {c.name: c for c in all_cases}
    for c in all_cases:
        op = op_of(c)
        if op is None and c.name.endswith("_expanded") or "_expanded_" in c.name:
            base = by_name.get(c.name.split("_expanded")[0])
            body = {n.op_type for n in c.model.graph.node}
            op = op_of(base) if base is not None and body <= ops else None
            expanded[c.name] = op
        if op in ops and (names is None or c.name in names):
            out.append((c, op))
    return out


def run_all(compiled: bool = False) -> dict:
    """name -> (op, None | reason) for every case of an implemented op."""
    return {c.name: (op, run_case(c, compiled)) for c, op in selected()}


def table(results: dict) -> str:
    per = defaultdict(Counter)
    for name, (op, why) in results.items():
        per[op]["passed" if why is None else "excluded" if name in EXCLUDED else "failed"] += 1
    ops = implemented()
    every = sorted({op_of(c) for c in cases() if op_of(c)} | ops)
    lines = ["| op | passed | excluded | failed |", "|---|---|---|---|"]
    missing = []
    for op in every:
        if op in ops:
            n = per[op]
            lines.append(f"| {op} | {n['passed']} | {n['excluded']} | {n['failed']} |")
        else:
            missing.append(op)
    total = Counter()
    for n in per.values():
        total.update(n)
    lines.append(f"| **all {len(ops)} ops** | {total['passed']} | {total['excluded']} | "
                 f"{total['failed']} |")
    lines += ["", f"Not implemented ({len(missing)} ops, their cases not run): "
              + ", ".join(f"`{m}`" for m in missing) + "."]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    """Replace the table between docs/onnx.md's conformance markers."""
    from pathlib import Path
    doc = Path(__file__).resolve().parents[2] / "docs" / "onnx.md"
    src = doc.read_text()
    start, end = "<!-- conformance -->\n", "<!-- /conformance -->"
    a, b = src.index(start) + len(start), src.index(end)
    doc.write_text(src[:a] + text + "\n" + src[b:])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    results = run_all(compiled="--compiled" in argv)
    if "--table" in argv:
        print(table(results))
        return 0
    if "--docs" in argv:
        write_docs(table(results))
        return 0
    bad = 0
    for name, (op, why) in sorted(results.items()):
        if why is not None and name not in EXCLUDED:
            print(f"FAIL {name} ({op}): {why}")
            bad += 1
        elif why is None and name in EXCLUDED:
            print(f"PASSES BUT EXCLUDED {name}")
            bad += 1
    print(f"{len(results)} cases, {bad} unexpected")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
