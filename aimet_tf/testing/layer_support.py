r"""What each registered Keras layer gets in the simulation, and whether its TFLite export reproduces it.

One tiny seeded model per layer kind goes through the README's flow: a W8A8 sim on AIMET's default
config (what is quantized), then ``prepare_model_for_tflite`` -> a sim on ``TFLITE_CONFIG`` ->
``compute_encodings`` -> ``export_tflite`` -> ``verify_tflite`` on other inputs (what the file does).
The README's layer table is this module's output, and a test checks that they agree:

    python -m aimet_tf.testing.layer_support      # prints the markdown table
"""

from __future__ import annotations

import dataclasses
import os
import re
import tempfile
from typing import Callable

import keras
import numpy as np

from aimet_tf.testing.models import randomize_batch_norms

from aimet_tf.layers import ClassToken, PaddingAttentionMask, PositionEmbedding, gelu_approximate

L = keras.layers

__all__ = ["CASES", "LayerCase", "SupportRow", "covered_classes", "markdown_table", "support_row"]


@dataclasses.dataclass(frozen=True)
class LayerCase:
    """A layer kind: the layer (or a few kinds sharing one row) applied after a 1x1 producer."""

    name: str
    input_shape: tuple[int, ...]
    build: Callable[[keras.KerasTensor], keras.KerasTensor]
    token_ids: int = 0  # > 0: the input holds integer ids below this (no float producer in front)


def _two(layer_cls, **kwargs):
    """A merge layer over the input and a Dense/Conv branch of the same shape."""
    def build(x):
        branch = L.Dense(x.shape[-1], name="branch")(x)
        return layer_cls(name="layer", **kwargs)([x, branch])
    return build


def _one(layer_cls, *args, **kwargs):
    return lambda x: layer_cls(*args, name="layer", **kwargs)(x)


def _masked_attention(ids):
    tokens = L.Embedding(2, 4, name="embed")(ids)
    mask = PaddingAttentionMask(name="layer")(ids)
    return L.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")(tokens, tokens, attention_mask=mask)


IMAGE = (8, 8, 3)
SEQUENCE = (10, 4)
VECTOR = (12,)
VOLUME = (4, 4, 4, 2)

