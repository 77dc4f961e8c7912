"""Test set-up: quiet logs, a fixed seed, no network, and the long tests first.

The README runs the tests on two pytest-xdist workers, a module at a time (``-n 2 --dist loadscope``:
one worker builds a module fixture), in collection order (``--no-loadscope-reorder``); the modules
of the longest tests, marked ``end_to_end``, start first, so that the workers finish together."""
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


def pytest_collection_modifyitems(items):
    """Tests marked end_to_end(seconds) first, the longest first (a stable sort: the order is otherwise
    that of collection)."""
    def seconds(item):
        marker = item.get_closest_marker("end_to_end")
        return marker.kwargs["seconds"] if marker else 0

    items.sort(key=seconds, reverse=True)
