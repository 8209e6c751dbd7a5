r"""Issue 19: where an exported transformer's LiteRT kernels differ from the simulation's maths.

The simulation computes each op in float from its quantized inputs and rounds the result onto the
op's output grid. For every int8 op of an exported .tflite file, this script feeds the op the
integer inputs LiteRT itself produced (all tensors preserved), computes that float-then-round
prediction in numpy, and counts how often LiteRT's integer output differs, op type by op type and
per LiteRT op resolver. It isolates each kernel's own arithmetic from errors that compound through
the network (the end-to-end figure is ``verify_tflite``'s).

    python -m benchmarks.transformer_op_gap                 # bundled ViT W8A8, 20 test images
    python -m benchmarks.transformer_op_gap --model=bert --images=64

Op types that only move values (RESHAPE, TRANSPOSE, GATHER, SELECT_V2, BROADCAST_TO,
CONCATENATION with equal grids...) are checked for exactness too, by the same rule (their float
"computation" is the identity on dequantized values).
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

from aimet_tf import datasets
from aimet_tf.export import TFLITE_CONFIG, export_tflite, prepare_model_for_tflite
from aimet_tf.kernels.litert import interpreter as litert_interpreter
from aimet_tf.kernels.tflite_model import read_tflite
from aimet_tf.quantization import QuantizationSimModel

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "vit", ["vit", "bert"], "Bundled ViT, or the random-weight BERT-style encoder.")
flags.DEFINE_integer("images", 20, "How many inputs to run (one at a time: the file's batch is 1).")
flags.DEFINE_integer("param_bw", 8, "Weight bitwidth of the exported sim.")
flags.DEFINE_list("kernels", ["default", "reference"], "LiteRT op resolvers to measure.")
flags.DEFINE_string("bmm", "", "Model BATCH_MATMUL's requantization as 'float' (XNNPACK) or 'fixed' (TFLite).")
flags.DEFINE_string("rsqrt", "", "Model RSQRT in float32 with ties 'away' or 'even'.")
flags.DEFINE_bool("dsp", False, "Model MEAN and MUL with TFLite's fixed point (aimet_tf.kernels.requantize).")
HYPOTHESIS: dict[str, str] = {}


def _deq(v: np.ndarray, t) -> np.ndarray:
    scale = t.scale.astype(np.float64)
    zp = t.zero_point.astype(np.float64)
    if scale.size > 1:
        shape = [1] * v.ndim
        shape[t.quantized_dimension] = -1
        scale, zp = scale.reshape(shape), zp.reshape(shape)
    return (v.astype(np.float64) - zp) * scale


def _gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _softmax(x: np.ndarray, beta: float) -> np.ndarray:
    z = beta * (x - x.max(-1, keepdims=True))
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def _float_op(op, inputs: list[np.ndarray], graph) -> np.ndarray | None:
    """The op's float result from dequantized inputs, or None for an op this script skips."""
    name, o = op.name, op.options
    a = inputs[0]
    if name == "FULLY_CONNECTED":
        w = inputs[1]
        y = a.reshape(-1, w.shape[1]) @ w.T
        if len(inputs) > 2 and inputs[2] is not None:
            y = y + inputs[2]
        return y
    if name == "BATCH_MATMUL":
        b = inputs[1]
        if getattr(o, "adjX", False):
            a = np.swapaxes(a, -1, -2)
        if getattr(o, "adjY", False):
            b = np.swapaxes(b, -1, -2)
        return a @ b
    if name in ("ADD", "SUB", "MUL", "SQUARED_DIFFERENCE"):
        b = inputs[1]
        return {"ADD": a + b, "SUB": a - b, "MUL": a * b, "SQUARED_DIFFERENCE": (a - b) ** 2}[name]
    if name == "MEAN":
        axes = tuple(int(v) for v in np.atleast_1d(graph.tensors[op.inputs[1]].data))
        return a.mean(axis=axes, keepdims=bool(getattr(o, "keepDims", False)))
    if name == "RSQRT":
        with np.errstate(divide="ignore"):
            return 1.0 / np.sqrt(a)
    if name == "GELU":
        return _gelu(a, bool(getattr(o, "approximate", False)))
    if name == "SOFTMAX":
        return _softmax(a, float(getattr(o, "beta", 1.0)))
    if name == "TANH":
        return np.tanh(a)
    if name in ("RESHAPE", "TRANSPOSE", "BROADCAST_TO", "EXPAND_DIMS"):
        return None  # exact by construction when the grids match; not a kernel's arithmetic
    if name == "CONCATENATION":
        return np.concatenate(inputs, axis=int(o.axis))
    return None


