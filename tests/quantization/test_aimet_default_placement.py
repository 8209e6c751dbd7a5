"""config_file=None places quantizers exactly as AIMET does with its own default_config.json.

The expected placement is written down from AIMET's rules, not read off the sim: every layer's
output is quantized unless a supergroup fuses it with the next layer (AIMET's default fuses only
Conv+Relu, Conv+Clip, Add+Relu and Gemm+Relu), a Conv/Dense with a built-in activation is one
layer with one output quantizer, the model input is quantized (``model_input``), weights are
quantized and biases are not (``params.bias``).
"""

import json

import keras
import pytest
from keras import layers as L

from aimet_tf import QuantizationSimModel

from tests.quantization.aimet_default_config import AIMET_DEFAULT_CONFIG, AIMET_PER_CHANNEL_CONFIG  # noqa: E402

# Activation tensors AIMET quantizes on _model(), by the rules above (our tensor names).
EXPECTED_ACTIVATIONS = [
    "conv1/input:0",   # the model input (model_input.is_input_quantized)
    "conv1/output:0",  # Conv -> BatchNormalization: no such supergroup in AIMET's default
    "bn1/output:0",    # BatchNormalization -> Relu: no such supergroup either
    "relu1/output:0",  # two consumers: never fused
    "conv2/output:0",  # Conv -> Add: not a supergroup
    # add/output:0 is absent: Add+Relu is a supergroup, only relu2's output is quantized
    "relu2/output:0",
    "gap/output:0",    # GlobalAveragePool: quantized (only Squeeze, Pad, Mean are not)
    "fc/output:0",     # Dense(activation="softmax"): one layer, one output quantizer
]
EXPECTED_CONV_DENSE_PARAMS = ["conv1/kernel:0", "conv2/kernel:0", "fc/kernel:0"]  # no biases


def _model() -> keras.Model:
    inputs = keras.Input((8, 8, 3), name="image")
    x = L.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = L.BatchNormalization(name="bn1")(x)
    x = L.ReLU(name="relu1")(x)
    y = L.Conv2D(4, 1, name="conv2")(x)
    x = L.ReLU(name="relu2")(L.Add(name="add")([x, y]))
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(5, activation="softmax", name="fc")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(params=["aimet_file", "none", "default"])
def config_file(request, tmp_path):
    if request.param == "aimet_file":
        path = tmp_path / "default_config.json"
        path.write_text(json.dumps(AIMET_DEFAULT_CONFIG))
        return str(path)
    return None if request.param == "none" else "default"


def test_placement_is_aimets(config_file):
    sim = QuantizationSimModel(_model(), config_file=config_file)
    assert [name for name, _ in sim.activation_quantizers()] == EXPECTED_ACTIVATIONS
    params = [name for name, _, _ in sim.param_quantizers()]
    assert [n for n in params if n.split("/")[0] in ("conv1", "conv2", "fc")] == EXPECTED_CONV_DENSE_PARAMS


def test_default_fused_preset_fuses_conv_bn():
    """The named richer preset, for contrast: Conv+BN+Relu is one group, one quantizer after it."""
    names = [n for n, _ in QuantizationSimModel(_model(), config_file="default_fused").activation_quantizers()]
    assert "conv1/output:0" not in names and "bn1/output:0" not in names
    assert "relu1/output:0" in names


def test_aimet_per_channel_config_file(tmp_path):
    """AIMET's default_config_per_channel.json, loaded from a file as an AIMET user passes it:
    Conv+BN+Relu is a supergroup (no quantizer after conv1 or bn1), weights are per channel."""
    path = tmp_path / "default_config_per_channel.json"
    path.write_text(json.dumps(AIMET_PER_CHANNEL_CONFIG))
    sim = QuantizationSimModel(_model(), config_file=str(path))
    expected = [n for n in EXPECTED_ACTIVATIONS if n not in ("conv1/output:0", "bn1/output:0")]
    assert [name for name, _ in sim.activation_quantizers()] == expected
    kernels = {name: q for name, q, _ in sim.param_quantizers() if name.endswith("/kernel:0")}
    assert sorted(kernels) == EXPECTED_CONV_DENSE_PARAMS
    assert all(q.per_channel for q in kernels.values())
    assert all(q.use_unsigned_symmetric for _, q in sim.activation_quantizers())
