"""Tests for aimet_tf.quantization.config: AIMET quantsim config loading and op-type mapping."""

import copy
import dataclasses
import json
import pathlib

import keras
import pytest
from hypothesis import HealthCheck, given, settings

from aimet_tf.quantization import config as config_lib
from aimet_tf.graph import catalogue
from aimet_tf.testing import fuzzing
from aimet_tf.quantization.config import (
    KNOWN_OP_TYPES,
    PRESETS,
    HardwareConfig,
    HardwareConfigError,
    OpRule,
    ParamRule,
    load_config,
    onnx_op_type,
)

PRESET_DIR = pathlib.Path(config_lib.__file__).parent / "presets"

from tests.quantization.aimet_default_config import AIMET_DEFAULT_CONFIG, AIMET_DEFAULT_SUPERGROUPS  # noqa: E402
BN_AND_CLIP_SUPERGROUPS = [
    ("Conv", "BatchNormalization"),
    ("Conv", "BatchNormalization", "Relu"),
    ("Conv", "BatchNormalization", "Clip"),
    ("Conv", "Clip"),
    ("Gemm", "Clip"),
    ("Add", "Clip"),
]

LAYERED_CONFIG = {
    "defaults": {
        "ops": {"is_output_quantized": "True", "is_symmetric": "False"},
        "params": {"is_quantized": "True", "is_symmetric": "False"},
        "per_channel_quantization": "False",
    },
    "params": {"weight": {"is_symmetric": "True"}, "bias": {"is_quantized": "False"}},
    "op_type": {
        "Conv": {
            "is_input_quantized": "True",
            "is_symmetric": "True",
            "per_channel_quantization": "True",
            "params": {"bias": {"is_quantized": "True"}},
        },
        "Pad": {"is_output_quantized": "False"},
    },
    "supergroups": [],
    "model_input": {"is_input_quantized": "False"},
    "model_output": {"is_output_quantized": "True"},
}


# --- presets -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [None, "default", str(PRESET_DIR / "default.json"),
                                  PRESET_DIR / "default.json"])
def test_default_preset_is_aimets_default_config(spec):
    """``None`` / "default" resolve exactly like AIMET's default_config.json (its facts)."""
    config = load_config(spec)
    conv = config.op_rule("Conv")
    assert conv.params["weight"] == ParamRule(quantized=True, symmetric=True, per_channel=False)
    assert conv.params["bias"].quantized is False
    assert conv.symmetric is False and conv.output_quantized is True
    assert conv.input_quantized is False
    assert config.model_input_quantized is True
    assert config.model_output_quantized is None
    assert config.strict_symmetric is False and config.unsigned_symmetric is True
    for op_type in ("Pad", "Squeeze", "Mean"):
        assert config.op_rule(op_type).output_quantized is False
    assert list(config.supergroups) == AIMET_DEFAULT_SUPERGROUPS
    assert config == load_config(AIMET_DEFAULT_CONFIG)


def test_default_fused_preset_adds_bn_and_clip_supergroups():
    base, fused = load_config("default"), load_config("default_fused")
    assert set(fused.supergroups) == set(AIMET_DEFAULT_SUPERGROUPS) | set(BN_AND_CLIP_SUPERGROUPS)
    assert dataclasses.replace(fused, supergroups=base.supergroups) == base


def test_default_per_channel_preset_is_the_fused_default_with_per_channel_weights():
    """default_fused with per-channel weights for these op types only (other layers' weights
    and everything else as in ``default_fused``)."""
    base, config = load_config("default_fused"), load_config("default_per_channel")
    for op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul", "PRelu"):
        assert config.op_rule(op_type).params["weight"].per_channel is True, op_type
        assert base.op_rule(op_type).params["weight"].per_channel is False, op_type
    for op_type in (None, "LayerNormalization", "BatchNormalization", "Pad", "Mean", "Relu"):
        assert config.op_rule(op_type) == base.op_rule(op_type), op_type
    assert config.supergroups == base.supergroups
    assert config.model_input_quantized is base.model_input_quantized


