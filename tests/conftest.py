"""Test set-up: quiet logs, a fixed seed, and no network."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "jax")

from triplet_keras.backend_choice import choose_backend  # noqa: E402

choose_backend(announce=False)  # the XLA flags of the entry points under JAX, before keras is imported

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(0)
    np.random.seed(0)
    yield
