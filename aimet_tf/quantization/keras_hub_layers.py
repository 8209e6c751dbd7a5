"""How the layers of ``keras_hub`` (KerasHub, if installed) are quantized.

Imported by the registry the first time it meets a layer whose class lives in ``keras_hub``, so
aimet_tf never imports keras_hub (and TensorFlow Text) for users who do not have it.

What needs a registration here is only what ``prepare_model`` keeps whole: composite layers
(``TransformerEncoder``, ``TokenAndPositionEmbedding``, the backbones) are traced into Keras
layers and ``keras.ops`` calls, their ``MultiHeadAttention`` then runs op by op as any other
(``transformer.attention_forward``).

* ``PositionEmbedding`` outputs its learned ``[T, D]`` table (sliced to the input's length and
  broadcast over the batch): a per-tensor weight, and no output quantizer of its own, since the
  output is the quantized table itself (the converter writes it as one int8 constant).
* ``SinePositionEncoding`` outputs a constant computed from the input's shape: its output is
  quantized, as the converter's int8 constant is.
* ``ReversibleEmbedding`` is an ``Embedding`` (its base class's spec) on ``reverse=False``; the
  reverse call (logits = x @ table^T, a language-model head) is refused.
"""

from __future__ import annotations

from keras_hub.src.layers.modeling.position_embedding import PositionEmbedding
from keras_hub.src.layers.modeling.reversible_embedding import ReversibleEmbedding
from keras_hub.src.layers.modeling.sine_position_encoding import SinePositionEncoding

import keras

from aimet_tf.quantization.registry import ParamSpec, get_layer_spec, register_layer

__all__: list[str] = []


def _embedding_forward(layer, args, kwargs, training):
    """Refuses the reverse call; the forward call runs as a quantized ``Embedding``."""
    if kwargs.get("reverse", False) or (len(args) > 1 and args[1]):
        raise NotImplementedError(
            f"ReversibleEmbedding {layer.name!r} called with reverse=True (x @ table^T, a language-model "
            "head) is not simulated. Expected reverse=False (a token lookup). Received: reverse=True"
        )
    return None


register_layer(PositionEmbedding, params={"position_embeddings": ParamSpec("weight", None)}, quantize_output=False)
register_layer(SinePositionEncoding, params={})
register_layer(ReversibleEmbedding, params=get_layer_spec(keras.layers.Embedding(2, 2)).params, forward=_embedding_forward)