CASES: tuple[LayerCase, ...] = (
    LayerCase("Dense", VECTOR, _one(L.Dense, 5)),
    LayerCase("Conv1D", SEQUENCE, _one(L.Conv1D, 5, 3)),
    LayerCase("Conv2D", IMAGE, _one(L.Conv2D, 5, 3)),
    LayerCase("Conv3D", VOLUME, _one(L.Conv3D, 3, 2)),
    LayerCase("Conv1DTranspose", SEQUENCE, _one(L.Conv1DTranspose, 3, 3)),
    LayerCase("Conv2DTranspose", IMAGE, _one(L.Conv2DTranspose, 4, 3, strides=2, padding="same")),
    LayerCase("Conv3DTranspose", VOLUME, _one(L.Conv3DTranspose, 2, 2)),
    LayerCase("DepthwiseConv1D", SEQUENCE, _one(L.DepthwiseConv1D, 3)),
    LayerCase("DepthwiseConv2D", IMAGE, _one(L.DepthwiseConv2D, 3)),
    LayerCase("SeparableConv1D", SEQUENCE, _one(L.SeparableConv1D, 5, 3)),
    LayerCase("SeparableConv2D", IMAGE, _one(L.SeparableConv2D, 5, 3)),
    LayerCase("EinsumDense", SEQUENCE, _one(L.EinsumDense, "abc,cd->abd", output_shape=(None, 6))),
    LayerCase("BatchNormalization (after a conv)", IMAGE,
              lambda x: L.BatchNormalization(name="layer")(L.Conv2D(4, 1, name="conv")(x))),
    LayerCase("BatchNormalization (after a ReLU: no fold)", IMAGE,
              lambda x: L.BatchNormalization(name="layer")(L.ReLU(name="relu")(x))),
    LayerCase("LayerNormalization", SEQUENCE, _one(L.LayerNormalization)),
    LayerCase("RMSNormalization", SEQUENCE, _one(L.RMSNormalization)),
    LayerCase("PReLU", IMAGE, _one(L.PReLU)),
    LayerCase("SimpleRNN", SEQUENCE, _one(L.SimpleRNN, 6)),
    LayerCase("LSTM", SEQUENCE, _one(L.LSTM, 6)),
    LayerCase("GRU", SEQUENCE, _one(L.GRU, 6)),
    LayerCase("Bidirectional(LSTM) (split by prepare_model)", SEQUENCE,
              lambda x: L.Bidirectional(L.LSTM(4, return_sequences=True, name="rnn"), name="layer")(x)),
    LayerCase("MultiHeadAttention", SEQUENCE,
              lambda x: L.MultiHeadAttention(num_heads=2, key_dim=3, name="layer")(x, x)),
    LayerCase("MultiHeadAttention (causal mask)", SEQUENCE,
              lambda x: L.MultiHeadAttention(num_heads=2, key_dim=3, name="layer")(x, x, use_causal_mask=True)),
    LayerCase("ClassToken, PositionEmbedding (aimet_tf.layers)", SEQUENCE,
              lambda x: PositionEmbedding(name="layer")(ClassToken(name="cls")(x))),
    LayerCase("PaddingAttentionMask (aimet_tf.layers) masking an Embedding's MultiHeadAttention", (10,),
              lambda ids: _masked_attention(ids), token_ids=2),
    LayerCase("ReLU", IMAGE, _one(L.ReLU)),
    LayerCase("ReLU(max_value=6)", IMAGE, _one(L.ReLU, max_value=6.0)),
    LayerCase("Activation('sigmoid')", IMAGE, _one(L.Activation, "sigmoid")),
    LayerCase("Activation('tanh')", IMAGE, _one(L.Activation, "tanh")),
    LayerCase("Activation('swish')", IMAGE, _one(L.Activation, "swish")),
    LayerCase("Activation('hard_swish')", IMAGE, _one(L.Activation, "hard_swish")),
    LayerCase("Activation('gelu')", IMAGE, _one(L.Activation, "gelu")),
    LayerCase("Activation(gelu_approximate) (aimet_tf.layers, tanh form)", IMAGE,
              _one(L.Activation, gelu_approximate)),
    LayerCase("LeakyReLU", IMAGE, _one(L.LeakyReLU, negative_slope=0.2)),
    LayerCase("ELU", IMAGE, _one(L.ELU)),
    LayerCase("Softmax", VECTOR, _one(L.Softmax)),
    LayerCase("Add", IMAGE, _two(L.Add)),
    LayerCase("Subtract", IMAGE, _two(L.Subtract)),
    LayerCase("Multiply", IMAGE, _two(L.Multiply)),
    LayerCase("Average", IMAGE, _two(L.Average)),
    LayerCase("Maximum", IMAGE, _two(L.Maximum)),
    LayerCase("Minimum", IMAGE, _two(L.Minimum)),
    LayerCase("Concatenate", IMAGE, _two(L.Concatenate)),
    LayerCase("AveragePooling2D", IMAGE, _one(L.AveragePooling2D, 2)),
    LayerCase("MaxPooling2D", IMAGE, _one(L.MaxPooling2D, 2)),
    LayerCase("GlobalAveragePooling2D", IMAGE, _one(L.GlobalAveragePooling2D)),
    LayerCase("GlobalMaxPooling2D", IMAGE, _one(L.GlobalMaxPooling2D)),
    LayerCase("AveragePooling1D", SEQUENCE, _one(L.AveragePooling1D, 2)),
    LayerCase("MaxPooling1D", SEQUENCE, _one(L.MaxPooling1D, 2)),
    LayerCase("GlobalAveragePooling1D", SEQUENCE, _one(L.GlobalAveragePooling1D)),
    LayerCase("UpSampling2D (nearest)", IMAGE, _one(L.UpSampling2D, 2)),
    LayerCase("UpSampling2D (bilinear)", IMAGE, _one(L.UpSampling2D, 2, interpolation="bilinear")),
    LayerCase("Resizing (bilinear)", IMAGE, _one(L.Resizing, 12, 12)),
    LayerCase("Resizing (nearest)", IMAGE, _one(L.Resizing, 12, 12, interpolation="nearest")),
    LayerCase("CenterCrop", IMAGE, _one(L.CenterCrop, 6, 6)),
    LayerCase("Rescaling", IMAGE, _one(L.Rescaling, 0.5, offset=-0.25)),
    LayerCase("Normalization", IMAGE,
              _one(L.Normalization, mean=[0.1, -0.2, 0.3], variance=[1.5, 0.5, 2.0])),
    LayerCase("Flatten", IMAGE, _one(L.Flatten)),
    LayerCase("Reshape", IMAGE, _one(L.Reshape, (16, 12))),
    LayerCase("Permute", SEQUENCE, _one(L.Permute, (2, 1))),
    LayerCase("RepeatVector", VECTOR, _one(L.RepeatVector, 3)),
    LayerCase("ZeroPadding2D", IMAGE, _one(L.ZeroPadding2D, 1)),
    LayerCase("Cropping2D", IMAGE, _one(L.Cropping2D, 1)),
    LayerCase("Dropout, SpatialDropout, GaussianNoise, GaussianDropout, Identity", IMAGE,
              lambda x: L.Identity(name="layer")(L.GaussianDropout(0.2)(L.GaussianNoise(0.1)(
                  L.SpatialDropout2D(0.2)(L.Dropout(0.3)(x)))))),
    LayerCase("Embedding", (10,), _one(L.Embedding, 20, 4), token_ids=20),
    LayerCase("keras.ops (x * sigmoid(x), x + y, mean, ...)", IMAGE,
              lambda x: keras.ops.mean(x * keras.ops.sigmoid(x), axis=-1, keepdims=True)),
    LayerCase("keras.ops reshape / transpose", SEQUENCE, lambda x: keras.ops.transpose(x, (0, 2, 1))),
)
"""One case per row of the README's layer table."""


