"""AIMET's own AdaRound (aimet-onnx) on the bundled model, run inside the AIMET peer venv.

benchmarks/bench_adaround.py writes a work folder with:

* ``graph.json``: the BN-folded Keras model as a list of layers (name, class, inputs, config) in
  graph order, and its input shape;
* ``weights.npz``: each layer's kernel/bias in Keras layout (``{layer}/kernel``, ``{layer}/bias``);
* ``data.npz``: calibration images, test images and labels (NHWC) and the Keras FP32 test logits.

This script builds the same network as an ONNX graph (NCHW), checks that onnxruntime reproduces
the Keras logits, then measures with aimet-onnx: W4A8 nearest rounding (compute_encodings only)
and W4A8 AdaRound (``aimet_onnx.apply_adaround`` with the given iterations, then
compute_encodings), both with AIMET's default config and the tf_enhanced scheme, and writes the
accuracies and wall times to ``--output`` as JSON.

Usage (inside the venv made by setup_aimet.sh):
    /tmp/aimet_venv/bin/python benchmarks/peers/aimet_adaround.py --workdir DIR --iterations 2000 \
        --output DIR/aimet_2000.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BATCH = 32


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF "SAME" padding: total = max((ceil(size/stride) - 1) * stride + eff_k - size, 0), extra at the end."""
    eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + eff - size, 0)
    return total // 2, total - total // 2


def build_onnx(graph: dict, weights: dict) -> onnx.ModelProto:
    """The Keras layer list as an ONNX (opset 13, NCHW) graph."""
    nodes, inits = [], []
    shapes = {}  # tensor -> (C, H, W) or (F,)
    h, w, c = graph["input_shape"]
    input_name = graph["input_name"]
    shapes[input_name] = (c, h, w)

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    for layer in graph["layers"]:
        name, cls, cfg, ins = layer["name"], layer["class"], layer["config"], layer["inputs"]
        out = name
        if cls in ("Conv2D", "DepthwiseConv2D"):
            kernel = weights[f"{name}/kernel"]
            cin, hin, win = shapes[ins[0]]
            kh, kw = cfg["kernel_size"]
            sh, sw = cfg["strides"]
            dh, dw = cfg["dilation_rate"]
            if cls == "Conv2D":
                onnx_w = kernel.transpose(3, 2, 0, 1)  # [kh, kw, in, out] -> [out, in, kh, kw]
                group, cout = 1, kernel.shape[3]
            else:
                mult = kernel.shape[3]  # [kh, kw, in, mult] -> [in*mult, 1, kh, kw]
                onnx_w = kernel.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw)
                group, cout = cin, cin * mult
            if cfg["padding"] == "same":
                top, bottom = _same_pads(hin, kh, sh, dh)
                left, right = _same_pads(win, kw, sw, dw)
            else:
                top = bottom = left = right = 0
            bias = weights.get(f"{name}/bias", np.zeros(cout, np.float32))
            conv_out = out if cfg.get("activation", "linear") == "linear" else f"{name}_pre"
            nodes.append(helper.make_node(
                "Conv", [ins[0], const(f"{name}.weight", onnx_w), const(f"{name}.bias", bias)], [conv_out],
                name=name, kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw],
                pads=[top, left, bottom, right], group=group,
            ))
            hout = (hin + top + bottom - ((kh - 1) * dh + 1)) // sh + 1
            wout = (win + left + right - ((kw - 1) * dw + 1)) // sw + 1
            shapes[out] = (cout, hout, wout)
            if conv_out != out:
                if cfg["activation"] != "relu":
                    raise ValueError(f"{name}: unsupported activation {cfg['activation']!r}")
                nodes.append(helper.make_node("Relu", [conv_out], [out], name=f"{name}_relu"))
        elif cls == "ReLU":
            if cfg.get("negative_slope", 0) or cfg.get("threshold", 0):
                raise ValueError(f"{name}: only plain ReLU / ReLU(max_value) are exported")
            if cfg.get("max_value") is None:
                nodes.append(helper.make_node("Relu", ins, [out], name=name))
            else:
                nodes.append(helper.make_node(
                    "Clip", [ins[0], const(f"{name}.min", 0.0), const(f"{name}.max", cfg["max_value"])],
                    [out], name=name,
                ))
            shapes[out] = shapes[ins[0]]
        elif cls == "Add":
            nodes.append(helper.make_node("Add", ins, [out], name=name))
            shapes[out] = shapes[ins[0]]
        elif cls == "GlobalAveragePooling2D":
            nodes.append(helper.make_node("GlobalAveragePool", ins, [f"{name}_4d"], name=name))
            nodes.append(helper.make_node("Flatten", [f"{name}_4d"], [out], name=f"{name}_flatten"))
            shapes[out] = (shapes[ins[0]][0],)
        elif cls == "Dense":
            kernel = weights[f"{name}/kernel"]
            bias = weights.get(f"{name}/bias", np.zeros(kernel.shape[1], np.float32))
            dense_out = out if cfg.get("activation", "linear") == "linear" else f"{name}_pre"
            nodes.append(helper.make_node(
                "Gemm", [ins[0], const(f"{name}.weight", kernel.T), const(f"{name}.bias", bias)], [dense_out],
                name=name, transB=1,
            ))
            if dense_out != out:
                nodes.append(helper.make_node("Relu", [dense_out], [out], name=f"{name}_relu"))
            shapes[out] = (kernel.shape[1],)
        else:
            raise ValueError(f"Layer {name!r} of class {cls} has no ONNX export here.")
    last = graph["layers"][-1]["name"]
    onnx_graph = helper.make_graph(
        nodes, "bundled",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, ["N", shapes[last][0]])],
        initializer=inits,
    )
    model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _batches(x: np.ndarray, name: str) -> list[dict]:
    return [{name: x[i : i + BATCH]} for i in range(0, len(x), BATCH)]


