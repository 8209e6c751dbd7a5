"""Shared pytest setup: quiet TF logs, deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# The tests must pass on a machine without the Debian package dataset-fashion-mnist: point the
# full data set's folder (in this process and in the example subprocesses) at a path that does
# not exist, so a test that reads the 60k train split fails here too.
os.environ["AIMET_TF_FASHION_MNIST_DIR"] = "/nonexistent/aimet_tf-tests-use-bundled-data-only"

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
