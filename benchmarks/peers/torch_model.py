"""A Keras model handed over as files (graph.json + weights.npz) rebuilt as a ``torch.nn.Module``.

Runs in the aimet-torch peer venv (``benchmarks/peers/setup_aimet_torch.sh``: numpy, torch, onnx);
reads what ``benchmarks/peers/keras_to_peer.export_for_peer`` wrote (see its docstring). The
module works in NCHW: the caller hands it inputs through ``aimet_peer.to_onnx_layout`` and reads
4-D outputs back through ``aimet_peer.to_keras_layout``. Kernels are rearranged, channel axes
remapped and Keras' "same" padding reproduced exactly: an asymmetric one (the odd pixel at the
bottom / right, as a stride-2 layer on an even size needs) becomes a ``ZeroPad2d`` before the
convolution, a symmetric one the convolution's own padding. A Flatten or Reshape of a 4-D tensor
goes through channels-last, so that it orders values as Keras does.

Each Keras layer becomes one child module named after it, so aimet-torch's model preparer, its
quantizers and its reports follow the Keras layer names (``.`` and other characters a module
name cannot hold become ``_``). Supported: the layer classes of ``aimet_peer.py`` (InputLayer,
Conv2D, DepthwiseConv2D, Dense, ReLU, Activation, Add, Concatenate, MaxPooling2D,
AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, Flatten, Reshape, ZeroPadding2D,
Softmax, Dropout); anything else, BatchNormalization included (fold it first), raises
``UnsupportedLayerError`` naming the layer. A MaxPooling2D with asymmetric "same" padding pads
with -inf (what Keras' max ignores) in a ``ConstantPad2d`` of its own.

Check a rebuild with :func:`check_fp32` (largest difference to the Keras FP32 outputs at most
``FP32_TOLERANCE`` of the largest |output|), or from the shell on export folders:
    /tmp/aimet_torch_venv/bin/python benchmarks/peers/torch_model.py DIR [DIR ...]
(the bundled model and the four MLTK models, BN-folded, reproduce within 2e-6.)
"""

# No "from __future__ import annotations": torch.fx keeps the root forward's annotations, and as
# strings they would make the traced model (which AutoQuant pickles) unpicklable.
import re

import numpy as np
import torch
from torch import nn

from aimet_peer import (
    UnsupportedLayerError,
    conv_pads,
    flatten_needs_nhwc,
    fp32_report,
    nchw_axis,
    oihw_kernel,
    pool_geometry,
    refuse_layer,
    relu_params,
    softmax_axis,
    to_keras_layout,
)

__all__ = ["FP32_TOLERANCE", "KerasGraphModule", "build_torch", "check_fp32", "predict"]

FP32_TOLERANCE = 1e-4  # of the largest |output|
PREDICT_BATCH = 500
_PEER = "aimet-torch peer"


class Add(nn.Module):
    """Keras Add: the sum of all inputs."""

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        total = inputs[0]
        for other in inputs[1:]:
            total = total + other
        return total


class Concatenate(nn.Module):
    """Keras Concatenate along ``dim`` (already in NCHW numbering)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return torch.cat(inputs, dim=self.dim)


class FlattenChannelsLast(nn.Module):
    """Keras Flatten of an NCHW tensor: values in (H, W, C) order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(x.permute(0, 2, 3, 1), 1)


class KerasReshape(nn.Module):
    """Keras Reshape: 4-D inputs are read in NHWC order, 4-D results are handed on as NCHW."""

    def __init__(self, target_shape: list[int], nhwc_in: bool, nchw_out: bool):
        super().__init__()
        self.target_shape, self.nhwc_in, self.nchw_out = tuple(int(d) for d in target_shape), nhwc_in, nchw_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.nhwc_in:
            x = x.permute(0, 2, 3, 1)
        y = torch.reshape(x, (x.shape[0], *self.target_shape))
        return y.permute(0, 3, 1, 2) if self.nchw_out else y


class SameAveragePool(nn.Module):
    """Keras AveragePooling2D with asymmetric "same" padding: the mean over the pixels inside the image."""

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], pads: tuple[int, int, int, int],
                 in_hw: tuple[int, int]):
        """Args: pads: (top, bottom, left, right); in_hw: the static input height and width."""
        super().__init__()
        top, bottom, left, right = pads
        self.pad = nn.ZeroPad2d((left, right, top, bottom))
        self.pool = nn.AvgPool2d(kernel, stride)
        with torch.no_grad():  # the share of each window that lies inside the image
            inside = self.pool(self.pad(torch.ones(1, 1, *in_hw)))
        self.register_buffer("inside", inside)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.pad(x)) / self.inside


