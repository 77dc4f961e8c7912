"""The Keras backend of the entry points: init.py, ``triplet-keras`` and ``python -m triplet_keras``
(both through :func:`triplet_keras.__main__.cli`), and the benchmarks.

Importing this module (or ``triplet_keras``) changes nothing; an entry point calls
:func:`choose_backend` first thing, before keras is imported, because Keras reads ``KERAS_BACKEND``
once, on import. A library user picks the backend the Keras way, by setting ``KERAS_BACKEND``.

When ``KERAS_BACKEND`` is unset, the entry points take the fastest backend measured for the device
(benchmarks/throughput.py; the numbers are in benchmarks/README.md), the first one installed of
:data:`PREFERENCE`: JAX, then TensorFlow, then PyTorch, on a CPU as with an NVIDIA GPU that JAX can
use. The two entries are kept apart because the CPU order is contested (an earlier run on the same
kind of machine had TensorFlow at 3x JAX; benchmarks/README.md) and the printed line names the device.

The device is found without importing keras, jax or torch (an import costs seconds, and a JAX or
TensorFlow that starts on the GPU takes most of its memory before the chosen backend could): a GPU is
there when ``CUDA_VISIBLE_DEVICES`` does not hide every device and the driver shows one, as a
``/dev/nvidia<N>`` device node or, where there are none (WSL), in ``nvidia-smi -L``; JAX can use it
when one of its CUDA plugins (``pip install "jax[cuda13]"``) is installed. A GPU without that plugin
counts as a CPU, since jax[cpu] and tensorflow-cpu would both run on the CPU.
"""
import glob
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys

from triplet_keras.core.downloads import keras_home

BACKENDS = ("jax", "tensorflow", "torch")
# Fastest first, per device (benchmarks/README.md). On the shared 2-core CPU, 2026-12-03, Keras trained
# ResNet50 fastest on JAX, then TensorFlow with XLA, then PyTorch; TensorFlow embedded fastest.
PREFERENCE = {"cpu": ("jax", "tensorflow", "torch"), "gpu": ("jax", "tensorflow", "torch")}
XNNPACK_FLAG = "--xla_cpu_use_xnnpack=true"


def choose_backend(announce=True):
    """Set ``KERAS_BACKEND`` when it is unset: the first installed backend of ``PREFERENCE[device]``
    (left unset when none of them is installed, so that Keras reports it). With ``announce``, print
    the backend and how to choose another in one line on stderr. Under TensorFlow, set
    ``TF_CPP_MIN_LOG_LEVEL=1`` when it is unset (its C++ warnings and errors still show). Under JAX, add
    ``--xla_cpu_use_xnnpack=true`` to ``XLA_FLAGS`` unless they already name that flag (XLA's XNNPACK
    CPU kernels; only for jaxlib 0.10+, where it was measured, as XLA aborts on a flag it does not
    know), and keep compiled programs on disk (enable_compilation_cache). Returns the backend name now
    in ``KERAS_BACKEND`` (None when unset).
    """
    backend = os.environ.get("KERAS_BACKEND")
    if backend:
        reason = "set by KERAS_BACKEND"
    else:
        device, device_note = detect_device()
        installed = [name for name in PREFERENCE[device] if is_installed(name)]
        if not installed:
            return None
        backend = os.environ["KERAS_BACKEND"] = installed[0]
        fastest = PREFERENCE[device][0]
        reason = (f"the fastest measured on {device_note}" if backend == fastest
                  else f"{fastest}, the fastest measured on {device_note}, is not installed")
    if backend == "tensorflow":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # no INFO lines from TensorFlow's import
    flags = os.environ.get("XLA_FLAGS", "")
    if backend == "jax" and "xla_cpu_use_xnnpack" not in flags and _jaxlib_version() >= (0, 10):
        os.environ["XLA_FLAGS"] = f"{flags} {XNNPACK_FLAG}".strip()
    if backend == "jax":
        enable_compilation_cache()
    if announce:
        others = "|".join(name for name in BACKENDS if name != backend)
        print(f"Keras backend: {backend} ({reason}); KERAS_BACKEND={others} chooses another",
              file=sys.stderr, flush=True)
    return backend


COMPILATION_CACHE_BYTES = 2**30


def enable_compilation_cache():
    """Keep JAX's compiled XLA programs on disk, in ``$KERAS_HOME/jax_compilation_cache`` (KERAS_HOME
    defaults to ~/.keras), unless ``JAX_COMPILATION_CACHE_DIR`` is set already (set it empty to keep
    nothing). Every program is kept, however quick to compile (JAX's default keeps those over 1 s, and
    on a CPU most take less), and the least recently used go beyond COMPILATION_CACHE_BYTES (which
    needs the ``filelock`` package: without it the cache is not bounded). A program compiles once per
    machine: a later run, a fold encoder or an initial network of the same shapes loads it instead.
    Call it before jax is imported: JAX reads these variables then."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(keras_home(), "jax_compilation_cache")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    if is_installed("filelock"):
        os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(COMPILATION_CACHE_BYTES))


def is_installed(name):
    """Whether the backend's package can be imported (found without importing it)."""
    return importlib.util.find_spec(name) is not None


def detect_device():
    """("gpu", description) when JAX can use an NVIDIA GPU here, else ("cpu", description)."""
    if not nvidia_gpu_visible():
        return "cpu", "CPU, no NVIDIA GPU found"
    if not jax_cuda_installed():
        return "cpu", 'CPU: an NVIDIA GPU, but no CUDA plugin for JAX (pip install "jax[cuda13]")'
    return "gpu", "an NVIDIA GPU"


def nvidia_gpu_visible():
    """Whether the NVIDIA driver shows a GPU that ``CUDA_VISIBLE_DEVICES`` does not hide."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", "unset").strip() in ("", "-1"):
        return False
    if glob.glob("/dev/nvidia[0-9]*"):
        return True
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return re.search(r"^GPU \d+:", listing, re.MULTILINE) is not None


def jax_cuda_installed():
    """Whether a CUDA plugin of JAX (the jax-cuda12-plugin or jax-cuda13-plugin distribution) is installed."""
    return any(re.fullmatch(r"jax[-_]cuda\d+[-_]plugin", dist.metadata["Name"] or "", re.IGNORECASE)
               for dist in importlib.metadata.distributions())


def _jaxlib_version():
    """(major, minor) of the installed jaxlib, (0, 0) when there is none."""
    try:
        return tuple(int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2])
    except importlib.metadata.PackageNotFoundError:
        return (0, 0)
