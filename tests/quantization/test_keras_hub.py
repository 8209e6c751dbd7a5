"""KerasHub's transformer layers and backbones: prepared, simulated op by op, exported bit-exact.

Random small configurations (no download): what is pinned is the graph (the layers KerasHub's
composites trace into, the Add of three embeddings, the sliced pooled token, the custom
``gelu_approximate`` activation) and that LiteRT's reference kernels compute the sim exactly.
"""

import keras
import numpy as np
import pytest

import keras_hub  # the test extra installs it

from aimet_tf.export import TFLITE_CONFIG, export_tflite, prepare_model_for_tflite, verify_tflite
from aimet_tf.graph import prepare_model
from aimet_tf.quantization import QuantizationSimModel

T, V = 10, 40


def _tokens(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, T + 1, n)
    mask = (np.arange(T)[None] < lengths[:, None]).astype("int32")
    return (rng.integers(1, V, (n, T)) * mask).astype("int32"), mask


def _exported(model, calibration, check, tmp_path, kernels="reference"):
    prepared = prepare_model_for_tflite(prepare_model(model))
    sim = QuantizationSimModel(prepared, config_file=TFLITE_CONFIG)
    sim.compute_encodings(calibration)
    path = export_tflite(sim, str(tmp_path / "model.tflite"), kernels=kernels)
    return prepared, sim, verify_tflite(sim, path, check)


def test_keras_hub_layers_are_registered_on_first_use():
    from aimet_tf.quantization.registry import get_layer_spec

    table = keras_hub.layers.PositionEmbedding(T)
    table.build((None, T, 8))
    spec = get_layer_spec(table)
    # The table is the output: one per-tensor weight, no output quantizer of its own.
    assert spec.params["position_embeddings"].channel_axes is None and not spec.quantize_output
    sine = get_layer_spec(keras_hub.layers.SinePositionEncoding())
    assert sine.params == {} and sine.quantize_output


@pytest.mark.slow
def test_encoder_of_keras_hub_layers_is_bit_exact_with_the_reference_kernels(tmp_path):
    keras.utils.set_random_seed(1)
    ids = keras.Input((T,), dtype="int32", name="token_ids")
    mask = keras.Input((T,), dtype="int32", name="padding_mask")
    x = keras_hub.layers.ReversibleEmbedding(V, 16)(ids)
    x = keras.layers.Add()([x, keras_hub.layers.SinePositionEncoding()(x)])
    x = keras_hub.layers.TransformerEncoder(32, 2, activation="gelu", normalize_first=True)(x, padding_mask=mask)
    x = keras_hub.layers.TransformerEncoder(32, 2)(x, padding_mask=mask)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(x))
    model = keras.Model([ids, mask], out)

    prepared, sim, report = _exported(model, list(_tokens(48, 1)), list(_tokens(96, 2)), tmp_path)

    kinds = {type(layer).__name__ for layer in prepared.layers}
    assert {"MultiHeadAttention", "LayerNormalization", "ReversibleEmbedding", "SinePositionEncoding"} <= kinds
    assert "TransformerEncoder" not in kinds  # traced into its layers
    # The two encoders' sublayers share names; the second's are renamed, the user's model is not.
    names = [layer.name for layer in prepared.layers]
    assert len(names) == len(set(names))
    assert "transformer_encoder_1_self_attention_layer" in names
    inner = model.get_layer("transformer_encoder_1")._self_attention_layer
    assert inner.name == "self_attention_layer"
    # The attention runs op by op: its softmax output sits on the fixed 1/256 grid.
    probs = sim.get_quant_wrapper_for_layer_name("self_attention_layer").internal_quantizers["attention_probs"]
    assert probs.enabled and probs.encoding.delta == pytest.approx(1 / 256)
    assert report.exact_fraction == 1.0, report.summary()


@pytest.mark.slow
def test_bert_backbone_takes_dicts_and_is_bit_exact_with_the_reference_kernels(tmp_path):
    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=V, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32, max_sequence_length=T)

    def batch(n, seed):
        ids, mask = _tokens(n, seed)
        return {"token_ids": ids, "segment_ids": (np.arange(T)[None] >= T // 2).astype("int32") * mask,
                "padding_mask": mask}

    prepared, sim, report = _exported(backbone, batch(48, 3), batch(96, 4), tmp_path)

    layers = {layer.name: layer for layer in prepared.layers}
    # token + position + segment: two two-input ADDs, as the converter writes them, each quantized.
    assert isinstance(layers["embeddings_add_partial_1"], keras.layers.Add)
    assert len(layers["embeddings_add"].input) == 2
    # gelu_approximate (a keras_hub function, not a keras.activations name) split into its own layer.
    assert any(isinstance(layer, keras.layers.Activation) and "gelu" in layer.name for layer in prepared.layers)
    # Both outputs (sequence and pooled) compared, the inputs fed by name.
    assert report.num_samples == 96
    assert report.exact_fraction == 1.0, report.summary()


def test_reverse_embedding_is_refused_with_the_reason():
    embedding = keras_hub.layers.ReversibleEmbedding(V, 8)
    x = keras.Input((4, 8))
    model = keras.Model(x, embedding(x, reverse=True))
    with pytest.raises(NotImplementedError, match="reverse=True"):
        QuantizationSimModel(model, config_file=TFLITE_CONFIG).compute_encodings(np.zeros((2, 4, 8), "float32"))


def test_decoder_that_needs_the_batch_size_is_refused_with_a_clear_error():
    # TransformerDecoder builds its causal mask with broadcast_to(batch_size, ...): a Functional
    # trace has no batch size, so prepare_model cannot flatten it and says so.
    ids = keras.Input((T, 16))
    model = keras.Model(ids, keras_hub.layers.TransformerDecoder(32, 2)(ids))
    with pytest.raises(ValueError, match=r"cannot trace layer 'transformer_decoder' \(TransformerDecoder\)"):
        prepare_model(model)
