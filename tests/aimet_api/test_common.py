"""aimet_tf.common: AIMET's defs and AimetLogger."""

import logging

import pytest
from absl import logging as absl_logging

from aimet_tf.common.defs import CallbackFunc, QuantizationDataType, QuantScheme
from aimet_tf.common.utils import AimetLogger


def test_defs_have_aimets_members():
    for name in (
        "post_training_tf",
        "post_training_tf_enhanced",
        "post_training_percentile",
        "training_range_learning_with_tf_init",
        "training_range_learning_with_tf_enhanced_init",
    ):
        assert hasattr(QuantScheme, name)
    assert QuantizationDataType.int.value == 1 and QuantizationDataType.float.value == 2
    calls = []
    cb = CallbackFunc(lambda model, args: calls.append((model, args)), func_callback_args=7)
    cb.func("m", cb.func_callback_args)
    assert calls == [("m", 7)]
    with pytest.raises(TypeError, match="callable"):
        CallbackFunc(3)


def test_aimet_logger_levels():
    quant = AimetLogger.get_area_logger(AimetLogger.LogAreas.Quant)
    absl_logger = absl_logging.get_absl_logger()
    saved = absl_logger.level, quant.level
    try:
        AimetLogger.set_level_for_all_areas(logging.WARNING)
        assert quant.getEffectiveLevel() == logging.WARNING and absl_logger.level == logging.WARNING
        assert not quant.isEnabledFor(logging.INFO)
        AimetLogger.set_area_logger_level(AimetLogger.LogAreas.Quant, logging.DEBUG)
        assert quant.isEnabledFor(logging.DEBUG)
        assert not AimetLogger.get_area_logger(AimetLogger.LogAreas.Svd).isEnabledFor(logging.DEBUG)
    finally:
        absl_logger.setLevel(saved[0])
        quant.setLevel(saved[1])
        for area in AimetLogger.LogAreas:
            AimetLogger.get_area_logger(area).setLevel(logging.NOTSET)
    with pytest.raises(TypeError, match="LogAreas"):
        AimetLogger.get_area_logger("Quant")
    with pytest.raises(ValueError, match="logging level"):
        AimetLogger.set_level_for_all_areas(12345)
