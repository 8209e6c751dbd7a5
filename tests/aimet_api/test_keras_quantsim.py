"""aimet_tf.keras.quantsim: AIMET's QuantizationSimModel signature, defaults and non-strict
load_encodings_to_sim on the native implementation."""

import inspect

import numpy as np
import pytest

import aimet_tf
from aimet_tf.common.defs import QuantizationDataType, QuantScheme
from aimet_tf.keras.quantsim import QuantizationSimModel
from aimet_tf.testing import models

AIMET_SIGNATURE = [
    ("model", inspect.Parameter.empty),
    ("quant_scheme", "tf_enhanced"),
    ("rounding_mode", "nearest"),
    ("default_output_bw", 8),
    ("default_param_bw", 8),
    ("in_place", False),
    ("config_file", None),
    ("default_data_type", QuantizationDataType.int),
]


def test_signature_and_defaults_are_aimets():
    params = inspect.signature(QuantizationSimModel.__init__).parameters
    assert [(p.name, p.default) for p in list(params.values())[1:]] == AIMET_SIGNATURE
    export = inspect.signature(QuantizationSimModel.export).parameters
    assert [(p.name, p.default) for p in list(export.values())[1:5]] == [
        ("path", inspect.Parameter.empty), ("filename_prefix", inspect.Parameter.empty),
        ("custom_objects", None), ("convert_to_pb", True),
    ]


def test_is_the_native_sim_with_aimets_default_scheme():
    sim = QuantizationSimModel(models.dense_model())
    assert isinstance(sim, aimet_tf.QuantizationSimModel)
    assert sim.quant_scheme is QuantScheme.post_training_tf_enhanced
    assert aimet_tf.QuantizationSimModel(models.dense_model()).quant_scheme is QuantScheme.post_training_auto


def test_float_data_type_is_refused_clearly():
    with pytest.raises(ValueError, match=r"float \(float16\) simulation is not supported.*QuantizationDataType.float"):
        QuantizationSimModel(models.dense_model(), default_data_type=QuantizationDataType.float)
    with pytest.raises(ValueError, match="Expected default_data_type=QuantizationDataType.int. Received: "):
        QuantizationSimModel(models.dense_model(), default_data_type=QuantizationDataType.undefined)


def test_load_encodings_to_sim_is_non_strict_as_aimets():
    data = np.random.default_rng(0).normal(size=(32, 10)).astype(np.float32)
    source = QuantizationSimModel(models.dense_model(), config_file="htp")
    source.compute_encodings(data)
    encodings = source.get_encodings_dict(activation_names="aimet_tf")  # the sim's own names
    dropped = sorted(encodings["activation_encodings"])[0]
    del encodings["activation_encodings"][dropped]

    target = QuantizationSimModel(models.dense_model(), config_file="htp")
    target.load_encodings_to_sim(encodings)
    states = dict(target.activation_quantizers())
    assert not states[dropped].is_enabled()
    assert all(q.is_enabled() and q.is_encoding_valid() for n, q in states.items() if n != dropped)
    with pytest.raises(ValueError, match="Encodings are missing for 1 enabled quantizers"):
        QuantizationSimModel(models.dense_model(), config_file="htp").load_encodings_to_sim(encodings, strict=True)


def test_qc_quantize_wrapper_is_the_wrapper_class():
    from aimet_tf.keras.quant_sim.qc_quantize_wrapper import QcQuantizeWrapper
    from aimet_tf.keras.quantsim import QuantizationSimModel
    from aimet_tf.testing.models import conv_bn_relu_model

    sim = QuantizationSimModel(conv_bn_relu_model())
    wrappers = [layer for layer in sim.model.layers if isinstance(layer, QcQuantizeWrapper)]
    assert wrappers and wrappers == list(sim.quant_wrappers())
