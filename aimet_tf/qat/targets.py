"""What quantization-aware training acts on: the BatchNormalization layers and the quantizers of a
simulated model, found in a ``QuantizationSimModel`` or directly in its ``sim.model``.

Callbacks only see the ``keras.Model`` that ``fit`` runs, so everything here accepts either the
sim or a model (also a reloaded ``.keras`` file of a sim, or a plain float model for the BN
helpers). Quantizer names are the tensor names of the AIMET encodings file ("conv1/output:0",
"conv1/kernel:0"), the same names ``sim.export`` writes.
"""

from __future__ import annotations

from typing import Any, Iterator

import keras

from aimet_tf.quantization import encodings_io
from aimet_tf.quantization.quantizers import Quantizer
from aimet_tf.quantization.sim import QuantizationSimModel
from aimet_tf.quantization.wrapper import QuantizationWrapper

__all__ = ["resolve_model", "find_batch_norms", "find_quantizers"]


def resolve_model(sim_or_model: QuantizationSimModel | keras.Model) -> keras.Model:
    """Returns ``sim.model`` for a sim and the model itself for a ``keras.Model``.

    Raises:
        TypeError: for anything else, naming what was received.
    """
    if isinstance(sim_or_model, QuantizationSimModel):
        return sim_or_model.model
    if isinstance(sim_or_model, keras.Model):
        return sim_or_model
    raise TypeError(
        "Expected a QuantizationSimModel or a keras.Model. Received: "
        f"{type(sim_or_model).__module__}.{type(sim_or_model).__name__}"
    )


def _walk(model: keras.Model) -> Iterator[keras.layers.Layer]:
    """Every layer of ``model`` in graph order, descending into nested models (not wrappers)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _walk(layer)
        else:
            yield layer


def find_batch_norms(
    sim_or_model: QuantizationSimModel | keras.Model,
) -> list[keras.layers.BatchNormalization]:
    """All BatchNormalization layers, wrapped (``wrapper.layer``) or plain, nested models included.

    Args:
        sim_or_model: a ``QuantizationSimModel``, its ``sim.model``, or any Keras model.

    Returns:
        The layers in graph order (the objects themselves, so changes act on the model).
    """
    found = []
    for layer in _walk(resolve_model(sim_or_model)):
        inner = layer.layer if isinstance(layer, QuantizationWrapper) else layer
        if isinstance(inner, keras.layers.BatchNormalization):
            found.append(inner)
    return found


def find_quantizers(
    sim_or_model: QuantizationSimModel | keras.Model, kinds: tuple[str, ...] = ("activation", "param")
) -> list[tuple[str, Quantizer]]:
    """(tensor name, quantizer) for every quantizer slot that holds a range-carrying ``Quantizer``.

    Derived quantizers (bias grids, requantizers) carry no range of their own and are skipped. A
    quantizer that sits in several slots (a shared grid) is listed once, under its first name.

    Args:
        sim_or_model: a ``QuantizationSimModel`` or a model of ``QuantizationWrapper`` layers.
        kinds: which quantizers: "activation" (input/output slots) and/or "param".

    Returns:
        The pairs in graph order; activation slots of a wrapper before its parameters.

    Raises:
        ValueError: for an unknown kind.
    """
    unknown = sorted(set(kinds) - {"activation", "param"})
    if unknown:
        raise ValueError(
            f"Expected kinds from ('activation', 'param'). Received: kinds={tuple(kinds)!r}"
        )
    pairs: list[tuple[str, Any]] = []
    for layer in _walk(resolve_model(sim_or_model)):
        if not isinstance(layer, QuantizationWrapper):
            continue
        if "activation" in kinds:
            pairs.extend(layer.activation_slots())
        if "param" in kinds:
            for path, q in layer.param_quantizers_by_path().items():
                pairs.append((encodings_io.param_name(layer.name, path), q))
    seen: set[int] = set()
    out = []
    for name, q in pairs:
        if isinstance(q, Quantizer) and id(q) not in seen:
            seen.add(id(q))
            out.append((name, q))
    return out