def _gap(path: str, xs: list, kernels: str) -> dict[str, list[float]]:
    graph = read_tflite(path)
    interpreter = litert_interpreter(path, kernels, preserve=True)
    interpreter.allocate_tensors()
    details = interpreter.get_input_details()
    stats: dict[str, list] = {}
    for x in xs:
        for d, value in zip(details, x):
            interpreter.set_tensor(d["index"], value.astype(d["dtype"]))
        interpreter.invoke()
        for op in graph.operators:
            out_t = graph.tensors[op.outputs[0]]
            if out_t.type_name != "INT8" or not out_t.is_quantized:
                continue
            ins = []
            ok = True
            for i in op.inputs:
                if i < 0:
                    ins.append(None)
                    continue
                t = graph.tensors[i]
                raw = t.data if t.data is not None else interpreter.get_tensor(i)
                if t.type_name in ("INT8", "INT32") and t.is_quantized:
                    raw = np.asarray(raw).reshape(t.shape) if t.data is not None else raw
                    ins.append(_deq(np.asarray(raw), t))
                elif t.type_name == "INT32":
                    ins.append(np.asarray(raw))
                else:
                    ok = False
            if not ok:
                continue
            try:
                y = _float_op(op, ins, graph)
            except Exception:  # noqa: BLE001 - an op layout this script does not model: skipped
                y = None
            if y is None:
                continue
            s, z = out_t.per_tensor()
            predicted = np.clip(np.floor(y / s + 0.5) + z, -128, 127).reshape(-1)
            if op.name in ("MEAN", "MUL") and HYPOTHESIS.get("dsp"):
                from aimet_tf.kernels import requantize as kr
                ts = [graph.tensors[i] for i in op.inputs]
                if op.name == "MUL":
                    (s1, z1), (s2, z2) = ts[0].per_tensor(), ts[1].per_tensor()
                    l1 = np.round(ins[0] / s1) ; l2 = np.round(ins[1] / s2)
                    lv = kr.mul_levels(l1, l2, s1, s2, s)
                else:
                    s1, z1 = ts[0].per_tensor()
                    axes = tuple(int(v) for v in np.atleast_1d(ts[1].data))
                    l1 = np.round(ins[0] / s1)
                    count = int(np.prod([l1.shape[a] for a in axes]))
                    lv = kr.mean_levels(l1.sum(axis=axes, keepdims=True), count, s1, s)
                predicted = np.clip(np.asarray(lv) + z, -128, 127).reshape(-1)
            if op.name == "RSQRT" and HYPOTHESIS.get("rsqrt"):
                t_in = graph.tensors[op.inputs[0]]
                si, zi = t_in.per_tensor()
                lv_in = interpreter.get_tensor(op.inputs[0]).astype(np.int64)
                xin = (np.float32(si) * (lv_in - zi).astype(np.float32)).astype(np.float32)
                with np.errstate(divide="ignore"):
                    yf = (np.float32(1.0) / np.sqrt(xin)).astype(np.float32)
                v = yf / np.float32(s) if HYPOTHESIS["rsqrt"] != "inverse" else yf * (np.float32(1.0) / np.float32(s))
                if HYPOTHESIS["rsqrt"] in ("away", "inverse"):
                    lv = np.sign(v) * np.floor(np.abs(v) + 0.5)
                else:
                    lv = np.round(v)
                predicted = np.clip(lv + z, -128, 127).reshape(-1)
            if op.name == "BATCH_MATMUL" and HYPOTHESIS.get("bmm"):
                sa = graph.tensors[op.inputs[0]].per_tensor()[0]
                sb = graph.tensors[op.inputs[1]].per_tensor()[0]
                acc = np.round(y / (np.float64(sa) * np.float64(sb)))
                if HYPOTHESIS["bmm"] == "float":
                    m = np.float32(np.float32(np.float32(sa) * np.float32(sb)) / np.float32(s))
                    lv = np.round(acc.astype(np.float32) * m)  # ties to even
                else:
                    from aimet_tf.kernels import fixed_point as fp
                    mult, shift = fp.quantize_multiplier(float(np.float64(np.float32(sa)) * np.float64(np.float32(sb)) / np.float64(np.float32(s))))
                    lv = fp.multiply_by_quantized_multiplier(acc.astype(np.int64), mult, shift)
                predicted = np.clip(lv + z, -128, 127).reshape(-1)
            got = interpreter.get_tensor(op.outputs[0]).astype(np.int64).reshape(-1)
            if predicted.size != got.size:
                continue
            d = np.abs(predicted - got)
            entry = stats.setdefault(op.name, [0, 0, 0])
            entry[0] += int(np.sum(d == 0))
            entry[1] += d.size
            entry[2] = max(entry[2], int(d.max()))
    return stats


def _export(model_name: str, param_bw: int, folder: str) -> tuple[str, list]:
    with open(TFLITE_CONFIG, encoding="utf-8") as handle:
        config = json.load(handle)
    if model_name == "vit":
        model = datasets.load_bundled_vit()
        cal, _ = datasets.load_fashion_mnist("calibration")
        test, _ = datasets.load_fashion_mnist("test")
        cal_data, xs = cal[:500], [[test[i : i + 1]] for i in range(FLAGS.images)]
    else:
        import keras

        from aimet_tf.text_encoder import bert_encoder, random_token_batch

        keras.utils.set_random_seed(0)
        model = bert_encoder()
        cal_data = list(random_token_batch(256, 32, 1000, seed=2, min_len=4))
        ids, mask = random_token_batch(FLAGS.images, 32, 1000, seed=1, min_len=4)
        xs = [[ids[i : i + 1], mask[i : i + 1]] for i in range(FLAGS.images)]
    sim = QuantizationSimModel(prepare_model_for_tflite(model), config_file=config, default_param_bw=param_bw)
    sim.compute_encodings(cal_data)
    return export_tflite(sim, os.path.join(folder, f"{model_name}.tflite")), xs


def main(argv) -> None:
    del argv
    HYPOTHESIS["bmm"] = FLAGS.bmm
    HYPOTHESIS["rsqrt"] = FLAGS.rsqrt
    HYPOTHESIS["dsp"] = FLAGS.dsp
    with tempfile.TemporaryDirectory() as folder:
        path, xs = _export(FLAGS.model, FLAGS.param_bw, folder)
        print(f"{FLAGS.model} W{FLAGS.param_bw}A8, {len(xs)} inputs; each op fed LiteRT's own inputs")
        print("| op | kernels | elements | identical to float-then-round | max step difference |")
        print("|---|---|---|---|---|")
        for kernels in FLAGS.kernels:
            for name, (same, total, worst) in sorted(_gap(path, xs, kernels).items()):
                print(f"| {name} | {kernels} | {total} | {100 * same / total:.3f}% | {worst} |")


if __name__ == "__main__":
    sys.exit(app.run(main))