@dataclasses.dataclass(frozen=True)
class SupportRow:
    """One row: the layer kind, what its sim quantizes (AIMET's default config), the TFLite verdict."""

    layer: str
    quantized: str
    tflite: str


def _model(case: LayerCase) -> keras.Model:
    keras.utils.set_random_seed(11)
    inp = keras.Input(case.input_shape, name="x", dtype="int32" if case.token_ids else "float32")
    # A producer in front, so every layer reads a quantized tensor as it would inside a model.
    producer = inp if case.token_ids else L.Dense(case.input_shape[-1], name="producer")(inp)
    model = keras.Model(inp, case.build(producer), name=re.sub(r"\W+", "_", case.name).strip("_").lower())
    return randomize_batch_norms(model, seed=5)


def _inputs(case: LayerCase, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if case.token_ids:
        return rng.integers(0, case.token_ids, size=(n, *case.input_shape)).astype("int32")
    return rng.normal(size=(n, *case.input_shape)).astype("float32")


def covered_classes(case: LayerCase) -> set[type]:
    """The layer classes the case's prepared model holds (besides the input and the producer)."""
    from aimet_tf.graph import prepare_model

    return {type(layer) for layer in prepare_model(_model(case)).layers
            if layer.name not in _HELPERS and not isinstance(layer, L.InputLayer)}


_HELPERS = ("producer", "branch", "conv", "relu")


def _quantized(case: LayerCase, model: keras.Model) -> str:
    from aimet_tf.graph import prepare_model
    from aimet_tf.quantization import QuantizationSimModel

    sim = QuantizationSimModel(prepare_model(model), quant_scheme="tf")
    parts: list[str] = []
    for wrapper in sim.wrappers():
        if wrapper.name in _HELPERS:
            continue
        params = [p.lstrip("_").replace("._", ".") for p, q in wrapper.param_quantizers_by_path().items() if q is not None]
        internal = [n for n, q in wrapper.internal_quantizers.items() if q is not None]
        outputs = sum(q is not None for q in wrapper.output_quantizers)
        pieces = []
        if params:
            pieces.append(" + ".join(params))
        if internal:
            pieces.append(f"{len(internal)} step tensors ({', '.join(internal[:3])}, ...)")
        if outputs:
            pieces.append("output")
        parts.append(f"{type(wrapper.layer).__name__}: {', '.join(pieces) or 'nothing (keeps its input grid)'}")
    return "; ".join(parts)


def _tflite(case: LayerCase, model: keras.Model) -> str:
    from aimet_tf.export import TFLITE_CONFIG, export_tflite, prepare_model_for_tflite
    from aimet_tf.export.tflite import TfliteExportError
    from aimet_tf.export.verify import verify_tflite
    from aimet_tf.graph import prepare_model
    from aimet_tf.quantization import QuantizationSimModel

    sim = QuantizationSimModel(prepare_model_for_tflite(prepare_model(model)), quant_scheme="tf",
                               config_file=TFLITE_CONFIG)
    sim.compute_encodings(_inputs(case, 64, seed=1))
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = export_tflite(sim, os.path.join(folder, "layer.tflite"))
        except TfliteExportError as error:
            return f"no: {_reason(str(error))}"
        report = verify_tflite(sim, path, _inputs(case, 64, seed=2))
    # Verdicts, not percentages: how many elements land one step off depends on the CPU's kernels.
    if report.exact_fraction == 1.0:
        return "yes, identical"
    if report.max_step_difference <= 1.0 + 1e-6:
        return "yes, within one step (some elements one step apart)"
    return "runs, but not reproduced: elements more than one step apart"


def _reason(message: str) -> str:
    """The first sentence of an export error's (last) problem, without the converter's type dumps."""
    text = re.sub(r"\s+", " ", message.split("\n  - ")[-1]).strip()
    text = re.sub(r"(<[^>]*>|\S+):\d+:\d+: error: ", "", text)  # the converter's source locations
    text = re.sub(r"/tmp\S*", "<a temporary folder>", text)
    op = re.search(r"'(tfl\.\w+)' op requires 'output' type .*quant\.uniform.* cast compatible", text)
    if op:
        return f"the TFLite converter fails at a {op.group(1)} of per-channel weights (the quantized axis moves)"
    end = text.find(". ")
    text = text if end < 0 else text[: end + 1]
    return text if len(text) <= 240 else text[:237] + "..."


def support_row(case: LayerCase) -> SupportRow:
    """Builds ``case``'s model and measures its row."""
    model = _model(case)
    return SupportRow(case.name, _quantized(case, model), _tflite(case, model))


def markdown_table(rows: list[SupportRow]) -> str:
    lines = ["| layer | what the sim quantizes (AIMET's default config) | int8 TFLite export (`tflite` config) |",
             "|---|---|---|"]
    lines += [f"| {r.layer} | {r.quantized} | {r.tflite.replace('|', '/')} |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    rows = []
    for case in CASES:
        rows.append(support_row(case))
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
