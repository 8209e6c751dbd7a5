"""AIMET's ``aimet_common.utils``: ``AimetLogger`` (area loggers and their levels) and
``CallbackFunc`` (also importable from here in AIMET; the class is ``aimet_tf.common.defs.CallbackFunc``).

aimet_tf's own modules log through absl's logger (``absl.logging``, Python logger ``"absl"``); an
area logger is the Python logger ``"aimet_tf.<area>"``. ``set_level_for_all_areas`` sets both, so
a script's ``AimetLogger.set_level_for_all_areas(logging.WARNING)`` quiets aimet_tf as it quiets
AIMET. ``set_area_logger_level`` sets one area's logger only: aimet_tf's modules do not log per
area, so it changes what that area logger (the script's own messages) lets through.
"""

from __future__ import annotations

import enum
import logging

from absl import logging as absl_logging

from aimet_tf.common.defs import CallbackFunc

__all__ = ["AimetLogger", "CallbackFunc"]


class AimetLogger:
    """AIMET's logger registry: ``AimetLogger.get_area_logger(AimetLogger.LogAreas.Quant)``."""

    class LogAreas(enum.Enum):
        """AIMET's log areas (the ones its Keras API uses)."""

        Quant = "Quant"
        MixedPrecision = "MixedPrecision"
        Svd = "Svd"
        Test = "Test"
        Utils = "Utils"
        CompRatioSelect = "CompRatioSelect"
        ChannelPruning = "ChannelPruning"
        Winnow = "Winnow"
        ConnectedGraph = "ConnectedGraph"
        CrosslayerEqualization = "CrossLayerEqualization"
        BatchNormFolding = "BatchNormFolding"
        ModelPreparer = "ModelPreparer"
        LayerOutputs = "LayerOutputs"
        QuantAnalyzer = "QuantAnalyzer"
        AutoQuant = "AutoQuant"

    @staticmethod
    def _area(area: "AimetLogger.LogAreas") -> "AimetLogger.LogAreas":
        if not isinstance(area, AimetLogger.LogAreas):
            raise TypeError(
                f"Expected an AimetLogger.LogAreas member, e.g. AimetLogger.LogAreas.Quant. Received: {area!r}"
            )
        return area

    @staticmethod
    def get_area_logger(area: "AimetLogger.LogAreas") -> logging.Logger:
        """The Python logger ``"aimet_tf.<area>"``."""
        return logging.getLogger(f"aimet_tf.{AimetLogger._area(area).value}")

    @staticmethod
    def set_area_logger_level(area: "AimetLogger.LogAreas", level: int) -> None:
        """Sets one area logger's level (``logging.INFO`` etc.)."""
        AimetLogger.get_area_logger(area).setLevel(_level(level))

    @staticmethod
    def set_level_for_all_areas(level: int) -> None:
        """Sets every area logger's level and absl's (aimet_tf's modules log through absl)."""
        level = _level(level)
        for area in AimetLogger.LogAreas:
            AimetLogger.get_area_logger(area).setLevel(level)
        absl_logging.get_absl_logger().setLevel(level)


def _level(level: int) -> int:
    if isinstance(level, bool) or not isinstance(level, int) or logging.getLevelName(level).startswith("Level "):
        raise ValueError(
            f"Expected a logging level such as logging.INFO ({logging.INFO}) or logging.WARNING "
            f"({logging.WARNING}). Received: {level!r}"
        )
    return level
