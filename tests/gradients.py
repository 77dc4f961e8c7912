"""Gradient of a scalar keras.ops function with respect to one array, on the active backend."""
import keras
import numpy as np
import pytest


def gradient(function, x):
    """d function(x) / dx as a numpy array (skips the test on a backend without a helper here)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return np.asarray(jax.grad(function)(x))
    if backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = function(variable)
        return tape.gradient(value, variable).numpy()
    if backend == "torch":
        import torch

        tensor = torch.tensor(x, requires_grad=True)
        function(tensor).backward()
        return tensor.grad.numpy()
    pytest.skip(f"no gradient helper for backend {backend}")