class KerasGraphModule(nn.Module):
    """Runs the rebuilt layers in graph.json's topological order; takes and returns NCHW tensors."""

    def __init__(self, graph: dict, weights: dict[str, np.ndarray]):
        """Builds every layer of ``graph`` (see :func:`build_torch`)."""
        super().__init__()
        self.input_name = graph["input"]["name"]
        self.steps: list[tuple[str, list[str]]] = []  # (module name, names of its inputs), in order
        self.layer_modules = nn.ModuleDict()
        module_names: dict[str, str] = {}  # Keras layer name -> module name (the input maps to itself)
        shapes: dict[str, list] = {}
        for layer in graph["layers"]:
            name = layer["name"]
            shapes[name] = layer["output_shape"]
            if layer["class"] == "InputLayer":
                if name != self.input_name:
                    raise UnsupportedLayerError(f"Layer {name!r}: only one model input is supported by the {_PEER}.")
                module_names[name] = name
                continue
            in_shapes = [shapes[i] for i in layer["inputs"]]
            key = _module_name(name, self.layer_modules)
            self.layer_modules[key] = layer_module(layer, weights, in_shapes)
            module_names[name] = key
            self.steps.append((key, [module_names[i] for i in layer["inputs"]]))
        self.output_name = module_names[graph["output"]]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = {self.input_name: x}
        for key, inputs in self.steps:
            values[key] = self.layer_modules[key](*[values[i] for i in inputs])
        return values[self.output_name]


def _module_name(layer_name: str, taken: nn.ModuleDict) -> str:
    key = re.sub(r"\W", "_", layer_name)
    key = key if key and not key[0].isdigit() else f"l_{key}"
    base, k = key, 1
    while key in taken:
        k += 1
        key = f"{base}_{k}"
    return key


def _activation(kind: str, name: str, rank: int) -> nn.Module | None:
    """A Keras activation by name as a module; None for "linear"."""
    modules = {"relu": nn.ReLU, "relu6": nn.ReLU6, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
    if kind == "linear":
        return None
    if kind == "softmax":
        return nn.Softmax(dim=1 if rank == 4 else -1)
    if kind not in modules:
        raise UnsupportedLayerError(f"Layer {name!r}: activation {kind!r} is not supported by the {_PEER}.")
    return modules[kind]()


def _with_activation(core: list[nn.Module], cfg: dict, name: str, rank: int) -> nn.Module:
    activation = _activation(cfg.get("activation", "linear"), name, rank)
    modules = core + ([activation] if activation is not None else [])
    return modules[0] if len(modules) == 1 else nn.Sequential(*modules)


def _tensor(array: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.ascontiguousarray(array, np.float32)))


def _conv(layer: dict, weights: dict[str, np.ndarray], in_shape: list) -> nn.Module:
    name, cfg = layer["name"], layer["config"]
    kernel, groups = oihw_kernel(layer, weights[f"{name}/kernel"], in_shape[2])
    top, bottom, left, right = conv_pads(layer, in_shape)
    symmetric = top == bottom and left == right
    conv = nn.Conv2d(
        in_shape[2], kernel.shape[0], tuple(cfg["kernel_size"]), stride=tuple(cfg["strides"]),
        padding=(top, left) if symmetric else 0, dilation=tuple(cfg["dilation_rate"]), groups=groups,
        bias=f"{name}/bias" in weights,
    )
    conv.weight = _tensor(kernel)
    if conv.bias is not None:
        conv.bias = _tensor(weights[f"{name}/bias"])
    core = [conv] if symmetric else [nn.ZeroPad2d((left, right, top, bottom)), conv]
    return _with_activation(core, cfg, name, 4)


def _dense(layer: dict, weights: dict[str, np.ndarray], in_shape: list) -> nn.Module:
    name = layer["name"]
    if len(in_shape) != 1:
        raise UnsupportedLayerError(
            f"Layer {name!r}: Dense on a rank-{len(in_shape) + 1} tensor is not supported by the {_PEER} (rank 2 only)."
        )
    kernel = weights[f"{name}/kernel"]
    linear = nn.Linear(kernel.shape[0], kernel.shape[1], bias=f"{name}/bias" in weights)
    linear.weight = _tensor(kernel.T)
    if linear.bias is not None:
        linear.bias = _tensor(weights[f"{name}/bias"])
    return _with_activation([linear], layer["config"], name, 2)


def _pool(layer: dict, in_shape: list) -> nn.Module:
    kernel, stride, pads = pool_geometry(layer["config"], in_shape)
    top, bottom, left, right = pads
    symmetric = top == bottom and left == right
    if layer["class"] == "AveragePooling2D":
        if symmetric:
            return nn.AvgPool2d(kernel, stride, padding=(top, left), count_include_pad=False)
        return SameAveragePool(kernel, stride, pads, (in_shape[0], in_shape[1]))
    if symmetric:
        return nn.MaxPool2d(kernel, stride, padding=(top, left))
    return nn.Sequential(nn.ConstantPad2d((left, right, top, bottom), float("-inf")), nn.MaxPool2d(kernel, stride))


def _relu(layer: dict) -> nn.Module:
    slope, max_value = relu_params(layer)
    if slope:
        return nn.LeakyReLU(slope)
    if max_value is None:
        return nn.ReLU()
    return nn.ReLU6() if max_value == 6.0 else nn.Hardtanh(0.0, max_value)


