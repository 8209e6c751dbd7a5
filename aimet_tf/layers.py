"""Keras layers that aimet_tf's models need and Keras does not provide.

A vision transformer needs two learned tensors that no built-in Keras layer holds:

* :class:`ClassToken` prepends one learned ``[1, 1, D]`` token (weight ``token``) to a
  ``[N, T, D]`` sequence, giving ``[N, T + 1, D]``;
* :class:`PositionEmbedding` adds one learned ``[1, T, D]`` table (weight ``embeddings``) to a
  ``[N, T, D]`` sequence.

Both are plain ``keras.ops`` code with one weight each, so a quantizer can treat that weight as
a parameter like a kernel.

A text encoder with padded batches needs one more, weightless, layer:

* :class:`PaddingAttentionMask` turns a ``[N, T]`` padding mask (1 / True = real token) into
  the ``[N, T, T]`` boolean ``attention_mask`` that ``keras.layers.MultiHeadAttention`` takes
  (query ``i`` may attend to key ``j`` iff token ``j`` is real).

and one activation that Keras names no string for:

* :func:`gelu_approximate`, GELU in its tanh form (``keras.activations.gelu(x, approximate=True)``),
  for ``keras.layers.Activation``.

All four are registered for serialization under the package name ``aimet_tf``
(``"aimet_tf>ClassToken"``, ...): importing this module is enough for
``keras.saving.load_model`` to rebuild a model that uses them.

Example:
    >>> tokens = keras.Input((49, 64))
    >>> x = ClassToken(name="cls_token")(tokens)            # [N, 50, 64]
    >>> x = PositionEmbedding(name="pos_embed")(x)          # [N, 50, 64]
    >>> padding = keras.Input((32,), dtype="int32")
    >>> mask = PaddingAttentionMask(name="attention_mask")(padding)  # bool [N, 32, 32]
"""

from __future__ import annotations

from typing import Any

import keras

__all__ = ["ClassToken", "PaddingAttentionMask", "PositionEmbedding", "gelu_approximate"]

_PACKAGE = "aimet_tf"
_DEFAULT_STDDEV = 0.02


