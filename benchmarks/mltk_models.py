"""The MLTK model loader lives in `aimet_tf/testing/mltk_models.py` (tests and examples share it)."""

from aimet_tf.testing.mltk_models import *  # noqa: F401,F403
from aimet_tf.testing.mltk_models import __all__  # noqa: F401
