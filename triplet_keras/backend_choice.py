"""The Keras backend of the entry scripts (init.py, ``python -m triplet_keras``, the benchmarks).

Importing this module (or ``triplet_keras``) changes nothing; an entry script calls
:func:`choose_backend` first thing, before keras is imported, because Keras reads ``KERAS_BACKEND``
once, on import. A library user picks the backend the Keras way, by setting ``KERAS_BACKEND``.
"""
import importlib.metadata
import importlib.util
import os

XNNPACK_FLAG = "--xla_cpu_use_xnnpack=true"


def choose_backend():
    """Set ``KERAS_BACKEND=jax`` when it is unset and jax is installed (JAX trains faster than
    TensorFlow on CPU and GPU). Under JAX, also add ``--xla_cpu_use_xnnpack=true`` to ``XLA_FLAGS``
    unless they already name that flag: XLA's XNNPACK CPU kernels train ResNet50 faster on CPU
    (benchmarks/README.md). Only for jaxlib 0.10+, where it was measured, as XLA aborts on a flag
    it does not know. Returns the backend name now in ``KERAS_BACKEND`` (None when unset).
    """
    if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("jax") is not None:
        os.environ["KERAS_BACKEND"] = "jax"
    backend = os.environ.get("KERAS_BACKEND")
    flags = os.environ.get("XLA_FLAGS", "")
    if backend == "jax" and "xla_cpu_use_xnnpack" not in flags and _jaxlib_version() >= (0, 10):
        os.environ["XLA_FLAGS"] = f"{flags} {XNNPACK_FLAG}".strip()
    return backend


def _jaxlib_version():
    """(major, minor) of the installed jaxlib, (0, 0) when there is none."""
    try:
        return tuple(int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return (0, 0)
