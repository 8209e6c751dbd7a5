"""The real-input loader lives in `aimet_tf/testing/real_inputs.py` (tests and examples share it).

Rebuild the bundles with ``python -m aimet_tf.testing.real_inputs --build=photos|speech``.
"""

from aimet_tf.testing.real_inputs import *  # noqa: F401,F403
from aimet_tf.testing.real_inputs import __all__  # noqa: F401
