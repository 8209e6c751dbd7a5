r"""Issue 13 item 3: is our W8A8 .tflite at least as accurate as TFLite's own PTQ on every model?

Per Fashion-MNIST model (the bundled CNN and the ``benchmarks.zoo`` models that are trained), on
the full 10k test split with the 2,000 calibration images: FP32 accuracy, TFLite's own full-integer
PTQ (``aimet_tf.export.baselines.tflite_ptq_int8``), and our exported int8 file run in LiteRT's
default kernels, for each variant: range scheme ``tf`` / ``tf_enhanced`` x Dense weights
per-channel (the ``tflite`` config) / per-tensor (the config before issue 13). For each, the test
predictions that differ from FP32's and from TFLite PTQ's. ``range_differences`` lists, op by op,
where our file's scales differ from TFLite PTQ's (output grids, filter and bias granularity).

    python -m benchmarks.export_gap                          # every model found
    python -m benchmarks.export_gap --models=bundled_cnn,mlp --models_dir=/path/to/models
"""

from __future__ import annotations

import copy
import difflib
import json
import os
import pathlib
import sys
import tempfile

import numpy as np

from aimet_tf import datasets
from aimet_tf.export import TFLITE_CONFIG, export_tflite, prepare_model_for_tflite, run_tflite
from aimet_tf.export.baselines import tflite_ptq_int8
from aimet_tf.quantization import QuantizationSimModel
from benchmarks import zoo

SCHEMES = ("tf", "tf_enhanced")
DENSE = ("per_channel", "per_tensor")


def _config(dense: str) -> dict:
    with open(TFLITE_CONFIG, encoding="utf-8") as handle:
        config = json.load(handle)
    config = copy.deepcopy(config)
    if dense == "per_tensor":
        config["op_type"]["Gemm"] = {"per_channel_quantization": "False"}
    return config


def available_models(models_dir: str | os.PathLike | None = None) -> list[str]:
    """The bundled CNN plus each zoo model whose trained file exists in ``models_dir``."""
    folder = pathlib.Path(models_dir) if models_dir else zoo.MODELS_DIR
    return ["bundled_cnn"] + [n for n in zoo.TRAINED if (folder / f"{n}.keras").is_file()]


def load_model(name: str, models_dir: str | os.PathLike | None = None):
    """(float model, input preparation) of a benchmark model, read from ``models_dir``."""
    import keras

    if name == "bundled_cnn" or not models_dir:
        return zoo.load(name)
    path = pathlib.Path(models_dir) / f"{name}.keras"
    return keras.saving.load_model(path, compile=False), zoo.TRAINED[name].prepare