def _sequence_shape(layer: keras.layers.Layer, input_shape: tuple[int | None, ...]) -> tuple[int | None, int]:
    """Returns ``(T, D)`` of a ``[N, T, D]`` input shape, with ``D`` known.

    Raises:
        ValueError: If the shape is not rank 3 or its last dimension is unknown.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] is None:
        raise ValueError(
            f"{type(layer).__name__} '{layer.name}' expects a sequence of shape [N, T, D] with a "
            f"known D. Received: input shape {shape}."
        )
    return shape[1], int(shape[2])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassToken(keras.layers.Layer):
    """Prepends one learned token to every sequence of a batch: ``[N, T, D] -> [N, T + 1, D]``.

    Output ``[:, 0, :]`` is the token (the same for every example); ``[:, 1:, :]`` is the input.

    Args:
        initializer: Initializer of the ``[1, 1, D]`` weight ``token`` (name, config or
            ``keras.initializers.Initializer``). Default: zeros, as in ViT.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).
    """

    def __init__(self, initializer: Any = "zeros", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Creates ``token`` of shape ``[1, 1, D]``.

        Raises:
            ValueError: If the input is not ``[N, T, D]`` with a known ``D``.
        """
        _, depth = _sequence_shape(self, input_shape)
        self.token = self.add_weight(name="token", shape=(1, 1, depth), initializer=self.initializer)

    def call(self, inputs: Any) -> Any:
        """Returns ``concat([token] * N, inputs)`` along the sequence axis."""
        batch = keras.ops.shape(inputs)[0]
        token = keras.ops.cast(self.token, inputs.dtype)
        token = keras.ops.broadcast_to(token, (batch, 1, keras.ops.shape(self.token)[-1]))
        return keras.ops.concatenate([token, inputs], axis=1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Returns ``[N, T + 1, D]`` (``T + 1`` unknown if ``T`` is)."""
        length, depth = _sequence_shape(self, input_shape)
        return (input_shape[0], None if length is None else length + 1, depth)

    def get_config(self) -> dict[str, Any]:
        """Returns the layer config, with the initializer serialized."""
        config = super().get_config()
        config["initializer"] = keras.initializers.serialize(self.initializer)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PositionEmbedding(keras.layers.Layer):
    """Adds one learned table to every sequence of a batch: ``[N, T, D] -> [N, T, D]``.

    The table (weight ``embeddings``, shape ``[1, T, D]``) is fixed by the first input's shape,
    so ``T`` must be known when the layer is built.

    Args:
        initializer: Initializer of ``embeddings`` (name, config or
            ``keras.initializers.Initializer``). Default: ``RandomNormal(stddev=0.02)``.
        **kwargs: ``keras.layers.Layer`` arguments (``name``, ``dtype``, ...).
    """

    def __init__(self, initializer: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if initializer is None:
            initializer = keras.initializers.RandomNormal(stddev=_DEFAULT_STDDEV)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Creates ``embeddings`` of shape ``[1, T, D]``.

        Raises:
            ValueError: If the input is not ``[N, T, D]`` with known ``T`` and ``D``.
        """
        length, depth = _sequence_shape(self, input_shape)
        if length is None:
            raise ValueError(
                f"PositionEmbedding '{self.name}' needs a known sequence length T to size its "
                f"table. Received: input shape {tuple(input_shape)}."
            )
        self.embeddings = self.add_weight(
            name="embeddings", shape=(1, int(length), depth), initializer=self.initializer
        )

    def call(self, inputs: Any) -> Any:
        """Returns ``inputs + embeddings`` (broadcast over the batch)."""
        return inputs + keras.ops.cast(self.embeddings, inputs.dtype)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Returns the input shape."""
        return tuple(input_shape)

    def get_config(self) -> dict[str, Any]:
        """Returns the layer config, with the initializer serialized."""
        config = super().get_config()
        config["initializer"] = keras.initializers.serialize(self.initializer)
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class PaddingAttentionMask(keras.layers.Layer):
    """Builds a self-attention mask from a padding mask: ``[N, T] -> bool [N, T, T]``.

    ``output[n, i, j] = padding_mask[n, j] != 0``: every query position (real or padding) may
    attend to the real keys of its sequence and to no padding key. Rows of padding queries are
    therefore never fully masked; their outputs are computed but read by nothing that the real
    positions see (the BERT convention). Pass the result as ``attention_mask`` to
    ``keras.layers.MultiHeadAttention``, which may combine it with its own causal mask.

    The layer has no weights. Its input may be any integer, float or bool dtype (non-zero =
    real token); its output is always bool.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)

    def _check(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        shape = tuple(input_shape)
        if len(shape) != 2:
            raise ValueError(
                f"PaddingAttentionMask '{self.name}' expects a padding mask of shape [N, T]. "
                f"Received: input shape {shape}."
            )
        return shape

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        """Checks the input is ``[N, T]`` (no weights to create).

        Raises:
            ValueError: If the input is not rank 2.
        """
        self._check(input_shape)

    def call(self, inputs: Any) -> Any:
        """Returns ``broadcast_to(bool(inputs)[:, None, :], [N, T, T])``."""
        keys = keras.ops.cast(inputs, "bool")
        shape = keras.ops.shape(inputs)
        keys = keras.ops.expand_dims(keys, 1)
        return keras.ops.broadcast_to(keys, (shape[0], shape[1], shape[1]))

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        """Returns ``[N, T, T]``.

        Raises:
            ValueError: If the input is not rank 2.
        """
        batch, length = self._check(input_shape)
        return (batch, length, length)

    def compute_output_spec(self, inputs: Any) -> keras.KerasTensor:
        """A bool ``[N, T, T]`` tensor (the output dtype does not follow the layer's dtype)."""
        return keras.KerasTensor(self.compute_output_shape(inputs.shape), dtype="bool")


@keras.saving.register_keras_serializable(package=_PACKAGE)
def gelu_approximate(x: Any) -> Any:
    """GELU in its tanh form: ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``.

    Keras' ``"gelu"`` string is the exact (erf) form; this is ``keras.activations.gelu(x,
    approximate=True)`` as a named, serializable function. Use it in an
    ``keras.layers.Activation`` layer rather than as a ``Dense(activation=...)``:
    ``aimet_tf.graph.prepare`` splits only Keras' own activation names out of a Dense.
    """
    return keras.activations.gelu(x, approximate=True)
