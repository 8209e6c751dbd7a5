"""AIMET's own PTQ (aimet-onnx) on a Keras model handed over as files; runs in the AIMET peer venv.

``benchmarks/peers/keras_to_peer.py`` (our env) writes a work folder with ``graph.json``,
``weights.npz`` and ``data.npz`` (see its docstring). This script, which needs only numpy, onnx,
onnxruntime, torch and aimet-onnx (venv made by ``benchmarks/peers/setup_aimet.sh``):

1. builds the same network as an ONNX graph (opset 13, NCHW: 4-D tensors are transposed to
   channels-first at the input, kernels are rearranged, channel axes remapped, and a Flatten or
   Reshape of a 4-D tensor goes through channels-last again so that it orders values like Keras);
2. checks that onnxruntime reproduces the Keras FP32 outputs (fails if the largest difference is
   above 1e-3 of the largest output magnitude);
3. for each run of ``--configs`` (a JSON list of ``{"param_bw", "act_bw", "quant_scheme",
   "adaround_iterations"}``; quant_scheme as aimet-onnx 2.42 spells it: "min_max",
   "tf_enhanced", "percentile"), makes a ``QuantizationSimModel`` with aimet-onnx's default config
   (per-channel weights; ``"per_channel": false`` takes its per-tensor default_config.json),
   optionally equalizes first (``"cle": true``: aimet-onnx's ``equalize_model``, which folds,
   replaces ReLU6 by ReLU, scales and high-bias folds), optionally runs ``apply_adaround`` (aimet-onnx defaults apart from the
   iteration count), then ``compute_encodings`` on the calibration images in batches of 32, and
   scores the test images: accuracy when labels were given, top-1 agreement with the Keras FP32
   outputs always, and the fraction of predictions that differ from FP32.

The results go to ``--output`` as JSON, rewritten atomically after every run (``"complete"``
turns true at the end).

Supported Keras layers: InputLayer, Conv2D and DepthwiseConv2D (fused linear / relu / relu6,
padding same / valid, strides, dilation, groups, depth multiplier), Dense (fused linear / relu /
relu6 / softmax), ReLU (plain, max_value, negative_slope), Activation (relu, relu6, softmax,
sigmoid, tanh, linear), Add, Concatenate, MaxPooling2D, AveragePooling2D (Keras' "same" average
excludes the padding, as ONNX count_include_pad=0 does), GlobalAveragePooling2D,
GlobalMaxPooling2D, Flatten, Reshape, ZeroPadding2D, Softmax, Dropout (identity). Anything else,
BatchNormalization included (fold it first), stops the script with the layer's name.

Usage (inside the venv made by setup_aimet.sh):
    /tmp/aimet_venv/bin/python benchmarks/peers/aimet_peer.py --workdir DIR --output DIR/aimet.json \
        --configs '[{"param_bw": 4, "act_bw": 8, "quant_scheme": "tf_enhanced", "adaround_iterations": 0}]'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BATCH = 32
PREDICT_BATCH = 500
FP32_TOLERANCE = 1e-3  # of the largest |output|
NHWC_TO_NCHW_AXIS = {0: 0, 1: 2, 2: 3, 3: 1}


class UnsupportedLayerError(ValueError):
    """A layer of graph.json that this script cannot express in ONNX."""


def same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF "SAME" padding along one axis: the odd pixel goes at the end."""
    effective = (kernel - 1) * dilation + 1
    total = max((-(-size // stride) - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


def nchw_axis(axis: int, rank: int) -> int:
    """A Keras (channels-last) axis of a rank-``rank`` tensor, batch included, in the NCHW layout."""
    axis = axis + rank if axis < 0 else axis
    return NHWC_TO_NCHW_AXIS[axis] if rank == 4 else axis


def conv_pads(layer: dict, in_shape: list) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of a Conv2D / DepthwiseConv2D layer of graph.json.

    Raises:
        UnsupportedLayerError: for a padding other than "same" / "valid", or "same" on an input
            of unknown height or width.
    """
    name, cfg = layer["name"], layer["config"]
    (kh, kw), (sh, sw), (dh, dw) = cfg["kernel_size"], cfg["strides"], cfg["dilation_rate"]
    if cfg["padding"] == "valid":
        return 0, 0, 0, 0
    if cfg["padding"] != "same":
        raise UnsupportedLayerError(f"Layer {name!r}: padding {cfg['padding']!r} is not supported.")
    if in_shape[0] is None or in_shape[1] is None:
        raise UnsupportedLayerError(f"Layer {name!r}: 'same' padding needs a static input size.")
    return (*same_pads(in_shape[0], kh, sh, dh), *same_pads(in_shape[1], kw, sw, dw))


def oihw_kernel(layer: dict, kernel: np.ndarray, in_channels: int) -> tuple[np.ndarray, int]:
    """A Keras Conv2D / DepthwiseConv2D kernel in the [out, in/groups, kh, kw] layout, and the group count.

    Conv2D: [kh, kw, in/g, out] -> [out, in/g, kh, kw]. DepthwiseConv2D: [kh, kw, in, mult] ->
    [in*mult, 1, kh, kw] with groups = in, so that output channel c*mult + m is Keras' own.
    """
    if layer["class"] == "Conv2D":
        return np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)), int(layer["config"].get("groups", 1))
    kh, kw, _, multiplier = kernel.shape
    return np.ascontiguousarray(kernel.transpose(2, 3, 0, 1).reshape(in_channels * multiplier, 1, kh, kw)), in_channels


def pool_geometry(cfg: dict, in_shape: list) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    """((kh, kw), (sh, sw), (top, bottom, left, right)) of a MaxPooling2D / AveragePooling2D config."""
    kh, kw = cfg["pool_size"]
    sh, sw = cfg["strides"] or cfg["pool_size"]
    pads = (0, 0, 0, 0)
    if cfg["padding"] == "same":
        pads = (*same_pads(in_shape[0], kh, sh), *same_pads(in_shape[1], kw, sw))
    return (kh, kw), (sh, sw), pads


def relu_params(layer: dict) -> tuple[float, float | None]:
    """(negative_slope, max_value or None) of a Keras ReLU layer of graph.json.

    Raises:
        UnsupportedLayerError: for a non-zero threshold, or a slope together with a max_value.
    """
    name, cfg = layer["name"], layer["config"]
    slope, threshold = cfg.get("negative_slope") or 0.0, cfg.get("threshold") or 0.0
    max_value = cfg.get("max_value")
    if threshold:
        raise UnsupportedLayerError(f"Layer {name!r}: ReLU with threshold={threshold} is not supported.")
    if slope and max_value is not None:
        raise UnsupportedLayerError(f"Layer {name!r}: ReLU with both negative_slope and max_value is not supported.")
    return float(slope), None if max_value is None else float(max_value)


def softmax_axis(layer: dict) -> int:
    """The Keras axis of a Softmax layer of graph.json (one axis only).

    Raises:
        UnsupportedLayerError: for a softmax over several axes.
    """
    axis = layer["config"].get("axis", -1)
    axis = axis[0] if isinstance(axis, list) and len(axis) == 1 else axis
    if not isinstance(axis, int):
        raise UnsupportedLayerError(f"Layer {layer['name']!r}: Softmax over several axes {axis} is not supported.")
    return axis


def flatten_needs_nhwc(in_shape: list) -> bool:
    """Whether flattening a 4-D NCHW tensor of Keras shape ``in_shape`` must go through NHWC first.

    Keras flattens channels-last; the orders agree when C == 1 or H = W = 1.
    """
    return len(in_shape) == 3 and in_shape[2] != 1 and in_shape[:2] != [1, 1]


def refuse_layer(layer: dict, peer: str) -> None:
    """Raises for the layers no peer builds: BatchNormalization (fold it first) and channels_first ones.

    Raises:
        UnsupportedLayerError: naming the layer and what to do.
    """
    name, cls, cfg = layer["name"], layer["class"], layer["config"]
    if cfg.get("data_format", "channels_last") != "channels_last":
        raise UnsupportedLayerError(f"Layer {name!r} ({cls}): only channels_last is supported by the {peer}.")
    if cls == "BatchNormalization":
        raise UnsupportedLayerError(
            f"Layer {name!r} is a BatchNormalization, which the {peer} does not build: fold batch norms first "
            "(aimet_tf.ptq.batch_norm_fold.fold_batch_norms)."
        )


class _Builder:
    """Turns the graph.json layer list into ONNX nodes, keeping each layer's output tensor name."""

    def __init__(self, graph: dict, weights: dict[str, np.ndarray]):
        self.graph, self.weights = graph, weights
        self.nodes: list = []
        self.initializers: list = []
        self.tensor: dict[str, str] = {}  # layer name -> ONNX tensor holding its output
        self.shape: dict[str, list[int]] = {}  # layer name -> Keras output shape (no batch)

    # ---- helpers
    def const(self, name: str, array, dtype=np.float32) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], output: str, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op, inputs, [output], name=name, **attrs))
        return output

    def activation(self, kind: str, x: str, out: str, layer: str, rank: int) -> str:
        """Applies a Keras activation by name; "linear" adds no node and returns ``x``."""
        if kind == "linear":
            return x
        if kind == "relu":
            return self.node("Relu", [x], out, f"{layer}_relu")
        if kind == "relu6":
            return self.node("Clip", [x, self.const(f"{layer}.min", 0.0), self.const(f"{layer}.max", 6.0)], out,
                             f"{layer}_relu6")
        if kind == "softmax":
            return self.node("Softmax", [x], out, f"{layer}_softmax", axis=1 if rank == 4 else -1)
        if kind == "sigmoid":
            return self.node("Sigmoid", [x], out, f"{layer}_sigmoid")
        if kind == "tanh":
            return self.node("Tanh", [x], out, f"{layer}_tanh")
        raise UnsupportedLayerError(f"Layer {layer!r}: activation {kind!r} is not supported by the AIMET peer.")

    def to_nhwc(self, x: str, layer: str) -> str:
        return self.node("Transpose", [x], f"{layer}_nhwc", f"{layer}_to_nhwc", perm=[0, 2, 3, 1])

    # ---- layers
    def conv(self, layer: dict, x: str, in_shape: list[int]) -> str:
        name, cfg = layer["name"], layer["config"]
        kh, kw = cfg["kernel_size"]
        sh, sw = cfg["strides"]
        dh, dw = cfg["dilation_rate"]
        onnx_kernel, group = oihw_kernel(layer, self.weights[f"{name}/kernel"], in_shape[2])
        top, bottom, left, right = conv_pads(layer, in_shape)
        cout = onnx_kernel.shape[0]
        bias = self.weights.get(f"{name}/bias", np.zeros(cout, np.float32))
        act = cfg.get("activation", "linear")
        out = self.node(
            "Conv", [x, self.const(f"{name}.weight", onnx_kernel), self.const(f"{name}.bias", bias)],
            name if act == "linear" else f"{name}_preact", name,
            kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw], pads=[top, left, bottom, right], group=group,
        )
        return self.activation(act, out, name, name, 4)

    def dense(self, layer: dict, x: str, rank: int) -> str:
        name, cfg = layer["name"], layer["config"]
        if rank != 2:
            raise UnsupportedLayerError(
                f"Layer {name!r}: Dense on a rank-{rank} tensor is not supported (rank 2 only)."
            )
        kernel = self.weights[f"{name}/kernel"]
        bias = self.weights.get(f"{name}/bias", np.zeros(kernel.shape[1], np.float32))
        act = cfg.get("activation", "linear")
        out = self.node(
            "Gemm", [x, self.const(f"{name}.weight", kernel.T), self.const(f"{name}.bias", bias)],
            name if act == "linear" else f"{name}_preact", name, transB=1,
        )
        return self.activation(act, out, name, name, 2)

    def pool(self, layer: dict, x: str, in_shape: list[int]) -> str:
        name, cfg = layer["name"], layer["config"]
        (kh, kw), (sh, sw), (top, bottom, left, right) = pool_geometry(cfg, in_shape)
        attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[top, left, bottom, right])
        if layer["class"] == "AveragePooling2D":
            return self.node("AveragePool", [x], name, name, count_include_pad=0, **attrs)
        return self.node("MaxPool", [x], name, name, **attrs)

    def layer(self, layer: dict) -> str:
        """Adds ``layer``'s nodes; returns the ONNX tensor that holds its output."""
        name, cls, cfg = layer["name"], layer["class"], layer["config"]
        refuse_layer(layer, "AIMET peer")
        ins = [self.tensor[i] for i in layer["inputs"]]
        in_shapes = [self.shape[i] for i in layer["inputs"]]
        rank = len(in_shapes[0]) + 1 if in_shapes else len(layer["output_shape"]) + 1
        out_rank = len(layer["output_shape"]) + 1
        if cls in ("Conv2D", "DepthwiseConv2D"):
            return self.conv(layer, ins[0], in_shapes[0])
        if cls == "Dense":
            return self.dense(layer, ins[0], rank)
        if cls == "ReLU":
            slope, max_value = relu_params(layer)
            if slope:
                return self.node("LeakyRelu", ins, name, name, alpha=slope)
            if max_value is None:
                return self.node("Relu", ins, name, name)
            return self.node("Clip", [ins[0], self.const(f"{name}.min", 0.0), self.const(f"{name}.max", max_value)],
                             name, name)
        if cls == "Activation":
            return self.activation(cfg["activation"], ins[0], name, name, rank)
        if cls == "Softmax":
            return self.node("Softmax", ins, name, name, axis=nchw_axis(softmax_axis(layer), rank))
        if cls == "Add":
            out = ins[0]  # ONNX Add takes two inputs: a chain, the last one named after the layer
            for k, other in enumerate(ins[1:], start=1):
                last = k == len(ins) - 1
                out = self.node("Add", [out, other], name if last else f"{name}_{k}", name if last else f"{name}_{k}")
            return out
        if cls == "Concatenate":
            return self.node("Concat", ins, name, name, axis=nchw_axis(cfg.get("axis", -1), rank))
        if cls in ("MaxPooling2D", "AveragePooling2D"):
            return self.pool(layer, ins[0], in_shapes[0])
        if cls in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            op = "GlobalAveragePool" if cls == "GlobalAveragePooling2D" else "GlobalMaxPool"
            if cfg.get("keepdims"):
                return self.node(op, ins, name, name)
            pooled = self.node(op, ins, f"{name}_4d", name)
            return self.node("Flatten", [pooled], name, f"{name}_flatten", axis=1)
        if cls == "Flatten":
            x = ins[0]
            if flatten_needs_nhwc(in_shapes[0]):
                x = self.to_nhwc(x, name)
            return self.node("Flatten", [x], name, name, axis=1)
        if cls == "Reshape":
            x = self.to_nhwc(ins[0], name) if rank == 4 else ins[0]
            shape = self.const(f"{name}.shape", [0, *cfg["target_shape"]], np.int64)
            if out_rank != 4:
                return self.node("Reshape", [x, shape], name, name)
            y = self.node("Reshape", [x, shape], f"{name}_nhwc_out", name)
            return self.node("Transpose", [y], name, f"{name}_to_nchw", perm=[0, 3, 1, 2])
        if cls == "ZeroPadding2D":
            (top, bottom), (left, right) = cfg["padding"]
            pads = self.const(f"{name}.pads", [0, 0, top, left, 0, 0, bottom, right], np.int64)
            return self.node("Pad", [ins[0], pads], name, name, mode="constant")
        if cls == "Dropout":
            return ins[0]
        raise UnsupportedLayerError(f"Layer {name!r} of class {cls} is not supported by the AIMET peer.")

    def build(self) -> onnx.ModelProto:
        source = self.graph["input"]
        input_name, input_shape = source["name"], source["shape"]
        onnx_input_shape = to_onnx_layout_shape(input_shape)
        for layer in self.graph["layers"]:
            if layer["class"] == "InputLayer":
                if layer["name"] != input_name:
                    raise UnsupportedLayerError(f"Layer {layer['name']!r}: only one model input is supported.")
                self.tensor[input_name] = input_name
            else:
                self.tensor[layer["name"]] = self.layer(layer)
            self.shape[layer["name"]] = layer["output_shape"]
        output = self.graph["output"]
        if self.tensor[output] == input_name:
            self.tensor[output] = self.node("Identity", [input_name], output, output)
        onnx_graph = helper.make_graph(
            self.nodes, self.graph.get("name", "model"),
            [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", *onnx_input_shape])],
            [helper.make_tensor_value_info(self.tensor[output], TensorProto.FLOAT,
                                           ["N", *to_onnx_layout_shape(self.shape[output])])],
            initializer=self.initializers,
        )
        model = helper.make_model(onnx_graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        return model


def to_onnx_layout_shape(shape: list) -> list:
    """A Keras per-sample shape in the ONNX layout (H, W, C -> C, H, W; other ranks unchanged)."""
    shape = [d if d is not None else f"d{i}" for i, d in enumerate(shape)]
    return [shape[2], shape[0], shape[1]] if len(shape) == 3 else shape


def to_onnx_layout(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else np.ascontiguousarray(x)


def to_keras_layout(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def build_onnx(graph: dict, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The graph.json layer list as an ONNX (opset 13, NCHW) model."""
    return _Builder(graph, weights).build()


def predict(session, x: np.ndarray, input_name: str) -> np.ndarray:
    """Runs ``session`` on ``x`` (ONNX layout) in batches; returns the outputs in Keras layout."""
    outputs = [session.run(None, {input_name: x[i : i + PREDICT_BATCH]})[0] for i in range(0, len(x), PREDICT_BATCH)]
    return to_keras_layout(np.concatenate(outputs))


def score(outputs: np.ndarray, fp32_outputs: np.ndarray, labels: np.ndarray | None) -> dict:
    predictions = np.argmax(outputs, -1)
    agreement = float(np.mean(predictions == np.argmax(fp32_outputs, -1)))
    result = {"agreement": agreement, "differ_fraction": 1.0 - agreement,
              "predictions": predictions.astype(int).tolist()}
    if labels is not None:
        result["accuracy"] = float(np.mean(predictions == labels))
    return result


def write_json(path: str, result: dict) -> None:
    """Writes ``result`` to ``path`` as JSON through a temporary file renamed over it (no half-written file)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, path)


def load_workdir(workdir: str) -> tuple[dict, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Reads the files ``keras_to_peer.export_for_peer`` wrote.

    Args:
        workdir: the export folder.

    Returns:
        (graph.json dictionary, weights by "{layer}/kernel" / "{layer}/bias", data arrays by name:
        ``x_cal``, ``x_test``, ``fp32_outputs`` and ``y_test`` if it was written).

    Raises:
        FileNotFoundError: naming the missing file when the folder is not a complete export.
        ValueError: when data.npz lacks one of its required arrays.
    """
    paths = {name: os.path.join(workdir, name) for name in ("graph.json", "weights.npz", "data.npz")}
    missing = [path for path in paths.values() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            f"{workdir!r} is not a folder written by keras_to_peer.export_for_peer: missing {missing}."
        )
    with open(paths["graph.json"], encoding="utf-8") as f:
        graph = json.load(f)
    weights = dict(np.load(paths["weights.npz"]))
    with np.load(paths["data.npz"]) as npz:
        data = {name: npz[name] for name in npz.files}
    absent = [name for name in ("x_cal", "x_test", "fp32_outputs") if name not in data]
    if absent:
        raise ValueError(f"{paths['data.npz']} lacks {absent}; it holds {sorted(data)}.")
    return graph, weights, data


def check_fp32(model: onnx.ModelProto, graph: dict, x_test: np.ndarray, fp32_keras: np.ndarray,
               labels: np.ndarray | None) -> dict:
    """Checks that onnxruntime runs ``model`` like Keras ran the original on ``x_test``.

    Args:
        model: the ONNX model :func:`build_onnx` made from ``graph``.
        graph: the graph.json dictionary (for its input and model name).
        x_test: test inputs in ONNX layout.
        fp32_keras: the Keras FP32 outputs on ``x_test``.
        labels: labels of ``x_test``, or None.

    Returns:
        ``{"max_abs_diff", "max_abs_output", "relative_diff"}`` plus :func:`score` of the ONNX outputs.

    Raises:
        RuntimeError: if the largest difference is above ``FP32_TOLERANCE`` of the largest |output|.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    fp32_onnx = predict(session, x_test, graph["input"]["name"])
    return fp32_report(fp32_onnx, fp32_keras, labels, FP32_TOLERANCE, f"onnxruntime on {graph.get('name')!r}")


def fp32_report(outputs: np.ndarray, fp32_keras: np.ndarray, labels: np.ndarray | None, tolerance: float,
                what: str) -> dict:
    """Compares a rebuilt model's FP32 ``outputs`` with the Keras ones.

    Args:
        outputs: the rebuild's outputs (Keras layout).
        fp32_keras: the Keras FP32 outputs on the same inputs.
        labels: labels of the inputs, or None.
        tolerance: the largest difference allowed, as a fraction of the largest |Keras output|.
        what: names the rebuild in the error message.

    Returns:
        ``{"max_abs_diff", "max_abs_output", "relative_diff"}`` plus :func:`score` of ``outputs``.

    Raises:
        RuntimeError: if the largest difference is above ``tolerance`` of the largest |output|.
    """
    max_abs_diff = float(np.max(np.abs(outputs - fp32_keras)))
    scale = float(np.max(np.abs(fp32_keras)))
    relative = max_abs_diff / max(scale, 1e-12)
    if relative > tolerance:
        raise RuntimeError(
            f"{what} does not reproduce the Keras FP32 outputs: max |diff| {max_abs_diff:.3g} is {relative:.3g} "
            f"of the largest |output| {scale:.3g} (tolerance {tolerance})."
        )
    return {"max_abs_diff": max_abs_diff, "max_abs_output": scale, "relative_diff": relative,
            **score(outputs, fp32_keras, labels)}


def versions() -> dict:
    """The versions of the peer's packages (aimet-onnx, torch, onnxruntime)."""
    import onnxruntime as ort
    import torch

    import aimet_onnx

    return {"aimet_onnx": aimet_onnx.__version__, "torch": torch.__version__, "onnxruntime": ort.__version__}


def calibration_batches(x_cal: np.ndarray, input_name: str) -> list[dict[str, np.ndarray]]:
    """``x_cal`` (ONNX layout) as aimet-onnx calibration inputs: feeds of ``BATCH`` images."""
    return [{input_name: x_cal[i : i + BATCH]} for i in range(0, len(x_cal), BATCH)]


def make_sim(model: onnx.ModelProto, param_bw: int, act_bw: int, quant_scheme: str, per_channel: bool = True):
    """An aimet-onnx ``QuantizationSimModel`` of ``model`` (CPU) with integer weights and activations.

    Args:
        model: the ONNX model (the sim works on it in place).
        param_bw: weight bitwidth.
        act_bw: activation bitwidth.
        quant_scheme: as aimet-onnx spells it ("min_max", "tf_enhanced", "percentile").
        per_channel: aimet-onnx's own "default" config (per-channel weights) if True, else its
            default_config.json, the same with per-tensor weights.

    Returns:
        The sim, without encodings.
    """
    from aimet_onnx import QuantizationSimModel

    return QuantizationSimModel(
        model, param_type=f"int{param_bw}", activation_type=f"int{act_bw}", quant_scheme=quant_scheme,
        providers=["CPUExecutionProvider"], config_file="default" if per_channel else "default_config.json",
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True, help="folder written by keras_to_peer.export_for_peer")
    parser.add_argument("--configs", required=True, help="JSON list of runs")
    parser.add_argument("--output", required=True, help="JSON results file")
    args = parser.parse_args(argv)
    configs = json.loads(args.configs)
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise ValueError(f"--configs must be a JSON list of objects. Received: {args.configs}")

    import torch

    from aimet_onnx import apply_adaround
    from aimet_onnx.cross_layer_equalization import equalize_model

    graph, weights, data = load_workdir(args.workdir)
    x_cal, x_test = to_onnx_layout(data["x_cal"]), to_onnx_layout(data["x_test"])
    fp32_keras = data["fp32_outputs"]
    labels = data.get("y_test")
    input_name = graph["input"]["name"]
    model = build_onnx(graph, weights)
    result = {
        "model": graph.get("name"),
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "layers": sum(1 for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose")),
        "onnx_nodes": len(model.graph.node),
        "calibration_images": int(len(x_cal)),
        "calibration_batch": BATCH,
        "test_images": int(len(x_test)),
        "labels": labels is not None,
        "fp32": check_fp32(model, graph, x_test, fp32_keras, labels),
        "runs": [],
        "complete": False,
    }
    calibration = calibration_batches(x_cal, input_name)
    for config in configs:
        run = {"param_bw": int(config.get("param_bw", 8)), "act_bw": int(config.get("act_bw", 8)),
               "quant_scheme": config.get("quant_scheme", "min_max"),
               "adaround_iterations": int(config.get("adaround_iterations", 0)),
               "per_channel": bool(config.get("per_channel", True)), "cle": bool(config.get("cle", False))}
        print(f"aimet_peer: {graph.get('name')} {run}", file=sys.stderr, flush=True)
        torch.manual_seed(0)
        np.random.seed(0)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        if run["cle"]:
            before = {t.name: numpy_helper.to_array(t).copy() for t in copy.graph.initializer}
            equalize_model(copy)
            # Whether aimet-onnx's CLE did anything on this export (it can find no pair to scale).
            run["cle_changed_initializers"] = sum(
                1 for t in copy.graph.initializer
                if t.name in before and (before[t.name].shape != numpy_helper.to_array(t).shape
                                         or not np.array_equal(before[t.name], numpy_helper.to_array(t)))
            )
        sim = make_sim(copy, run["param_bw"], run["act_bw"], run["quant_scheme"], run["per_channel"])
        run["adaround_seconds"] = 0.0
        if run["adaround_iterations"] > 0:
            start = time.perf_counter()
            apply_adaround(sim, calibration, num_iterations=run["adaround_iterations"])
            run["adaround_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        sim.compute_encodings(calibration)
        run["compute_encodings_seconds"] = time.perf_counter() - start
        run.update(score(predict(sim.session, x_test, input_name), fp32_keras, labels))
        result["runs"].append(run)
        write_json(args.output, result)
    result["complete"] = True
    write_json(args.output, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