def _global_pool(layer: dict) -> nn.Module:
    pool = nn.AdaptiveAvgPool2d(1) if layer["class"] == "GlobalAveragePooling2D" else nn.AdaptiveMaxPool2d(1)
    return pool if layer["config"].get("keepdims") else nn.Sequential(pool, nn.Flatten(1))


def layer_module(layer: dict, weights: dict[str, np.ndarray], in_shapes: list[list]) -> nn.Module:
    """The torch module computing one graph.json layer in NCHW.

    Args:
        layer: the graph.json layer entry.
        weights: all weights by "{layer}/kernel" / "{layer}/bias" (Keras layout).
        in_shapes: the Keras shapes (no batch axis) of the layer's inputs.

    Returns:
        A module taking the layer's inputs in graph.json order.

    Raises:
        UnsupportedLayerError: for a layer class or configuration the peer cannot build.
    """
    refuse_layer(layer, _PEER)
    cls, cfg = layer["class"], layer["config"]
    rank = len(in_shapes[0]) + 1
    if cls in ("Conv2D", "DepthwiseConv2D"):
        return _conv(layer, weights, in_shapes[0])
    if cls == "Dense":
        return _dense(layer, weights, in_shapes[0])
    if cls == "ReLU":
        return _relu(layer)
    if cls == "Activation":
        activation = _activation(cfg["activation"], layer["name"], rank)
        return nn.Identity() if activation is None else activation
    if cls == "Softmax":
        return nn.Softmax(dim=nchw_axis(softmax_axis(layer), rank))
    if cls == "Add":
        return Add()
    if cls == "Concatenate":
        return Concatenate(nchw_axis(cfg.get("axis", -1), rank))
    if cls in ("MaxPooling2D", "AveragePooling2D"):
        return _pool(layer, in_shapes[0])
    if cls in ("GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        return _global_pool(layer)
    if cls == "Flatten":
        return FlattenChannelsLast() if flatten_needs_nhwc(in_shapes[0]) else nn.Flatten(1)
    if cls == "Reshape":
        return KerasReshape(cfg["target_shape"], rank == 4, len(layer["output_shape"]) == 3)
    if cls == "ZeroPadding2D":
        (top, bottom), (left, right) = cfg["padding"]
        return nn.ZeroPad2d((left, right, top, bottom))
    if cls == "Dropout":
        return nn.Identity()
    raise UnsupportedLayerError(f"Layer {layer['name']!r} of class {cls} is not supported by the {_PEER}.")


def build_torch(graph: dict, weights: dict[str, np.ndarray]) -> KerasGraphModule:
    """The graph.json model as a torch module (NCHW, float32, eval mode).

    Args:
        graph: the graph.json dictionary.
        weights: its weights.npz arrays.

    Returns:
        The module.

    Raises:
        UnsupportedLayerError: naming the first layer the peer cannot build.
    """
    return KerasGraphModule(graph, weights).eval()


def predict(model: nn.Module, x: np.ndarray, batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Runs ``model`` on ``x`` (NCHW) in batches without gradients; returns the outputs in Keras layout."""
    outputs = []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            outputs.append(model(torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size]))).numpy())
    return to_keras_layout(np.concatenate(outputs))


def check_fp32(model: nn.Module, graph: dict, x_test: np.ndarray, fp32_keras: np.ndarray,
               labels: np.ndarray | None) -> dict:
    """Checks that the rebuilt ``model`` computes what Keras computed on ``x_test``.

    Args:
        model: the module :func:`build_torch` made from ``graph``.
        graph: the graph.json dictionary (for the model name).
        x_test: test inputs in NCHW layout.
        fp32_keras: the Keras FP32 outputs on ``x_test``.
        labels: labels of ``x_test``, or None.

    Returns:
        ``{"max_abs_diff", "max_abs_output", "relative_diff"}`` plus ``aimet_peer.score`` of the
        torch outputs (without the per-image predictions).

    Raises:
        RuntimeError: if the largest difference is above ``FP32_TOLERANCE`` of the largest |output|.
    """
    report = fp32_report(predict(model, x_test), fp32_keras, labels, FP32_TOLERANCE,
                         f"The torch rebuild of {graph.get('name')!r}")
    report.pop("predictions")
    return report


def main(argv: list[str] | None = None) -> None:
    """Checks the torch rebuild of each export folder given (``python torch_model.py DIR [DIR ...]``, in the venv)."""
    import argparse
    import json

    from aimet_peer import load_workdir, to_onnx_layout

    parser = argparse.ArgumentParser(description="Checks torch rebuilds of keras_to_peer exports against Keras FP32.")
    parser.add_argument("workdirs", nargs="+", help="folders written by keras_to_peer.export_for_peer")
    for workdir in parser.parse_args(argv).workdirs:
        graph, weights, data = load_workdir(workdir)
        model = build_torch(graph, weights)
        report = check_fp32(model, graph, to_onnx_layout(data["x_test"]), data["fp32_outputs"], data.get("y_test"))
        print(json.dumps({"workdir": workdir, "model": graph.get("name"), **report}))


if __name__ == "__main__":
    main()
