"""AIMET's ``aimet_tensorflow.keras.cross_layer_equalization``.

* ``equalize_model(model) -> model``: BN fold, ReLU6 -> ReLU, cross-layer scaling and high-bias
  fold in one call; ``model`` is not modified (the report of every pair equalized or skipped is
  ``aimet_tf.ptq.equalize_model_with_report``).
* The step-by-step API, which edits the given layers in place as AIMET's does:
  ``CrossLayerScaling.scale_cls_sets(cls_sets) -> scale factors``,
  ``CrossLayerScaling.scale_model(model) -> [ClsSetInfo]``,
  ``CrossLayerScaling.create_cls_set_info_list(cls_sets, scale_factors, is_relu_activation_in_cls_sets)``,
  ``HighBiasFold.bias_fold(cls_set_info_list, bn_layers)``, ``equalize_bn_folded_model(model, folded_pairs)``.

Differences from AIMET: ``scale_model`` balances sets that share a layer in sweeps until they
agree (AIMET makes one pass), and the returned scale factor of each link is the total over the
sweeps; ``scale_cls_sets`` makes AIMET's single pass. Conv1D/3D, DepthwiseConv1D and Dense layers
are accepted besides AIMET's Conv2D/DepthwiseConv2D. The maths is ``aimet_tf.ptq.cle``.
"""

from __future__ import annotations

from typing import Mapping, Sequence, Union

import keras
import numpy as np
from absl import logging

from aimet_tf.ptq import cle as _cle
from aimet_tf.ptq.cle import equalize_model

__all__ = ["ClsSetInfo", "CrossLayerScaling", "HighBiasFold", "equalize_bn_folded_model", "equalize_model"]

ScaleFactor = Union[np.ndarray, tuple[np.ndarray, np.ndarray]]
ReluFlag = Union[bool, tuple[bool, bool]]


class ClsSetInfo:
    """The layers of one CLS set with their scale factors and whether a ReLU sits between them."""

    class ClsSetLayerPairInfo:
        """Two consecutive layers scaled by CLS.

        Attributes:
            layer1: the layer whose output channels were divided by ``scale_factor``.
            layer2: the layer reading them (its input channels were multiplied).
            scale_factor: per-channel scale, float array.
            relu_activation_between_layers: whether a ReLU sits between them.
        """

        def __init__(self, layer1, layer2, scale_factor: np.ndarray, relu_activation_between_layers: bool):
            self.layer1 = layer1
            self.layer2 = layer2
            self.scale_factor = scale_factor
            self.relu_activation_between_layers = relu_activation_between_layers

        def __eq__(self, other) -> bool:
            return (
                isinstance(other, type(self))
                and self.layer1 is other.layer1
                and self.layer2 is other.layer2
                and np.allclose(self.scale_factor, other.scale_factor)
                and self.relu_activation_between_layers == other.relu_activation_between_layers
            )

        def __repr__(self) -> str:
            return (
                f"ClsSetLayerPairInfo({self.layer1.name!r} -> {self.layer2.name!r}, "
                f"relu={self.relu_activation_between_layers})"
            )

    def __init__(self, cls_pair_1: "ClsSetInfo.ClsSetLayerPairInfo", cls_pair_2: "ClsSetInfo.ClsSetLayerPairInfo" = None):
        self.cls_pair_info_list = [cls_pair_1] if cls_pair_2 is None else [cls_pair_1, cls_pair_2]

    def __eq__(self, other) -> bool:
        return isinstance(other, ClsSetInfo) and self.cls_pair_info_list == other.cls_pair_info_list

    def __repr__(self) -> str:
        return f"ClsSetInfo({self.cls_pair_info_list!r})"