@pytest.mark.parametrize("spec", ["htp", str(PRESET_DIR / "htp.json")])
def test_htp_preset_is_per_channel(spec):
    config = load_config(spec)
    assert config.op_rule("Conv").params["weight"].per_channel is True
    assert config.op_rule(None).params["weight"].per_channel is True
    # TFLite keeps FullyConnected weights as [out, in]: HTP's Gemm rule is per-tensor.
    assert config.op_rule("Gemm").params["weight"].per_channel is False
    assert config.op_rule("LayerNormalization").params["weight"].symmetric is False
    assert config.op_rule("BatchNormalization").params["running_mean"].quantized is False
    assert config.op_rule("MaxPool").output_quantized is False
    assert config.strict_symmetric is False and config.unsigned_symmetric is False
    assert config.model_input_quantized is True
    for group in BN_AND_CLIP_SUPERGROUPS + [("Conv", "BatchNormalization", "HardSwish")]:
        assert group in config.supergroups


@pytest.mark.parametrize("name", config_lib.PRESETS)
def test_presets_are_aimet_formatted_json(name):
    raw = json.loads((PRESET_DIR / f"{name}.json").read_text())
    assert set(raw) == {"defaults", "params", "op_type", "supergroups", "model_input",
                        "model_output"}
    # AIMET's loader accepts only the strings, so the shipped files must use them.
    assert raw["defaults"]["params"]["is_symmetric"] == "True"
    assert raw["params"]["bias"]["is_quantized"] == "False"


def test_config_passes_through_and_is_frozen():
    config = load_config("default")
    assert load_config(config) is config
    assert load_config("default") == config
    assert hash(load_config("default")) == hash(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.strict_symmetric = True
    with pytest.raises(TypeError):
        config.op_rules["Conv"] = config.default_rule
    with pytest.raises(TypeError):
        config.default_rule.params["weight"] = None


def test_mapping_input_is_not_modified():
    raw = copy.deepcopy(LAYERED_CONFIG)
    load_config(raw)
    assert raw == LAYERED_CONFIG


def test_file_path_loads_like_mapping(tmp_path):
    path = tmp_path / "my_config.json"
    path.write_text(json.dumps(LAYERED_CONFIG))
    assert load_config(path) == load_config(LAYERED_CONFIG)
    assert load_config(str(path)) == load_config(LAYERED_CONFIG)


# --- precedence ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "op_type, read, expected",
    [
        # defaults.params is_symmetric False, overridden by params.weight.
        (None, lambda r: r.params["weight"].symmetric, True),
        # params.bias turns bias off over defaults.params.
        (None, lambda r: r.params["bias"].quantized, False),
        # op_type.Conv.params.bias turns it back on over params.bias.
        ("Conv", lambda r: r.params["bias"].quantized, True),
        # op_type entries inherit what they do not set.
        ("Conv", lambda r: r.params["weight"].symmetric, True),
        ("Conv", lambda r: r.params["weight"].quantized, True),
        (None, lambda r: r.params["weight"].per_channel, False),
        ("Conv", lambda r: r.params["weight"].per_channel, True),
        ("Conv", lambda r: r.params["bias"].per_channel, True),
        (None, lambda r: r.input_quantized, False),
        ("Conv", lambda r: r.input_quantized, True),
        (None, lambda r: r.symmetric, False),
        ("Conv", lambda r: r.symmetric, True),
        ("Conv", lambda r: r.output_quantized, True),
        ("Pad", lambda r: r.output_quantized, False),
        ("Pad", lambda r: r.params["weight"].symmetric, True),
        ("Relu", lambda r: r.output_quantized, True),
    ],
)
def test_precedence_defaults_params_op_type(op_type, read, expected):
    assert read(load_config(LAYERED_CONFIG).op_rule(op_type)) is expected


