"""choose_backend: the fastest installed backend for the device when KERAS_BACKEND is unset, one line
on stderr, the override; and how the device is found. The device and the installed packages are
faked, so every case runs on any machine."""
import os
import subprocess
from types import SimpleNamespace

import pytest

from triplet_keras import backend_choice

pytestmark = pytest.mark.backend_free
ROOT = os.path.join(os.path.dirname(__file__), os.pardir)


@pytest.fixture
def fake(monkeypatch):
    """Set the device ("cpu"/"gpu") and the installed backends that choose_backend sees."""
    monkeypatch.delenv("KERAS_BACKEND", raising=False)
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_COMPILATION_CACHE_MAX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(backend_choice, "_jaxlib_version", lambda: (0, 10))

    def set_up(device, installed):
        monkeypatch.setattr(backend_choice, "detect_device", lambda: (device, f"the {device} here"))
        monkeypatch.setattr(backend_choice, "is_installed", lambda name: name in installed)

    return set_up


@pytest.mark.parametrize("device, installed, chosen, xla_flags", [
    ("cpu", {"jax", "tensorflow", "torch"}, "jax", "--xla_cpu_use_xnnpack=true"),
    ("gpu", {"jax", "tensorflow", "torch"}, "jax", "--xla_cpu_use_xnnpack=true"),
    ("cpu", {"tensorflow", "torch"}, "tensorflow", None),
    ("cpu", {"torch"}, "torch", None),
    ("gpu", {"tensorflow", "torch"}, "tensorflow", None),
])
def test_unset_takes_the_first_installed_of_the_device_preference(fake, capsys, device, installed, chosen,
                                                                  xla_flags):
    fake(device, installed)
    assert backend_choice.choose_backend() == chosen
    assert backend_choice.os.environ["KERAS_BACKEND"] == chosen
    assert backend_choice.os.environ.get("XLA_FLAGS") == xla_flags
    assert backend_choice.os.environ.get("TF_CPP_MIN_LOG_LEVEL") == ("1" if chosen == "tensorflow" else None)
    captured = capsys.readouterr()
    assert captured.out == ""
    others = "|".join(name for name in ("jax", "tensorflow", "torch") if name != chosen)
    fastest = backend_choice.PREFERENCE[device][0]
    reason = (f"the fastest measured on the {device} here" if chosen == fastest
              else f"{fastest}, the fastest measured on the {device} here, is not installed")
    assert captured.err == f"Keras backend: {chosen} ({reason}); KERAS_BACKEND={others} chooses another\n"


def test_no_backend_installed_leaves_keras_backend_unset(fake, capsys):
    fake("cpu", set())
    assert backend_choice.choose_backend() is None
    assert "KERAS_BACKEND" not in backend_choice.os.environ
    assert capsys.readouterr() == ("", "")


def test_a_set_backend_is_kept_without_looking_at_the_device(fake, monkeypatch, capsys):
    fake("gpu", {"jax", "tensorflow", "torch"})
    monkeypatch.setattr(backend_choice, "detect_device", lambda: pytest.fail("device looked up"))
    monkeypatch.setenv("KERAS_BACKEND", "torch")
    assert backend_choice.choose_backend() == "torch"
    assert capsys.readouterr().err == "Keras backend: torch (set by KERAS_BACKEND); " \
                                      "KERAS_BACKEND=jax|tensorflow chooses another\n"
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_xnnpack=false")
    assert backend_choice.choose_backend(announce=False) == "jax"
    assert backend_choice.os.environ["XLA_FLAGS"] == "--xla_cpu_use_xnnpack=false"
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    assert backend_choice.choose_backend(announce=False) == "tensorflow"
    assert backend_choice.os.environ["TF_CPP_MIN_LOG_LEVEL"] == "3"
    assert capsys.readouterr() == ("", "")


def test_old_jaxlib_gets_no_xnnpack_flag(fake, monkeypatch):
    fake("gpu", {"jax"})
    monkeypatch.setattr(backend_choice, "_jaxlib_version", lambda: (0, 4))
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    assert backend_choice.choose_backend(announce=False) == "jax"
    assert backend_choice.os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


