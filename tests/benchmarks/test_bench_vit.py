"""benchmarks/bench_vit.py: failed rows, targets, op tables (no ViT run: that is the benchmark)."""

import keras
import numpy as np
import pytest

from aimet_tf.export.baselines import tflite_ptq_16x8, tflite_ptq_int8
from benchmarks.bench_vit import (
    Row,
    Target,
    TfliteOp,
    attempt,
    first_line,
    float_ops,
    grids_of,
    op_counts,
    render_section,
    target_met,
    tflite_ops,
)


def _render(rows):
    return render_section(rows, test_count=10000, calibration_count=2000, train_count=60000, parameters=123)


def _table_row(text: str, variant: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {variant} |"))


def test_first_line_keeps_type_and_first_nonempty_line_and_cuts_long_ones():
    assert first_line(ValueError("\n  bad | gamma  \nsecond line")) == "ValueError: bad \\| gamma"
    assert first_line(RuntimeError()) == "RuntimeError"
    long = first_line(KeyError("x" * 500), limit=40)
    assert len(long) == 40 and long.endswith("...") and long.startswith("KeyError: 'xxx")
    with pytest.raises(ValueError, match="limit >= 10"):
        first_line(ValueError("a"), limit=3)


def test_attempt_records_the_failure_instead_of_raising():
    def fails():
        raise RuntimeError("Quantization to 16x8-bit not yet supported for op: 'NEG'.\nmore")

    row = attempt(Row("peer 16x8", "peer"), fails)
    assert row.error == "RuntimeError: Quantization to 16x8-bit not yet supported for op: 'NEG'."
    assert row.accuracy is None and row.seconds is not None and row.seconds >= 0
    ok = attempt(Row("sim", "ours"), lambda: {"accuracy": 0.5, "seconds": 7.0})
    assert ok.error is None and ok.accuracy == 0.5 and ok.seconds == 7.0
    with pytest.raises(AttributeError, match="Row field"):
        attempt(Row("sim", "ours"), lambda: {"acuracy": 0.5})


def test_failed_row_is_rendered_as_failed_with_its_message_and_target_not_met():
    rows = [
        Row("FP32 Keras", "reference", accuracy=0.8805, size_bytes=2048),
        Row("W8A8 sim", "ours", accuracy=0.8780, target=Target("fp32", 0.3)),
        attempt(
            Row("W8A8 .tflite (`export_tflite`)", "ours", target=Target("agreement")),
            lambda: (_ for _ in ()).throw(ValueError("per-channel gamma | LayerNorm\ndetails")),
        ),
    ]
    text = _render(rows)
    failed = _table_row(text, "W8A8 .tflite (`export_tflite`)")
    assert "**failed**: `ValueError: per-channel gamma \\| LayerNorm`" in failed
    assert failed.rstrip().endswith("| 100% top-1 agreement with the sim | n/a |")
    assert "details" not in text
    sim = _table_row(text, "W8A8 sim")
    assert "| 87.80 | -0.25 |" in sim and sim.endswith("| within 0.3 of FP32 | yes |")
    assert "| 88.05 |  | 2.0 KB |" in _table_row(text, "FP32 Keras")
    assert text.startswith("## Bundled ViT (Fashion-MNIST)")
    assert "10,000-image test split" in text and "2,000 bundled" in text and "60,000-image train" in text


def test_targets_against_fp32_finetune_and_agreement():
    assert target_met(Row("a", "ours", accuracy=0.8775, target=Target("fp32", 0.3)), 0.8805, None) is True
    assert target_met(Row("a", "ours", accuracy=0.8774, target=Target("fp32", 0.3)), 0.8805, None) is False
    qat = Row("q", "ours", accuracy=0.880, target=Target("finetune", 0.5))
    assert target_met(qat, 0.8805, 0.8860) is False
    assert target_met(qat, 0.8805, 0.8850) is True
    assert target_met(qat, 0.8805, None) is None  # the fine-tune failed
    assert target_met(Row("e", "ours", agreement=0.9999, target=Target("agreement")), 0.8, None) is False
    assert target_met(Row("e", "ours", agreement=1.0, target=Target("agreement")), 0.8, None) is True
    assert target_met(Row("n", "ours", accuracy=0.1), 0.8805, None) is None
    with pytest.raises(ValueError, match="Target.kind"):
        Target("fp16")
    text = _render(
        [Row("FP32 Keras", "reference", accuracy=0.88), Row("Float fine-tune, 1 epoch", "peer", accuracy=0.89), qat]
    )
    assert "within 0.5 of the float fine-tune (-1.00) | no |" in _table_row(text, "q")


_OPS = [
    TfliteOp("QUANTIZE", (("serving_input", "int8", (0.0039,), (-128,)),)),
    TfliteOp("MEAN", (("vit/block1_ln1_1/moments/mean", "int8", (0.000129,), (40,)),)),
    TfliteOp("NEG", (("vit/block1_ln1_1/Neg", "float32", (), ()),)),
    TfliteOp("FULLY_CONNECTED", (("vit/block1_mha_1/key_1/MatMul1", "int8", (0.04,), (-16,)),)),
    TfliteOp("SOFTMAX", (("vit/block1_mha_1/Softmax", "int8", (0.00390625,), (-128,)),)),
    TfliteOp("NEG", (("vit/block2_ln1_1/Neg", "float32", (), ()),)),
    TfliteOp("DEQUANTIZE", (("vit/block2_ln1_1/deq", "float32", (), ()),)),
]


def test_op_tables_count_float_ops_and_pick_grids():
    assert op_counts(_OPS) == {"NEG": 2, "DEQUANTIZE": 1, "FULLY_CONNECTED": 1, "MEAN": 1, "QUANTIZE": 1, "SOFTMAX": 1}
    assert list(op_counts(_OPS))[0] == "NEG"
    assert float_ops(_OPS) == {"NEG": 2}
    grids = grids_of(_OPS, ("block1_ln1", "block1_mha_1/Softmax"))
    assert grids == [
        ("MEAN", "vit/block1_ln1_1/moments/mean", "int8, scale 0.000129, zero point 40"),
        ("NEG", "vit/block1_ln1_1/Neg", "float32"),
        ("SOFTMAX", "vit/block1_mha_1/Softmax", "int8, scale 0.00390625, zero point -128"),
    ]
    with pytest.raises(ValueError, match="substring"):
        grids_of(_OPS, ())


def _tiny_dense() -> keras.Model:
    inputs = keras.Input((6,))
    x = keras.layers.Dense(5, activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_tflite_ops_read_a_real_file_int8_and_16x8():
    model = _tiny_dense()
    x = np.random.default_rng(0).normal(size=(32, 6)).astype(np.float32)
    int8 = tflite_ops(tflite_ptq_int8(model, x, int8_io=True))
    assert op_counts(int8).get("FULLY_CONNECTED") == 2 and float_ops(int8) == {}
    fc = [op for op in int8 if op.name == "FULLY_CONNECTED"]
    assert all(op.outputs[0][1] == "int8" and len(op.outputs[0][2]) == 1 for op in fc)
    int16 = tflite_ops(tflite_ptq_16x8(model, x))
    fc16 = [op for op in int16 if op.name == "FULLY_CONNECTED"]
    assert len(fc16) == 2 and all(op.outputs[0][1] == "int16" for op in fc16)
    assert {"QUANTIZE", "DEQUANTIZE"} <= set(op_counts(int16))  # float I/O by default
    with pytest.raises(ValueError, match="at least one calibration"):
        tflite_ptq_16x8(model, x[:0])


def test_unchanged_weight_layers_names_layers_with_identical_weights():
    from benchmarks.bench_vit import unchanged_weight_layers

    inputs = keras.Input((6,))
    x = keras.layers.LayerNormalization(name="ln")(inputs)  # no kernel: never listed
    before = keras.Model(inputs, keras.layers.Dense(3, name="fc2")(keras.layers.Dense(5, name="fc1")(x)))
    after = keras.models.clone_model(before)
    after.set_weights(before.get_weights())
    dense = ["fc1", "fc2"]
    assert unchanged_weight_layers(before, after) == dense
    kernel, bias = after.get_layer(dense[1]).get_weights()
    after.get_layer(dense[1]).set_weights([kernel + 1e-3, bias])
    assert unchanged_weight_layers(before, after) == dense[:1]
    other = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2, name="other")])
    with pytest.raises(ValueError, match="same layer names"):
        unchanged_weight_layers(before, other)


def test_export_row_shows_agreement_and_exact_fraction():
    rows = [
        Row("FP32 Keras", "reference", accuracy=0.8805),
        Row("W8A8 .tflite", "ours", accuracy=0.8801, size_bytes=300 * 1024, agreement=1.0, exact_fraction=0.98765,
            target=Target("agreement")),
        Row("W4A8 .tflite", "ours", accuracy=0.87, agreement=0.9993, exact_fraction=0.9, target=Target("agreement")),
    ]
    text = _render(rows)
    assert "| 88.01 | -0.04 | 300.0 KB |  | 100.00% / 98.77% | 100% top-1 agreement with the sim | yes |" in text
    assert _table_row(text, "W4A8 .tflite").endswith("| 99.93% / 90.00% | 100% top-1 agreement with the sim | no |")
