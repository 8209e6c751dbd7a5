"""AIMET's ``aimet_common.amp`` package (only ``utils.AMPSearchAlgo`` is needed by AIMET user code)."""
