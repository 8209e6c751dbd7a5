"""AIMET's ``aimet_common`` names that Keras scripts import (``aimet_tf.common.defs``)."""
