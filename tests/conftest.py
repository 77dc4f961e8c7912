"""Test set-up: quiet logs, a fixed seed, and no network."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
