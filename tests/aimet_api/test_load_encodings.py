"""An encodings file in AIMET Keras's format, with its TF op names, loads into the sim."""

from tests.aimet_api.harness import run_script


def test_aimet_named_encodings_give_the_outputs_of_ours(tmp_path):
    results = run_script("load_encodings", str(tmp_path))
    assert results["imports_changed"] == results["unchanged"]
    result = results["unchanged"]
    # Every activation quantizer of the sim got an AIMET-named encoding (strict load).
    assert result["aimet_names"] == sorted([
        "input_1:0", "re_lu/Relu:0", "conv2d_1/Tanh:0", "add/add:0",
        "global_average_pooling2d/Mean:0", "dense/Softmax:0",
    ])
    assert result["outputs_aimet_file"] == result["outputs_our_file"]
    assert result["outputs_our_file"] == result["outputs_calibrated"]
