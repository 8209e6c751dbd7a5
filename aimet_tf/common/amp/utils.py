"""AIMET's ``aimet_common.amp.utils``: ``AMPSearchAlgo`` (the class is ``aimet_tf.ptq.mixed_precision.AMPSearchAlgo``)."""

from aimet_tf.ptq.mixed_precision import AMPSearchAlgo

__all__ = ["AMPSearchAlgo"]