def test_unknown_op_type_gets_defaults():
    config = load_config(LAYERED_CONFIG)
    assert config.op_rule("Relu") == config.op_rule(None) == config.default_rule
    assert config.op_rule("Conv") != config.default_rule


def test_model_input_and_output_override():
    config = load_config(LAYERED_CONFIG)
    assert config.model_input_quantized is False
    assert config.model_output_quantized is True
    empty = load_config({**LAYERED_CONFIG, "model_input": {}, "model_output": {}})
    assert empty.model_input_quantized is None and empty.model_output_quantized is None


def test_named_param_types_reach_every_op_rule():
    raw = copy.deepcopy(LAYERED_CONFIG)
    raw["params"]["gamma"] = {"is_quantized": "False"}
    raw["op_type"]["BatchNormalization"] = {"params": {"moving_mean": {"is_quantized": "False"}}}
    config = load_config(raw)
    for op_type in (None, "Conv", "BatchNormalization"):
        assert config.op_rule(op_type).params["gamma"].quantized is False
    assert "moving_mean" in config.op_rule("BatchNormalization").params
    assert "moving_mean" not in config.op_rule("Conv").params
    # A type nobody names falls back to defaults.params with the op's per-channel setting.
    assert config.op_rule("Conv").param_rule("beta") == ParamRule(True, False, True)
    assert config.op_rule(None).param_rule("beta") == ParamRule(True, False, False)


def test_param_rule_without_fallback_raises():
    rule = OpRule(True, True, False, {"weight": ParamRule(True, True, False)})
    assert rule.param_rule("weight").quantized is True
    with pytest.raises(KeyError, match="No rule for parameter type 'gamma'"):
        rule.param_rule("gamma")


@pytest.mark.parametrize("value, expected", [("True", True), (True, True), ("False", False),
                                             (False, False)])
def test_booleans_accept_strings_and_json_booleans(value, expected):
    config = load_config({"defaults": {"ops": {"is_symmetric": value},
                                       "params": {"is_quantized": value},
                                       "strict_symmetric": value}})
    assert config.op_rule(None).symmetric is expected
    assert config.op_rule(None).params["weight"].quantized is expected
    assert config.strict_symmetric is expected


def test_missing_sections_use_aimet_fallbacks():
    config = load_config({})
    rule = config.op_rule(None)
    assert (rule.input_quantized, rule.output_quantized, rule.symmetric) == (False, False, False)
    assert rule.params["weight"] == ParamRule(False, False, False)
    assert config.strict_symmetric is False and config.unsigned_symmetric is True
    assert config.supergroups == () and config.supported_kernels == ()
    assert config.model_input_quantized is None


def test_supported_kernels_keep_integer_pairs_in_order():
    kernels = [
        {"activation": {"bitwidth": 16, "dtype": "int"}, "param": {"bitwidth": 8, "dtype": "int"}},
        {"activation": {"bitwidth": 8, "dtype": "int"}, "param": {"bitwidth": 4, "dtype": "int"}},
        {"activation": {"bitwidth": 16, "dtype": "float"},
         "param": {"bitwidth": 16, "dtype": "float"}},
    ]
    config = load_config({"defaults": {"supported_kernels": kernels}})
    assert config.supported_kernels == ((16, 8), (8, 4))


def test_aimet_keys_without_effect_are_accepted():
    raw = copy.deepcopy(LAYERED_CONFIG)
    raw["defaults"]["hw_version"] = "V73"
    raw["supergroup_pass_list"] = ["MatmulAdd"]
    raw["op_type"]["Softmax"] = {
        "encoding_constraints": {"min": 0.0, "max": 1.0},
        "supported_kernels": [{"activation": {"bitwidth": 16, "dtype": "int"}}],
    }
    config = load_config(raw)
    assert config.op_rule("Softmax") == config.default_rule
    assert config.op_rule("Conv") == load_config(LAYERED_CONFIG).op_rule("Conv")


# --- errors --------------------------------------------------------------------------------------