def _ops(content: bytes) -> list[dict]:
    """Per op: name, output (scale, zero point), filter / bias scale counts, first scales."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_content=content,
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    interpreter.allocate_tensors()
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}

    def grid(index: int):
        params = tensors[index]["quantization_parameters"]
        scales, zeros = params["scales"], params["zero_points"]
        return (float(scales[0]), int(zeros[0])) if len(scales) == 1 else (scales, zeros)

    rows = []
    for op in interpreter._get_ops_details():
        if op["op_name"] in ("DELEGATE",):
            continue
        inputs = [i for i in op["inputs"] if i >= 0]
        row = {"op": op["op_name"], "output": grid(op["outputs"][0]), "inputs": [grid(i) for i in inputs[:1]]}
        if op["op_name"] in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED") and len(inputs) > 1:
            row["filter_scales"] = len(tensors[inputs[1]]["quantization_parameters"]["scales"])
            if len(inputs) > 2:
                row["bias_scales"] = len(tensors[inputs[2]]["quantization_parameters"]["scales"])
        rows.append(row)
    return rows


def _same(a, b) -> bool:
    if isinstance(a[0], float) and isinstance(b[0], float):
        return abs(a[0] - b[0]) <= 1e-6 * max(a[0], b[0]) and a[1] == b[1]
    return np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # per-axis, or unquantized


def range_differences(ptq: bytes, ours: bytes) -> list[str]:
    """Op by op (aligned on op names), where our file's grids differ from TFLite PTQ's."""
    a, b = _ops(ptq), _ops(ours)
    matcher = difflib.SequenceMatcher(a=[r["op"] for r in a], b=[r["op"] for r in b], autojunk=False)
    out = []
    for tag, i0, i1, j0, j1 in matcher.get_opcodes():
        if tag != "equal":
            out.append(f"ops differ: PTQ {[r['op'] for r in a[i0:i1]]} vs ours {[r['op'] for r in b[j0:j1]]}")
            continue
        for k, (p, o) in enumerate(zip(a[i0:i1], b[j0:j1])):
            where = f"op {i0 + k} {p['op']}"
            if p["op"] not in ("QUANTIZE", "DEQUANTIZE") and not _same(p["output"], o["output"]):
                out.append(f"{where}: output scale/zp PTQ {p['output']} ours {o['output']}")
            if p["op"] == "QUANTIZE" and not _same(p["output"], o["output"]):
                out.append(f"{where}: input grid PTQ {p['output']} ours {o['output']}")
            for key in ("filter_scales", "bias_scales"):
                if key in p and p.get(key) != o.get(key):
                    out.append(f"{where}: {key} PTQ {p[key]} ours {o.get(key)}")
    return out


def measure(name: str, models_dir=None, schemes=SCHEMES, dense=DENSE) -> dict:
    """Accuracies and prediction differences of one model (see the module doc)."""
    model, prepare = load_model(name, models_dir)
    x_cal = prepare(datasets.load_fashion_mnist("calibration")[0])
    x_test, y_test = datasets.load_fashion_mnist("test")
    x_test = prepare(x_test)
    fp32 = np.argmax(model.predict(x_test, batch_size=500, verbose=0), -1)
    ptq_file = tflite_ptq_int8(model, x_cal)
    ptq = np.argmax(run_tflite(ptq_file, x_test)[0], -1)
    result = {
        "model": name,
        "fp32": float(np.mean(fp32 == y_test)),
        "tflite_ptq": float(np.mean(ptq == y_test)),
        "tflite_ptq_vs_fp32": int(np.sum(ptq != fp32)),
        "variants": [],
    }
    prepared = prepare_model_for_tflite(model)
    with tempfile.TemporaryDirectory() as folder:
        for scheme in schemes:
            for granularity in dense:
                sim = QuantizationSimModel(prepared, quant_scheme=scheme, config_file=_config(granularity))
                sim.compute_encodings(x_cal)
                path = export_tflite(sim, os.path.join(folder, f"{scheme}_{granularity}.tflite"))
                ours = np.argmax(run_tflite(path, x_test)[0], -1)
                with open(path, "rb") as handle:
                    differences = range_differences(ptq_file, handle.read())
                result["variants"].append({
                    "scheme": scheme,
                    "dense": granularity,
                    "accuracy": float(np.mean(ours == y_test)),
                    "vs_fp32": int(np.sum(ours != fp32)),
                    "vs_ptq": int(np.sum(ours != ptq)),
                    "range_differences": differences,
                })
    return result


def table(results: list[dict]) -> str:
    rows = [
        "| model | FP32 % | TFLite PTQ % (differs from FP32) | scheme | Dense weights | ours % | differs from FP32 | differs from PTQ | grids differing from PTQ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        for v in r["variants"]:
            rows.append(
                f"| {r['model']} | {100 * r['fp32']:.2f} | {100 * r['tflite_ptq']:.2f} ({r['tflite_ptq_vs_fp32']}) | "
                f"{v['scheme']} | {v['dense']} | {100 * v['accuracy']:.2f} | {v['vs_fp32']} | {v['vs_ptq']} | "
                f"{len(v['range_differences'])} |"
            )
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    models_dir, names = None, None
    for arg in argv[1:]:
        if arg.startswith("--models_dir="):
            models_dir = arg.split("=", 1)[1]
        elif arg.startswith("--models="):
            names = [n for n in arg.split("=", 1)[1].split(",") if n]
        else:
            print(f"Expected --models=A,B and/or --models_dir=DIR. Received: {arg!r}", file=sys.stderr)
            return 2
    names = names or available_models(models_dir)
    results = []
    for name in names:
        result = measure(name, models_dir)
        results.append(result)
        print(json.dumps(result), flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
