"""Issue 5 benchmark: the integer executor (C++ DSP kernels) against LiteRT's reference kernels.

For each int8 / int4 TFLite model: bit-exactness over all its real inputs (zero differing output
bytes and intermediates vs `OpResolverType.BUILTIN_REF`), then throughput at batch 1, the
executor's samples/s as a ratio to LiteRT BUILTIN_REF's on the same inputs, measured in the same
run (best of 3 passes).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from aimet_tf.kernels import IntegerExecutor, reference
from aimet_tf.export.baselines import tflite_ptq_int8
from benchmarks import common
from aimet_tf.testing.mltk_models import MLTK_MODEL_NAMES, load_mltk_model
from aimet_tf.testing.real_inputs import real_inputs

_TIMED_SAMPLES = 64
_VIT_INPUTS = 300  # every intermediate of 305 ops is kept for the comparison: ~1 MB a sample on each side


def _model_inputs(executor: IntegerExecutor, x: np.ndarray) -> np.ndarray:
    t = executor.input_tensors[0]
    if t.type_name == "INT8":
        scale, zero_point = t.per_tensor()
        return reference.quantize(x, scale=scale, zero_point=zero_point)
    return x.astype(np.float32)


def _litert_seconds(model_bytes: bytes, x: np.ndarray) -> float:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_content=model_bytes, experimental_op_resolver_type=OpResolverType.BUILTIN_REF)
    interpreter.allocate_tensors()
    (inp,) = interpreter.get_input_details()
    (out,) = interpreter.get_output_details()

    def loop():
        for i in range(len(x)):
            interpreter.set_tensor(inp["index"], x[i : i + 1])
            interpreter.invoke()
            interpreter.get_tensor(out["index"])

    return common.best_seconds(loop)


def _executor_seconds(executor: IntegerExecutor, x: np.ndarray) -> tuple[float, float]:
    """(batch-1 loop through a traced tf.function, one batched call) in seconds."""
    t = executor.input_tensors[0]
    fn = tf.function(executor.call_tf, input_signature=[tf.TensorSpec([None, *t.shape[1:]], tf.as_dtype(t.dtype))])
    rows = [tf.constant(x[i : i + 1]) for i in range(len(x))]
    batch = tf.constant(x)

    def loop():
        for row in rows:
            fn(row).numpy()

    return common.best_seconds(loop), common.best_seconds(lambda: fn(batch).numpy())


def _fashion_mnist_int8() -> tuple[bytes, np.ndarray]:
    import keras

    from aimet_tf import datasets

    model = datasets.load_bundled_model()
    calibration, _ = datasets.load_fashion_mnist("calibration")
    test_images, _ = datasets.load_fashion_mnist("test")
    inp = keras.Input((28, 28, 1), batch_size=1)
    return tflite_ptq_int8(keras.Model(inp, model(inp)), calibration[:200]), test_images[:1000]


def _exported_fashion_mnist(param_bw: int) -> bytes:
    """The bundled model exported by `aimet_tf.export.export_tflite` (issue 4): W{param_bw}A8, int8 I/O."""
    import tempfile

    from aimet_tf import QuantizationSimModel, datasets
    from aimet_tf.export import TFLITE_CONFIG, export_tflite, prepare_model_for_tflite

    model = prepare_model_for_tflite(datasets.load_bundled_model())
    calibration, _ = datasets.load_fashion_mnist("calibration")
    sim = QuantizationSimModel(model, config_file=TFLITE_CONFIG, default_param_bw=param_bw)
    sim.compute_encodings(calibration[:200])
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/model.tflite"
        export_tflite(sim, path, input_type="int8")
        with open(path, "rb") as f:
            return f.read()


def _exported_vit(param_bw: int = 8) -> bytes:
    """The bundled ViT exported by `export_tflite` (issue 19): W{param_bw}A8, per-tensor Gemm weights."""
    import copy
    import json
    import tempfile

    from aimet_tf import QuantizationSimModel, datasets
    from aimet_tf.export import TFLITE_CONFIG, export_tflite, prepare_model_for_tflite

    with open(TFLITE_CONFIG) as f:
        config = copy.deepcopy(json.load(f))
    config["op_type"]["Gemm"] = {"per_channel_quantization": "False"}
    model = prepare_model_for_tflite(datasets.load_bundled_vit())
    calibration, _ = datasets.load_fashion_mnist("calibration")
    sim = QuantizationSimModel(model, quant_scheme="tf_enhanced", default_param_bw=param_bw, default_output_bw=8,
                               config_file=config)
    sim.compute_encodings(calibration[:500], batch_size=100)
    with tempfile.TemporaryDirectory() as folder:
        path = export_tflite(sim, f"{folder}/vit.tflite")
        with open(path, "rb") as f:
            return f.read()


def run() -> str:
    lines = [
        "## Integer executor (C++ DSP kernels) vs LiteRT reference kernels (issue 5)",
        "",
        "`bit-exact` = zero differing bytes in the model outputs and in every intermediate tensor, "
        "executor (C++ TF ops, `DspTarget` = `TFLITE_REFERENCE`) vs ai-edge-litert "
        "`OpResolverType.BUILTIN_REF`, over all listed inputs. Throughput: batch 1, "
        f"{_TIMED_SAMPLES} samples, best of 3 passes; the executor runs its ops through a traced "
        "`tf.function`; `ratio` = executor samples/s / LiteRT BUILTIN_REF samples/s.",
        "",
        "| model | weights | ops | inputs | differing output bytes | bit-exact | LiteRT REF samples/s | executor samples/s | ratio | executor batched samples/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    models: list[tuple[str, str, bytes, np.ndarray]] = []
    for name in MLTK_MODEL_NAMES:
        models.append((name, "int8 (MLTK's PTQ)", load_mltk_model(name).tflite_bytes, real_inputs(name)))
    fmnist_bytes, fmnist_x = _fashion_mnist_int8()
    models.append(("fashion_mnist_cnn", "int8 (TFLite PTQ)", fmnist_bytes, fmnist_x))
    for bits in (8, 4):
        label = "int8 (aimet_tf export)" if bits == 8 else "int4 conv/FC + int8 depthwise (aimet_tf export)"
        models.append((f"fashion_mnist_cnn W{bits}A8", label, _exported_fashion_mnist(bits), fmnist_x))
    models.append(("bundled_vit W8A8", "int8 per-tensor (aimet_tf export)", _exported_vit(8), fmnist_x[:_VIT_INPUTS]))
    for name, weights, model_bytes, x_float in models:
        executor = IntegerExecutor(model_bytes)
        x = _model_inputs(executor, x_float)
        report = executor.compare_with_litert(x)
        timed = x[:_TIMED_SAMPLES]
        litert_s = _litert_seconds(model_bytes, timed)
        loop_s, batch_s = _executor_seconds(executor, timed)
        ops = sum(executor.graph.op_counts().values())
        lines.append(
            f"| {name} | {weights} | {ops} | {report.samples} | {report.output_bytes_differing} of "
            f"{report.output_bytes} | {'yes' if report.bit_exact else 'NO'} | {len(timed) / litert_s:.0f} | "
            f"{len(timed) / loop_s:.0f} | {litert_s / loop_s:.2f} | {len(timed) / batch_s:.0f} |"
        )
        if not report.bit_exact:
            lines.append(f"\n```\n{report.to_text()}\n```\n")
    lines += [
        "",
        "Inputs: the MLTK models' real inputs of `aimet_tf/testing/real_inputs.py` (all of them); "
        "Fashion-MNIST: the first 1,000 test images. Fashion-MNIST models: the bundled FP32 CNN "
        "converted by TFLite's own full-integer PTQ (200 calibration images), and exported by "
        "`aimet_tf.export.export_tflite` from a `QuantizationSimModel` (`TFLITE_CONFIG`, 200 "
        "calibration images) with 8-bit and 4-bit weights; the exporter stores 4-bit conv / FC "
        "weights as packed INT4 and 4-bit depthwise weights as int8 (LiteRT 2.3 has no int4 "
        "depthwise reference kernel). ai-edge-litert's reference FULLY_CONNECTED rescales in "
        "float64, which `DspTarget.fully_connected_requantize = \"float64\"` reproduces. "
        f"bundled_vit: the bundled ViT exported with per-tensor Gemm weights (`tf_enhanced`, 500 "
        f"calibration images), compared on the first {_VIT_INPUTS} test images (BATCH_MATMUL, MUL, SUB, "
        "RSQRT, GELU, TRANSPOSE, BROADCAST_TO and the SHAPE / STRIDED_SLICE / PACK shape ops).",
    ]
    return "\n".join(lines)