def _with(path, value):
    """Returns LAYERED_CONFIG with the value at ``path`` (a tuple of keys) replaced."""
    raw = copy.deepcopy(LAYERED_CONFIG)
    section = raw
    for key in path[:-1]:
        section = section[key]
    section[path[-1]] = value
    return raw


@pytest.mark.parametrize(
    "raw, match",
    [
        (_with(("defaults", "ops", "is_symmetric"), "yes"),
         r'Expected "True" or "False".*defaults\.ops\.is_symmetric=\'yes\''),
        (_with(("op_type", "Conv", "per_channel_quantization"), 1),
         r"op_type\.Conv\.per_channel_quantization=1"),
        (_with(("model_input", "is_input_quantized"), "true"),
         r"model_input\.is_input_quantized='true'"),
        (_with(("op_type", "Conv", "params", "weight"), {"is_quantised": "True"}),
         r"Unknown key 'is_quantised' in op_type\.Conv\.params\.weight\. Expected keys among "
         r"\['is_quantized', 'is_symmetric'\]"),
        (_with(("supergroup",), []), r"Unknown key 'supergroup' in <config>.*'supergroups'"),
        (_with(("defaults", "per_channel"), "True"), r"Unknown key 'per_channel' in defaults\."),
        (_with(("defaults", "ops", "is_quantized"), "True"),
         r"Unknown key 'is_quantized' in defaults\.ops"),
        (_with(("model_output", "is_input_quantized"), "True"),
         r"Unknown key 'is_input_quantized' in model_output.*\['is_output_quantized'\]"),
        (_with(("op_type", "Conv", "bitwidth"), 8), r"Unknown key 'bitwidth' in op_type\.Conv\."),
        (_with(("supergroups",), [{"op_list": ["Conv"]}]),
         r"supergroups\[0\]\.op_list is too short\. Expected at least 2"),
        (_with(("supergroups",), [{"op_list": ["Conv", 3]}]),
         r"supergroups\[0\]\.op_list\[1\]\. Expected a non-empty op type string.*=3"),
        (_with(("supergroups",), [{"op_list": "Conv,Relu"}]),
         r"supergroups\[0\]\.op_list\. Expected a JSON list"),
        (_with(("supergroups",), [{"ops": ["Conv", "Relu"]}]),
         r"Unknown key 'ops' in supergroups\[0\]"),
        (_with(("supergroups",), [{}]), r"Missing key 'op_list' in supergroups\[0\]"),
        (_with(("supergroups",), {"op_list": ["Conv", "Relu"]}),
         r"Wrong type at supergroups\. Expected a JSON list"),
        (_with(("defaults",), ["ops"]), r"Wrong type at defaults\. Expected a JSON object"),
        (_with(("op_type", "Conv"), ["True"]), r"Wrong type at op_type\.Conv\. Expected a JSON"),
        (_with(("defaults", "supported_kernels"),
               [{"activation": {"bitwidth": 3, "dtype": "int"},
                 "param": {"bitwidth": 8, "dtype": "int"}}]),
         r"defaults\.supported_kernels\[0\]\.activation\.bitwidth\. Expected one of "
         r"\[4, 8, 16, 32\]"),
        (_with(("defaults", "supported_kernels"),
               [{"activation": {"bitwidth": 8, "dtype": "fp"},
                 "param": {"bitwidth": 8, "dtype": "int"}}]),
         r"activation\.dtype\. Expected one of \['int', 'float'\]"),
        (_with(("defaults", "supported_kernels"),
               [{"activation": {"bitwidth": 8, "dtype": "int"}}]),
         r"Missing key 'param' in defaults\.supported_kernels\[0\]"),
        (_with(("op_type", "Softmax"), {"encoding_constraints": {"min": "0"}}),
         r"op_type\.Softmax\.encoding_constraints\.min\. Expected a number"),
        (_with(("defaults", "hw_version"), 73), r"defaults\.hw_version\. Expected a string"),
        (_with(("supergroup_pass_list",), "MatmulAdd"),
         r"supergroup_pass_list\. Expected a JSON list"),
    ],
)
def test_invalid_config_names_the_problem(raw, match):
    with pytest.raises(HardwareConfigError, match=match):
        load_config(raw)


