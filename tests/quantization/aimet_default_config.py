"""AIMET's ``aimet_common/quantsim_config/default_config.json``, written out for the tests (not our preset)."""

# AIMET's own default config supergroups.
AIMET_DEFAULT_SUPERGROUPS = [("Conv", "Relu"), ("Conv", "Clip"), ("Add", "Relu"), ("Gemm", "Relu")]
# AIMET's aimet_common/quantsim_config/default_config.json, as AIMET ships it.
AIMET_DEFAULT_CONFIG = {
    "defaults": {
        "ops": {"is_output_quantized": "True"},
        "params": {"is_quantized": "True", "is_symmetric": "True"},
        "strict_symmetric": "False",
        "per_channel_quantization": "False",
    },
    "params": {"bias": {"is_quantized": "False"}},
    "op_type": {
        "Squeeze": {"is_output_quantized": "False"},
        "Pad": {"is_output_quantized": "False"},
        "Mean": {"is_output_quantized": "False"},
    },
    "supergroups": [{"op_list": list(group)} for group in AIMET_DEFAULT_SUPERGROUPS],
    "model_input": {"is_input_quantized": "True"},
    "model_output": {},
}

# AIMET's aimet_common/quantsim_config/default_config_per_channel.json, as AIMET ships it: per-channel
# weights, unsigned symmetric, and a Conv+BatchNormalization+Relu supergroup besides the default's.
AIMET_PER_CHANNEL_SUPERGROUPS = [("Conv", "Relu"), ("Conv", "Clip"), ("Conv", "BatchNormalization", "Relu"), ("Add", "Relu"), ("Gemm", "Relu")]
AIMET_PER_CHANNEL_CONFIG = {
    "defaults": {
        "ops": {"is_output_quantized": "True"},
        "params": {"is_quantized": "True", "is_symmetric": "True"},
        "strict_symmetric": "False",
        "unsigned_symmetric": "True",
        "per_channel_quantization": "True",
    },
    "params": {"bias": {"is_quantized": "False"}},
    "op_type": {
        "Squeeze": {"is_output_quantized": "False"},
        "Pad": {"is_output_quantized": "False"},
        "Mean": {"is_output_quantized": "False"},
    },
    "supergroups": [{"op_list": list(group)} for group in AIMET_PER_CHANNEL_SUPERGROUPS],
    "model_input": {"is_input_quantized": "True"},
    "model_output": {},
}
