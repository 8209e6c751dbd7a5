"""AIMET's ``aimet_tensorflow.keras.quant_sim`` package: the wrapper class under AIMET's name."""