def test_missing_file_names_presets():
    with pytest.raises(FileNotFoundError,
                       match=r"Expected a preset name \('default', 'default_fused', 'default_per_channel', 'htp', 'tflite'\).*config='htp_v99'"):
        load_config("htp_v99")


def test_invalid_json_reports_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "defaults": {"ops": {}},\n  "params": {\n}')
    with pytest.raises(HardwareConfigError, match=r"broken\.json.* at line 4, column 2"):
        load_config(path)


def test_json_file_must_hold_an_object(tmp_path):
    path = tmp_path / "list.json"
    path.write_text('["defaults"]')
    with pytest.raises(HardwareConfigError,
                       match=r"Wrong type at <config>\. Expected a JSON object"):
        load_config(path)


def test_wrong_argument_type_is_a_type_error():
    with pytest.raises(TypeError, match=r"Received: config=42 \(type int\)"):
        load_config(42)


def test_hand_built_config_validates_supergroups():
    with pytest.raises(HardwareConfigError, match="too short"):
        HardwareConfig(False, True, (("Conv",),), None, None, ())
    with pytest.raises(HardwareConfigError, match="Expected a JSON list"):
        HardwareConfig(False, True, ("ConvRelu",), None, None, ())
    config = HardwareConfig(False, True, [["Conv", "Relu"]], True, None, [(8, 8)])
    assert config.supergroups == (("Conv", "Relu"),)
    assert config.op_rule("Conv").params["weight"].quantized is False


# --- onnx_op_type --------------------------------------------------------------------------------

L = keras.layers


class _MyConv(L.Conv2D):
    pass


@pytest.mark.parametrize(
    "make_layer, expected",
    [
        (lambda: L.Conv1D(2, 3), "Conv"),
        (lambda: L.Conv2D(2, 3), "Conv"),
        (lambda: L.Conv2D(2, 3, activation="relu"), "Conv"),
        (lambda: L.Conv3D(2, 3), "Conv"),
        (lambda: L.DepthwiseConv2D(3), "Conv"),
        (lambda: L.SeparableConv2D(2, 3), "Conv"),
        (lambda: _MyConv(2, 3), "Conv"),
        (lambda: L.Conv2DTranspose(2, 3), "ConvTranspose"),
        (lambda: L.Conv1DTranspose(2, 3), "ConvTranspose"),
        (lambda: L.Dense(2), "Gemm"),
        (lambda: L.Dense(2, activation="relu"), "Gemm"),
        (lambda: L.BatchNormalization(), "BatchNormalization"),
        (lambda: L.ReLU(), "Relu"),
        (lambda: L.ReLU(max_value=6.0), "Clip"),
        (lambda: L.ReLU(max_value=1.0), "Clip"),
        (lambda: L.ReLU(negative_slope=0.1), "LeakyRelu"),
        (lambda: L.ReLU(negative_slope=0.1, max_value=6.0), None),
        (lambda: L.ReLU(threshold=0.5), None),
        (lambda: L.Activation("relu"), "Relu"),
        (lambda: L.Activation("relu6"), "Clip"),
        (lambda: L.Activation("sigmoid"), "Sigmoid"),
        (lambda: L.Activation("tanh"), "Tanh"),
        (lambda: L.Activation("softmax"), "Softmax"),
        (lambda: L.Activation("hard_swish"), "HardSwish"),
        (lambda: L.Activation("linear"), "Identity"),
        (lambda: L.Activation("swish"), None),
        (lambda: L.Activation(lambda x: x * 2.0), None),
        (lambda: L.LeakyReLU(), "LeakyRelu"),
        (lambda: L.PReLU(), "PRelu"),
        (lambda: L.Softmax(), "Softmax"),
        (lambda: L.Add(), "Add"),
        (lambda: L.Subtract(), "Sub"),
        (lambda: L.Multiply(), "Mul"),
        (lambda: L.Concatenate(), "Concat"),
        (lambda: L.Average(), "Mean"),
        (lambda: L.MaxPooling1D(), "MaxPool"),
        (lambda: L.MaxPooling2D(), "MaxPool"),
        (lambda: L.AveragePooling2D(2), "AveragePool"),
        (lambda: L.AveragePooling3D(2), "AveragePool"),
        (lambda: L.GlobalAveragePooling2D(), "GlobalAveragePool"),
        (lambda: L.GlobalAveragePooling1D(), "GlobalAveragePool"),
        (lambda: L.GlobalMaxPooling2D(), "GlobalMaxPool"),
        (lambda: L.Flatten(), "Flatten"),
        (lambda: L.Reshape((4,)), "Reshape"),
        (lambda: L.ZeroPadding2D(), "Pad"),
        (lambda: L.ZeroPadding1D(), "Pad"),
        (lambda: L.UpSampling2D(), "Resize"),
        (lambda: L.Dropout(0.5), "Dropout"),
        (lambda: L.SpatialDropout2D(0.5), "Dropout"),
        (lambda: L.LayerNormalization(), "LayerNormalization"),
        (lambda: L.Embedding(10, 4), "Gather"),
        (lambda: L.MultiHeadAttention(2, 4), "MultiHeadAttention"),
        (lambda: L.LSTM(4), None),
        (lambda: L.Lambda(lambda x: x), None),
        (lambda: L.InputLayer(shape=(3,)), None),
        (lambda: keras.Sequential([L.Dense(2)]), None),
    ],
)
def test_onnx_op_type(make_layer, expected):
    assert onnx_op_type(make_layer()) == expected


