"""A small BERT-style text encoder (sequence classifier), built from standard Keras layers.

:func:`bert_encoder` builds a Functional model with two inputs, ``token_ids`` (int32
``[N, T]``) and ``padding_mask`` (int32 or bool ``[N, T]``, 1 / True = real token, padding at
the end), and ``[N, classes]`` logits:

* embeddings: ``token_embed`` (``Embedding(vocab_size, dim)``), learned position embeddings
  ``pos_embed`` (:class:`aimet_tf.layers.PositionEmbedding`, one ``[1, T, dim]`` table) and
  ``embed_ln`` (LayerNormalization);
* ``attention_mask`` (:class:`aimet_tf.layers.PaddingAttentionMask`): the bool ``[N, T, T]``
  mask ``mask[n, i, j] = padding_mask[n, j]``, shared by every block;
* ``depth`` post-norm BERT blocks, block ``i`` (from 1) made of
  ``block{i}_mha`` (MultiHeadAttention, self-attention with ``attention_mask``; with
  ``causal=True`` also ``use_causal_mask=True``) -> ``block{i}_add1`` (Add, residual) ->
  ``block{i}_ln1`` -> ``block{i}_ffn1`` (Dense, GELU) -> ``block{i}_ffn2`` (Dense) ->
  ``block{i}_add2`` (Add, residual) -> ``block{i}_ln2``;
* the pooled head: the first token, picked out by ``cls_crop`` (``Cropping1D``) and
  ``cls_flatten`` (``Flatten``), ``pooler`` (Dense, tanh) and ``logits`` (Dense, no softmax).

GELU is exact (erf) by default: ``block{i}_ffn1`` is ``Dense(ffn_dim, activation="gelu")``. With
``gelu_approximate=True`` (the tanh form) ``block{i}_ffn1`` is a linear Dense followed by
``block{i}_ffn1_gelu``, an ``Activation`` of :func:`aimet_tf.layers.gelu_approximate`: Keras has
no string for that form, and ``aimet_tf.graph.prepare`` splits only Keras' own activation names
out of a Dense (it would name the split layer ``block{i}_ffn1_gelu`` too).

Conversion: TFLite's float converter keeps the model to 1e-6 on random weights. Its full-int8
PTQ converts too, but the masked attention scores get an int8 grid wide enough to hold the
``-0.7 * float32 max`` that Keras' TensorFlow attention fills masked scores with, so every real
score falls on one level and attention becomes uniform over the real tokens
(``python -m benchmarks.text_encoder_ptq`` measures this).

What is left out of BERT: token-type (segment) embeddings, dropout and the masked-LM head.
LayerNormalization uses BERT's epsilon, 1e-12.

:func:`random_token_batch` draws padded batches of random token ids, for checking a model with
random weights against its converted or quantized forms.

Example:
    >>> model = bert_encoder()
    >>> [tuple(i.shape) for i in model.inputs], model.output_shape, model.count_params()
    ([(None, 32), (None, 32)], (None, 2), 137410)
    >>> token_ids, padding_mask = random_token_batch(8, 32, 1000, seed=0)
    >>> model.predict([token_ids, padding_mask], verbose=0).shape
    (8, 2)
"""

from __future__ import annotations

import keras
import numpy as np

from aimet_tf.layers import PaddingAttentionMask, PositionEmbedding, gelu_approximate

__all__ = ["bert_encoder", "random_token_batch"]

_LN_EPSILON = 1e-12
_MASK_DTYPES = ("int32", "bool")


def _check_positive(function: str, **values: int) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{function} expects {name} > 0. Received: {name}={value}.")


def _ffn1(x: keras.KerasTensor, name: str, ffn_dim: int, approximate: bool) -> keras.KerasTensor:
    """``block{i}_ffn1``: Dense with exact GELU, or linear Dense + tanh-form GELU Activation."""
    if not approximate:
        return keras.layers.Dense(ffn_dim, activation="gelu", name=f"{name}_ffn1")(x)
    x = keras.layers.Dense(ffn_dim, name=f"{name}_ffn1")(x)
    return keras.layers.Activation(gelu_approximate, name=f"{name}_ffn1_gelu")(x)


def _encoder_block(x: keras.KerasTensor, attention_mask: keras.KerasTensor, index: int,
                   num_heads: int, ffn_dim: int, gelu_approx: bool,
                   causal: bool) -> keras.KerasTensor:
    """One post-norm block: ``y = LN(x + MHA(x))`` then ``LN(y + FFN(y))``."""
    dim = x.shape[-1]
    name = f"block{index}"
    h = keras.layers.MultiHeadAttention(
        num_heads=num_heads, key_dim=dim // num_heads, name=f"{name}_mha"
    )(x, x, attention_mask=attention_mask, use_causal_mask=causal)
    x = keras.layers.Add(name=f"{name}_add1")([x, h])
    x = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name=f"{name}_ln1")(x)
    h = _ffn1(x, name, ffn_dim, gelu_approx)
    h = keras.layers.Dense(dim, name=f"{name}_ffn2")(h)
    x = keras.layers.Add(name=f"{name}_add2")([x, h])
    return keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name=f"{name}_ln2")(x)


