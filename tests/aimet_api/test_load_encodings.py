"""Export writes AIMET Keras's TF tensor names for activations, and the file loads back."""

from tests.aimet_api.harness import run_script


def test_aimet_named_encodings_give_the_outputs_of_ours(tmp_path):
    results = run_script("load_encodings", str(tmp_path))
    assert results["imports_changed"] == results["unchanged"]
    result = results["unchanged"]
    # Every activation quantizer of the sim is written under the name AIMET Keras gives its
    # tensor (the TF op the layer ends in), and the file loads back: AIMET's load is non-strict,
    # so a quantizer the names missed would be disabled and change the outputs.
    assert result["aimet_names"] == sorted([
        "input_1:0", "re_lu/Relu:0", "conv2d_1/Tanh:0", "add/add:0",
        "global_average_pooling2d/Mean:0", "dense/Softmax:0",
    ])
    assert result["outputs_loaded"] == result["outputs_calibrated"]