@pytest.mark.parametrize(
    "apply, expected",
    [
        (lambda x: x + x, "Add"),
        (lambda x: x - 1.0, "Sub"),
        (lambda x: x * 2.0, "Mul"),
        (lambda x: keras.ops.relu(x), "Relu"),
        (lambda x: keras.ops.relu6(x), "Clip"),
        (lambda x: keras.ops.sum(x), None),
    ],
)
def test_onnx_op_type_of_keras_ops_nodes(apply, expected):
    output = apply(keras.Input((3,)))
    assert onnx_op_type(output._keras_history.operation) == expected


# --- names, kernels and fuzzing (issue 12) ------------------------------------------------------


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"op_type": {"Cnov": {"is_output_quantized": "False"}}},
         r"Unknown op type 'Cnov' in op_type\. Expected an ONNX op name .*Received: 'Cnov'\. "
         r"Did you mean 'Conv'\?"),
        ({"op_type": {"conv": {}}}, r"Unknown op type 'conv' in op_type\. .*Did you mean 'Conv'"),
        ({"params": {"wieght": {"is_quantized": "False"}}},
         r"Unknown parameter type 'wieght' in params\. Expected one of \['alpha', 'beta', 'bias', "
         r".*Received: 'wieght'\. Did you mean 'weight'\?"),
        ({"op_type": {"Conv": {"params": {"bais": {"is_quantized": "True"}}}}},
         r"Unknown parameter type 'bais' in op_type\.Conv\.params\. .*Did you mean 'bias'\?"),
        ({"supergroups": [{"op_list": ["Conv", "Rleu"]}]},
         r"Unknown op type 'Rleu' in supergroups\[0\]\.op_list\[1\]\. .*Did you mean 'Relu'"),
        ({"op_type": {"Zzzzzz": {}}},
         r"Received: 'Zzzzzz'\. Check the spelling\. .*load_config\(config, extra_op_types=\[name\]\)"),
    ],
)
def test_misspelt_names_are_errors_with_a_suggestion(raw, match):
    with pytest.raises(HardwareConfigError, match=match):
        load_config(raw)