class CrossLayerScaling:
    """Cross-layer scaling on given layers or on a whole model, in place."""

    @staticmethod
    def scale_cls_set_with_conv_layers(cls_set: Sequence[keras.layers.Layer]) -> np.ndarray:
        """Scales a (layer, layer) pair in place; returns the scale factor (per channel)."""
        if len(cls_set) != 2:
            raise ValueError(f"Expected a CLS set of 2 layers. Received {len(cls_set)}: {cls_set!r}")
        return _cle.scale_cls_set_in_place(cls_set)[0]

    @staticmethod
    def scale_cls_set_with_depthwise_conv_layers(cls_set: Sequence[keras.layers.Layer]) -> tuple[np.ndarray, np.ndarray]:
        """Scales a (layer, depthwise, layer) triple in place; returns (S12, S23)."""
        if len(cls_set) != 3:
            raise ValueError(f"Expected a CLS set of 3 layers. Received {len(cls_set)}: {cls_set!r}")
        s12, s23 = _cle.scale_cls_set_in_place(cls_set)
        return s12, s23

    @staticmethod
    def scale_cls_sets(cls_sets: Sequence[Sequence[keras.layers.Layer]]) -> list[ScaleFactor]:
        """Scales each set in place, in order; returns one scale factor (a pair) or a tuple of two
        (a depthwise triple) per set. Every set is checked before any is scaled."""
        for cls_set in cls_sets:
            _cle._check_scalable(cls_set)
        factors: list[ScaleFactor] = []
        for cls_set in cls_sets:
            if len(cls_set) == 3:
                factors.append(CrossLayerScaling.scale_cls_set_with_depthwise_conv_layers(cls_set))
            else:
                factors.append(CrossLayerScaling.scale_cls_set_with_conv_layers(cls_set))
        return factors

    @staticmethod
    def create_cls_set_info_list(
        cls_sets: Sequence[Sequence[keras.layers.Layer]],
        scale_factors: Sequence[ScaleFactor],
        is_relu_activation_in_cls_sets: Sequence[ReluFlag],
    ) -> list[ClsSetInfo]:
        """Binds sets, their scale factors and ReLU flags into ``ClsSetInfo`` objects.

        Raises:
            ValueError: for lists of different lengths, or a triple without two factors and two flags.
        """
        lengths = (len(cls_sets), len(scale_factors), len(is_relu_activation_in_cls_sets))
        if len(set(lengths)) != 1:
            raise ValueError(
                "Expected one scale factor and one ReLU flag per CLS set. Received: "
                f"{lengths[0]} sets, {lengths[1]} scale factors, {lengths[2]} ReLU flags."
            )
        infos = []
        for cls_set, factor, relu in zip(cls_sets, scale_factors, is_relu_activation_in_cls_sets):
            if len(cls_set) == 3:
                if not (isinstance(factor, tuple) and len(factor) == 2 and isinstance(relu, (tuple, list)) and len(relu) == 2):
                    raise ValueError(
                        f"Expected two scale factors and two ReLU flags for the triple {[l.name for l in cls_set]}. "
                        f"Received: {type(factor).__name__} factor, ReLU flag {relu!r}."
                    )
                first = ClsSetInfo.ClsSetLayerPairInfo(cls_set[0], cls_set[1], factor[0], bool(relu[0]))
                second = ClsSetInfo.ClsSetLayerPairInfo(cls_set[1], cls_set[2], factor[1], bool(relu[1]))
                infos.append(ClsSetInfo(first, second))
            elif len(cls_set) == 2:
                infos.append(ClsSetInfo(ClsSetInfo.ClsSetLayerPairInfo(cls_set[0], cls_set[1], factor, bool(relu))))
            else:
                raise ValueError(f"Expected CLS sets of 2 or 3 layers. Received {len(cls_set)}: {cls_set!r}")
        return infos

    @staticmethod
    def scale_model(model: keras.Model) -> list[ClsSetInfo]:
        """Finds every CLS set of a BN-folded, ReLU6-free model and scales it in place.

        See ``aimet_tf.ptq.cle.scale_model_in_place`` for which sets are found.
        """
        scaled = _cle.scale_model_in_place(model)
        layers = {layer.name: layer for layer in model.layers}
        sets = [tuple(layers[name] for name in s.layers) for s in scaled]
        factors = [s.scales[0] if len(s.scales) == 1 else tuple(s.scales) for s in scaled]
        relus = [s.relu[0] if len(s.relu) == 1 else tuple(s.relu) for s in scaled]
        return CrossLayerScaling.create_cls_set_info_list(sets, factors, relus)


def _gamma_beta(bn: keras.layers.Layer) -> tuple[np.ndarray, np.ndarray]:
    """The batch norm's gamma and beta before folding (``original_gamma`` once it was folded)."""
    if hasattr(bn, "original_gamma") and hasattr(bn, "original_beta"):
        return np.asarray(bn.original_gamma), np.asarray(bn.original_beta)
    channels = int(bn.moving_mean.shape[0])
    gamma = bn.gamma.numpy() if bn.scale else np.ones(channels)
    beta = bn.beta.numpy() if bn.center else np.zeros(channels)
    return np.asarray(gamma), np.asarray(beta)


class HighBiasFold:
    """High-bias folding on CLS-scaled layers, in place."""

    @staticmethod
    def bias_fold(cls_set_info_list: Sequence[ClsSetInfo], bn_layers: Mapping[keras.layers.Layer, keras.layers.Layer]) -> None:
        """Folds the part of each layer1's bias a following ReLU never clips into layer2's bias.

        Args:
            cls_set_info_list: from ``CrossLayerScaling.scale_model`` / ``create_cls_set_info_list``.
            bn_layers: {conv_or_linear layer: the batch norm folded into it}. A pair whose layer1
                has no entry, or where either layer has no bias, is skipped, as in AIMET.
        """
        if not bn_layers:
            logging.info("HighBiasFold: no batch norm layers given; nothing folded (as AIMET)")
            return
        by_id = {id(layer): bn for layer, bn in bn_layers.items()}
        for info in cls_set_info_list:
            for pair in info.cls_pair_info_list:
                layer1, layer2 = pair.layer1, pair.layer2
                if id(layer1) not in by_id or not layer1.use_bias or not layer2.use_bias:
                    continue
                gamma, beta = _gamma_beta(by_id[id(layer1)])
                record = _cle.high_bias_fold_in_place(
                    layer1, layer2, pair.scale_factor, pair.relu_activation_between_layers, gamma, beta
                )
                logging.info(
                    "HighBiasFold %s -> %s: %s", layer1.name, layer2.name,
                    f"{record.channels} channels" if record.folded else record.reason,
                )


def equalize_bn_folded_model(model: keras.Model, folded_pairs: Sequence[tuple[keras.layers.Layer, keras.layers.Layer]]) -> None:
    """Cross-layer scaling and high-bias fold of a BN-folded model, in place.

    Args:
        model: the model ``fold_all_batch_norms`` returned (or the one it folded in place).
        folded_pairs: its ``(conv_or_linear, bn)`` pairs.
    """
    cls_set_info_list = CrossLayerScaling.scale_model(model)
    HighBiasFold.bias_fold(cls_set_info_list, {layer: bn for layer, bn in folded_pairs})