@pytest.fixture
def driver(monkeypatch):
    """Fake the NVIDIA device nodes and ``nvidia-smi -L``'s output (None: no nvidia-smi)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def set_up(nodes, smi_output):
        monkeypatch.setattr(backend_choice.glob, "glob",
                            lambda pattern: nodes if pattern == "/dev/nvidia[0-9]*" else pytest.fail(pattern))
        monkeypatch.setattr(backend_choice.shutil, "which", lambda name: None if smi_output is None else "/bin/x")
        monkeypatch.setattr(backend_choice.subprocess, "run",
                            lambda command, **kwargs: SimpleNamespace(stdout=smi_output))

    return set_up


@pytest.mark.parametrize("nodes, smi_output, visible", [
    (["/dev/nvidia0"], None, True),
    ([], "GPU 0: NVIDIA H200 (UUID: GPU-1234)\n", True),
    ([], "No devices were found\n", False),
    ([], None, False),
])
def test_gpu_seen_through_device_nodes_or_nvidia_smi(driver, nodes, smi_output, visible):
    driver(nodes, smi_output)
    assert backend_choice.nvidia_gpu_visible() is visible


@pytest.mark.parametrize("hidden", ["", "-1"])
def test_cuda_visible_devices_can_hide_the_gpu(driver, monkeypatch, hidden):
    driver(["/dev/nvidia0"], "GPU 0: NVIDIA H200\n")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    assert not backend_choice.nvidia_gpu_visible()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert backend_choice.nvidia_gpu_visible()


def test_nvidia_smi_that_fails_means_no_gpu(driver, monkeypatch):
    driver([], "")

    def hang(command, **kwargs):
        raise subprocess.TimeoutExpired(command, kwargs["timeout"])

    monkeypatch.setattr(backend_choice.subprocess, "run", hang)
    assert not backend_choice.nvidia_gpu_visible()


@pytest.mark.parametrize("gpu, distributions, device", [
    (False, ["jax", "jax-cuda13-plugin"], "cpu"),
    (True, ["jax", "jaxlib", "jax-cuda13-pjrt"], "cpu"),
    (True, ["jax", "jax_cuda12_plugin"], "gpu"),
    (True, ["jax", "jax-cuda13-plugin"], "gpu"),
])
def test_device_is_a_gpu_only_where_jax_can_use_it(monkeypatch, gpu, distributions, device):
    monkeypatch.setattr(backend_choice, "nvidia_gpu_visible", lambda: gpu)
    monkeypatch.setattr(backend_choice.importlib.metadata, "distributions",
                        lambda: [SimpleNamespace(metadata={"Name": name}) for name in distributions])
    found, description = backend_choice.detect_device()
    assert found == device
    assert ("CUDA plugin" in description) == (gpu and device == "cpu")


def test_jax_keeps_compiled_programs_under_keras_home_unless_told_otherwise(fake, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    fake("cpu", {"jax", "filelock"})
    assert backend_choice.choose_backend(announce=False) == "jax"
    environ = backend_choice.os.environ
    assert environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "jax_compilation_cache")
    assert environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert environ["JAX_COMPILATION_CACHE_MAX_SIZE"] == str(2**30)
    for name in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
                 "JAX_COMPILATION_CACHE_MAX_SIZE"):
        monkeypatch.delenv(name)
    fake("cpu", {"jax"})  # no filelock: an unbounded cache rather than JAX's error
    backend_choice.choose_backend(announce=False)
    assert "JAX_COMPILATION_CACHE_DIR" in environ and "JAX_COMPILATION_CACHE_MAX_SIZE" not in environ
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "")  # the user's choice (here: off) is kept
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")
    backend_choice.choose_backend(announce=False)
    assert environ["JAX_COMPILATION_CACHE_DIR"] == "" and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in environ
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    backend_choice.choose_backend(announce=False)
    assert "JAX_COMPILATION_CACHE_DIR" not in environ


def test_a_jax_program_compiled_by_one_entry_point_is_on_disk_for_the_next(tmp_path):
    """Two interpreters as the entry points start them: the second finds the first's programs (JAX
    logs a cache hit) and the cache directory holds them."""
    program = ("import sys; from triplet_keras.backend_choice import choose_backend; choose_backend(False); "
               "import logging, jax; logging.basicConfig(level=logging.DEBUG, stream=sys.stdout); "
               "print(jax.jit(lambda x: x * 2 + 1)(jax.numpy.arange(7.0)).sum())")
    env = {key: value for key, value in backend_choice.os.environ.items()
           if not key.startswith(("JAX_", "KERAS_BACKEND"))}
    env.update(KERAS_HOME=str(tmp_path), KERAS_BACKEND="jax")
    runs = [subprocess.run([backend_choice.sys.executable, "-c", program], env=env, capture_output=True,
                           text=True, timeout=120, cwd=ROOT) for _ in range(2)]
    assert all(run.returncode == 0 and "49.0" in run.stdout for run in runs), runs[0].stderr[-2000:]
    assert any(path.suffix != ".lockfile" for path in (tmp_path / "jax_compilation_cache").iterdir())
    assert "cache hit" not in runs[0].stdout.lower() and "cache hit" in runs[1].stdout.lower()