def test_extra_op_types_accept_a_custom_op_name():
    raw = {"op_type": {"MyNpuOp": {"is_output_quantized": "True"}},
           "supergroups": [{"op_list": ["Conv", "MyNpuOp"]}]}
    with pytest.raises(HardwareConfigError, match="MyNpuOp"):
        load_config(raw)
    config = load_config(raw, extra_op_types=["MyNpuOp"])
    assert config.op_rule("MyNpuOp").output_quantized is True
    assert config.supergroups == (("Conv", "MyNpuOp"),)


def test_every_name_the_presets_and_layer_mapping_use_is_known():
    for name in PRESETS:
        raw = json.loads((PRESET_DIR / f"{name}.json").read_text())
        used = set(raw.get("op_type", {})) | {op for g in raw.get("supergroups", []) for op in g["op_list"]}
        assert used <= KNOWN_OP_TYPES, used - KNOWN_OP_TYPES
    mapped = {op for _, op in catalogue._LAYER_OP_TYPES}
    mapped |= set(catalogue._ACTIVATION_OP_TYPES.values()) | set(catalogue._KERAS_OP_TYPES.values())
    assert mapped <= KNOWN_OP_TYPES, mapped - KNOWN_OP_TYPES


def test_op_supported_kernels_are_kept_and_checked():
    kernels = [{"activation": {"bitwidth": 16, "dtype": "int"}}]
    config = load_config({"op_type": {"Softmax": {"supported_kernels": kernels}},
                          "defaults": {"supported_kernels": [
                              {"activation": {"bitwidth": 8, "dtype": "int"},
                               "param": {"bitwidth": 4, "dtype": "int"}}]}})
    assert config.op_supported_kernels["Softmax"] == ((16, None),)
    config.check_bitwidths(8, 4, ["Conv", None])  # no Softmax in the model: allowed
    with pytest.raises(HardwareConfigError, match=r"'Softmax' layers.*Received: default_output_bw=8"):
        config.check_bitwidths(8, 4, ["Softmax"])
    with pytest.raises(HardwareConfigError, match=r"Expected \(default_output_bw, default_param_bw\) "
                                                   r"in defaults\.supported_kernels \[\(8, 4\)\]\. "
                                                   r"Received: default_output_bw=8, default_param_bw=8"):
        config.check_bitwidths(8, 8)
    load_config({}).check_bitwidths(16, 2, ["Softmax"])  # no kernels listed: anything goes


_JSON = fuzzing.json_values(
    scalars=["True", "False", "Conv", "Relu", "weight", "bias", "int", "float", "", 4, 8, 16],
    keys=["ops", "params", "op_type", "supergroups", "op_list", "defaults", "is_quantized",
          "is_symmetric", "supported_kernels", "activation", "param", "bitwidth", "dtype", "Conv",
          "weight", "model_input", "is_input_quantized", "encoding_constraints", "min",
          "hw_version"],
    max_leaves=14,
)
_PRESET_DOCS = [json.loads((PRESET_DIR / f"{name}.json").read_text()) for name in PRESETS]


def _load_or_own_error(raw, folder: pathlib.Path) -> None:
    """Loads ``raw`` as the content of a JSON config file; only HardwareConfigError may leave."""
    path = folder / "fuzzed.json"
    path.write_text(json.dumps(raw))
    try:
        config = load_config(path)
    except HardwareConfigError as error:
        assert str(error)
        return
    config.check_bitwidths(8, 8, ["Conv", "Softmax", None])  # may raise HardwareConfigError


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fuzzing.mutated(_PRESET_DOCS, _JSON))
def test_fuzzed_configs_end_in_own_error_type(tmp_path_factory, raw):
    try:
        _load_or_own_error(raw, tmp_path_factory.getbasetemp())
    except HardwareConfigError:
        pass


@settings(max_examples=200, deadline=None)
@given(_JSON)
def test_random_json_configs_end_in_own_error_type(tmp_path_factory, raw):
    try:
        _load_or_own_error(raw, tmp_path_factory.getbasetemp())
    except HardwareConfigError:
        pass