def _predict(session, x: np.ndarray, name: str) -> np.ndarray:
    return np.concatenate([session.run(None, {name: x[i : i + 500]})[0] for i in range(0, len(x), 500)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--param_bw", type=int, default=4)
    parser.add_argument("--quant_scheme", default="tf_enhanced")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    import aimet_onnx
    from aimet_onnx import QuantizationSimModel, apply_adaround

    torch.manual_seed(0)
    np.random.seed(0)
    with open(os.path.join(args.workdir, "graph.json"), encoding="utf-8") as f:
        graph = json.load(f)
    weights = dict(np.load(os.path.join(args.workdir, "weights.npz")))
    data = np.load(os.path.join(args.workdir, "data.npz"))
    x_cal = np.ascontiguousarray(data["x_cal"].transpose(0, 3, 1, 2))
    x_test = np.ascontiguousarray(data["x_test"].transpose(0, 3, 1, 2))
    y_test = data["y_test"]
    name = graph["input_name"]
    model = build_onnx(graph, weights)

    fp32 = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    fp32_logits = _predict(fp32, x_test, name)
    export_max_diff = float(np.max(np.abs(fp32_logits - data["fp32_logits"])))

    def accuracy(sim) -> float:
        return float(np.mean(np.argmax(_predict(sim.session, x_test, name), -1) == y_test))

    def make_sim():
        return QuantizationSimModel(
            model, param_type=f"int{args.param_bw}", activation_type="int8", quant_scheme=args.quant_scheme,
            providers=["CPUExecutionProvider"],
        )

    inputs = _batches(x_cal, name)
    t = time.perf_counter()
    nearest = make_sim()
    nearest.compute_encodings(inputs)
    nearest_seconds = time.perf_counter() - t
    nearest_acc = accuracy(nearest)

    sim = make_sim()
    t = time.perf_counter()
    apply_adaround(sim, inputs, num_iterations=args.iterations)
    adaround_seconds = time.perf_counter() - t
    sim.compute_encodings(inputs)
    adaround_acc = accuracy(sim)
    layers = sum(1 for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose"))

    result = {
        "aimet_onnx": aimet_onnx.__version__,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "iterations": args.iterations,
        "calibration_images": int(len(x_cal)),
        "layers": layers,
        "export_max_abs_diff": export_max_diff,
        "fp32_accuracy": float(np.mean(np.argmax(fp32_logits, -1) == y_test)),
        "nearest_accuracy": nearest_acc,
        "nearest_seconds": nearest_seconds,
        "adaround_accuracy": adaround_acc,
        "adaround_seconds": adaround_seconds,
        "torch_threads": torch.get_num_threads(),
    }
    tmp = args.output + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.output)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