def bert_encoder(
    vocab_size: int = 1000,
    seq_len: int = 32,
    dim: int = 64,
    depth: int = 2,
    num_heads: int = 4,
    ffn_dim: int = 128,
    classes: int = 2,
    gelu_approximate: bool = False,
    causal: bool = False,
    mask_dtype: str = "int32",
    name: str = "bert_encoder",
) -> keras.Model:
    """Builds the small BERT-style encoder (Functional API, deterministic layer names).

    Args:
        vocab_size: Rows of the token embedding; token ids must lie in ``[0, vocab_size)``
            (0 is the padding id of :func:`random_token_batch`).
        seq_len: Sequence length ``T`` (fixed: the position table has ``T`` rows).
        dim: Token width ``D``; must be a multiple of ``num_heads``.
        depth: Number of encoder blocks.
        num_heads: Attention heads per block (each of width ``dim // num_heads``).
        ffn_dim: Hidden width of each block's feed-forward network.
        classes: Number of output logits.
        gelu_approximate: Use GELU's tanh form instead of the exact (erf) form.
        causal: Also pass ``use_causal_mask=True`` to every MultiHeadAttention (decoder-style:
            position ``i`` sees positions ``<= i`` only). The pooled first token then sees only
            itself, so the logits depend on token 0 alone; read a block's sequence output
            (e.g. ``block{depth}_ln2``) to see the causal mask at work.
        mask_dtype: dtype of the ``padding_mask`` input, ``"int32"`` or ``"bool"``.
        name: Model name.

    Returns:
        An uncompiled ``keras.Model`` mapping ``[token_ids, padding_mask]`` to ``[N, classes]``
        logits, read from the first token. The defaults give 2 blocks and 137,410 parameters.

    Raises:
        ValueError: If a size is not positive, ``dim`` is not a multiple of ``num_heads`` or
            ``mask_dtype`` is not one of ``"int32"``, ``"bool"``.
    """
    _check_positive("bert_encoder", vocab_size=vocab_size, seq_len=seq_len, dim=dim,
                    depth=depth, num_heads=num_heads, ffn_dim=ffn_dim, classes=classes)
    if dim % num_heads:
        raise ValueError(
            f"bert_encoder expects dim to be a multiple of num_heads. Received: dim={dim}, "
            f"num_heads={num_heads}."
        )
    if mask_dtype not in _MASK_DTYPES:
        raise ValueError(
            f"bert_encoder expects mask_dtype in {_MASK_DTYPES}. Received: "
            f"mask_dtype={mask_dtype!r}."
        )

    token_ids = keras.Input(shape=(seq_len,), dtype="int32", name="token_ids")
    padding_mask = keras.Input(shape=(seq_len,), dtype=mask_dtype, name="padding_mask")
    x = keras.layers.Embedding(vocab_size, dim, name="token_embed")(token_ids)
    x = PositionEmbedding(name="pos_embed")(x)
    x = keras.layers.LayerNormalization(epsilon=_LN_EPSILON, name="embed_ln")(x)
    attention_mask = PaddingAttentionMask(name="attention_mask")(padding_mask)
    for index in range(1, depth + 1):
        x = _encoder_block(x, attention_mask, index, num_heads, ffn_dim, gelu_approximate, causal)
    x = keras.layers.Cropping1D(cropping=(0, seq_len - 1), name="cls_crop")(x)
    x = keras.layers.Flatten(name="cls_flatten")(x)
    x = keras.layers.Dense(dim, activation="tanh", name="pooler")(x)
    logits = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model([token_ids, padding_mask], logits, name=name)


def random_token_batch(
    n: int, seq_len: int = 32, vocab_size: int = 1000, seed: int = 0, min_len: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Random padded token sequences: ``(token_ids, padding_mask)``, both int32 ``[n, seq_len]``.

    Sequence ``k`` has a length ``L_k`` drawn uniformly from ``[min_len, seq_len]``; its first
    ``L_k`` ids are drawn uniformly from ``[1, vocab_size)`` and the rest are the padding id 0.
    ``padding_mask[k, t] = 1`` for ``t < L_k``, else 0. The same arguments give the same batch.

    Args:
        n: Number of sequences.
        seq_len: Sequence length ``T``.
        vocab_size: Token ids are below this; must be at least 2 (the padding id and one more).
        seed: Seed of the ``numpy.random.default_rng`` that draws lengths and ids.
        min_len: Shortest length, in ``[1, seq_len]`` (1: the first token is always real).

    Returns:
        ``(token_ids, padding_mask)``.

    Raises:
        ValueError: For ``n`` or ``seq_len`` not positive, ``vocab_size < 2`` or ``min_len``
            outside ``[1, seq_len]``.
    """
    _check_positive("random_token_batch", n=n, seq_len=seq_len)
    if vocab_size < 2:
        raise ValueError(
            "random_token_batch expects vocab_size >= 2 (the padding id 0 and at least one "
            f"token). Received: vocab_size={vocab_size}."
        )
    if not 1 <= min_len <= seq_len:
        raise ValueError(
            f"random_token_batch expects min_len in [1, seq_len={seq_len}]. Received: "
            f"min_len={min_len}."
        )
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, seq_len + 1, size=(n, 1))
    padding_mask = (np.arange(seq_len)[None, :] < lengths).astype(np.int32)
    token_ids = rng.integers(1, vocab_size, size=(n, seq_len)).astype(np.int32) * padding_mask
    return token_ids, padding_mask
