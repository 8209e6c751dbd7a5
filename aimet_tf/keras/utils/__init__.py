"""AIMET's ``aimet_tensorflow.keras.utils`` (the parts AIMET's Keras examples import)."""
