"""Importing the package changes no environment variable and registers every Keras object it defines,
whichever import brings keras in, and a broken dependency of ours never fails ``import keras``; files
saved before the package had layers still load; init.py, ``triplet-keras`` and ``python -m
triplet_keras`` choose the backend, all the same way. Each check runs in a fresh interpreter.

The checks in fresh interpreters run once, on JAX, with one on TensorFlow, whose own import looks
keras up before importing it: registration is Keras' own code, the same on every backend, and
tests/test_models.py and tests/test_precision.py load each kind of file in-process on each backend."""
import ast
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import triplet_keras
from triplet_keras.core.losses import OnlineTripletLoss, TripletMarginLoss
from triplet_keras.models.distribution import GlobalBatchLoss
from triplet_keras.models.networks import (build_augmentation, build_encoder, build_merge_model, build_online_model,
                                           feature_encoder, save_model)

ROOT = Path(__file__).resolve().parents[1]
JAX_INSTALLED = importlib.util.find_spec("jax") is not None


def run_python(code, env_changes):
    """Run ``code`` in a fresh interpreter at the repository root, the environment changed by
    ``env_changes`` (None removes a variable); the finished process, which must have succeeded."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    for name, value in env_changes.items():
        env.pop(name, None) if value is None else env.__setitem__(name, value)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def python(code, env_changes):
    """Run ``code`` as :func:`run_python` does; its last stdout line, parsed as JSON."""
    return json.loads(run_python(code, env_changes).stdout.strip().splitlines()[-1])


@pytest.mark.backend_free  # a fresh interpreter with KERAS_BACKEND unset, whatever the test backend
def test_import_changes_no_environment_variable():
    # (not a module that imports cv2: OpenCV's own import sets LD_LIBRARY_PATH)
    code = ("import json, os; before = dict(os.environ); import triplet_keras, triplet_keras.backend_choice, "
            "triplet_keras.core.strategies, triplet_keras.core.distances; "
            "print(json.dumps([os.environ == before, 'keras' in __import__('sys').modules]))")
    assert python(code, {"KERAS_BACKEND": None, "XLA_FLAGS": None}) == [True, False]


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """{name: (path, expected output)} for every kind of model the package writes, and the test images."""
    folder = tmp_path_factory.mktemp("saved")
    images = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    encoder = build_encoder("small_cnn", None, (16, 16, 3), 8, 0)
    augmentation = build_augmentation(flip=True, crop_padding=2, seed=0)
    merge = build_merge_model(encoder, augmentation)
    merge.compile(optimizer="adam", loss=TripletMarginLoss(0.3))
    online = build_online_model(encoder, augmentation)
    online.compile(optimizer="adam", loss=GlobalBatchLoss(OnlineTripletLoss("batch_semi_hard", 0.3)))
    models = {
        "encoder": (encoder, images),
        "merge_model": (merge, [images, images[::-1], images[:, ::-1]]),
        "online_model": (online, images),
        "feature_encoder": (feature_encoder(encoder, "grid", shift_average=1), images),
    }
    np.save(folder / "images.npy", images)
    saved = {}
    for name, (model, inputs) in models.items():
        path = folder / f"{name}.keras"
        save_model(model, path)
        np.save(folder / f"{name}.npy", model.predict(inputs, verbose=0))
        saved[name] = str(path)
    return folder, saved


LOAD = """
import json, numpy as np
{imports}
report = {{}}
for folder in {folders!r}:
    images = np.load(folder + "/images.npy")
    for name in {names!r}:
        model = keras.saving.load_model(folder + "/" + name + ".keras")  # safe mode
        inputs = [images, images[::-1], images[:, ::-1]] if name == "merge_model" else images
        expected = np.load(folder + "/" + name + ".npy")
        loss = getattr(model, "loss", None)
        report.setdefault(folder, {{}})[name] = [float(np.abs(model.predict(inputs, verbose=0) - expected).max()),
                                               None if loss is None else keras.losses.serialize(loss)["config"]]
print(json.dumps(report))
"""


def assert_loads_as_saved(report, saved):
    """One folder's LOAD report: every model, its outputs as saved, its loss with its configuration."""
    assert sorted(report) == sorted(saved)
    for name, (difference, _) in report.items():
        assert difference < 1e-5, name
    assert report["merge_model"][1]["margin"] == 0.3
    assert report["online_model"][1]["loss"]["config"]["strategy"] == "batch_semi_hard"
    assert report["encoder"][1] is None


# Where the Keras objects lived before the package had layers: files saved then name these modules.
MODULES_BEFORE_THE_LAYERS = {"triplet_keras.core.losses": "triplet_keras.losses",
                             "triplet_keras.models.networks": "triplet_keras.models",
                             "triplet_keras.models.distribution": "triplet_keras.distribution"}


def saved_before_the_layers(folder, saved, target):
    """Copies into ``target`` of the files in ``folder``, their config naming the modules of
    MODULES_BEFORE_THE_LAYERS, as files saved before the package had layers do."""
    shutil.copy(folder / "images.npy", target)
    for name, path in saved.items():
        shutil.copy(folder / f"{name}.npy", target)
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(target / f"{name}.keras", "w") as rewritten:
            for item in source.infolist():
                data = source.read(item)
                if item.filename == "config.json":
                    text = data.decode()
                    for module, before in MODULES_BEFORE_THE_LAYERS.items():
                        text = text.replace(f'"module": "{module}"', f'"module": "{before}"')
                    assert "triplet_keras.core." not in text and "triplet_keras.models." not in text
                    data = text.encode()
                rewritten.writestr(item, data)
    with zipfile.ZipFile(target / "online_model.keras") as rewritten:
        config = rewritten.read("config.json").decode()
    assert all(f'"module": "{before}"' in config for before in MODULES_BEFORE_THE_LAYERS.values())
    return target


@pytest.mark.backend_free  # fresh interpreters on JAX (see the module docstring)
@pytest.mark.parametrize("imports, with_files_before_the_layers", [
    ("import triplet_keras\nimport keras", True),
    ("import keras\nimport triplet_keras", False),
    # a library that looks for keras before importing it (TensorFlow does)
    ("import importlib.util, triplet_keras\nassert importlib.util.find_spec('keras')\nimport keras", False),
])
def test_import_alone_registers_what_load_model_needs(saved_models, imports, with_files_before_the_layers, tmp_path):
    """Each import order loads every kind of file the package writes, in a fresh interpreter; the first
    also loads the same files as saved before the package had layers: Keras finds a registered object
    by its registered name (triplet_keras>Class), not by the module the file names."""
    folder, saved = saved_models
    folders = [str(folder)]
    if with_files_before_the_layers:
        folders.append(str(saved_before_the_layers(folder, saved, tmp_path)))
    report = python(LOAD.format(imports=imports, folders=folders, names=sorted(saved)), {"KERAS_BACKEND": "jax"})
    assert sorted(report) == sorted(folders)
    for loaded in report.values():
        assert_loads_as_saved(loaded, saved)


def registered_in_source():
    """{module: {class name: the decorator's package}} for every class of the package decorated with
    keras.saving.register_keras_serializable, read with ast."""
    found = {}
    for path in sorted((ROOT / "triplet_keras").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            for decorator in getattr(node, "decorator_list", ()):
                call = ast.unparse(decorator.func) if isinstance(decorator, ast.Call) else ""
                if call.endswith("register_keras_serializable"):
                    package = {keyword.arg: ast.literal_eval(keyword.value) for keyword in decorator.keywords}
                    found.setdefault(module, {})[node.name] = package.get("package")
    return found


@pytest.mark.backend_free  # reads source files only
def test_the_registering_modules_are_listed_and_keep_the_package_name():
    found = registered_in_source()
    assert sorted(found) == sorted(triplet_keras.KERAS_OBJECT_MODULES)
    # saved files name each object triplet_keras>Class: that package name must never change
    assert {package for names in found.values() for package in names.values()} == {"triplet_keras"}
    assert sum(len(names) for names in found.values()) >= 10


REGISTRATION = """
import json, sys, warnings
{before}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    {first}
    import keras
registered = sorted(name for name in keras.saving.get_custom_objects() if name.startswith("triplet_keras>"))
finders = [type(finder).__name__ for finder in sys.meta_path if type(finder).__module__ == "triplet_keras"]
try:
    import triplet_keras.models.networks
    later = None
except ImportError as error:
    later = str(error)
print(json.dumps([registered, [str(w.message) for w in caught if str(w.message).startswith("triplet_keras")],
                  finders, later]))
"""


def registration(first, before="", backend="jax"):
    """In a fresh interpreter on ``backend``: run ``before``, then ``first`` and ``import keras``; (the
    registered names, the package's warnings, its finders left on sys.meta_path, the error of a later
    import of triplet_keras.models.networks or None)."""
    return python(REGISTRATION.format(before=before, first=first), {"KERAS_BACKEND": backend})


def expected_names(modules):
    found = registered_in_source()
    return sorted(f"triplet_keras>{name}" for module in modules for name in found[module])


@pytest.mark.backend_free  # fresh interpreters, the backend set here (see the module docstring)
@pytest.mark.parametrize("first, backend", [
    ("import triplet_keras", "jax"), ("import triplet_keras.core.losses", "jax"),
    ("import triplet_keras.models.networks", "jax"), ("import triplet_keras.models.distribution", "jax"),
    ("import triplet_keras", "tensorflow"),  # TensorFlow looks keras up while keras imports it
])
def test_whichever_module_brings_keras_in_every_object_is_registered(first, backend):
    """A registering module whose own import brings keras in is half-imported while the others register."""
    assert registration(first, backend=backend) == [expected_names(triplet_keras.KERAS_OBJECT_MODULES), [], [], None]


@pytest.mark.backend_free  # a fresh interpreter on JAX (see the module docstring)
def test_a_broken_dependency_warns_and_never_fails_import_keras():
    # OpenCV (needed by models.networks through core.images) broken: importing it raises ImportError
    registered, warned, finders, later = registration("import triplet_keras", before='sys.modules["cv2"] = None')
    assert registered == expected_names(["triplet_keras.core.losses", "triplet_keras.models.distribution"])
    assert len(warned) == 1 and "triplet_keras.models.networks" in warned[0] and "cv2" in warned[0]
    assert finders == []  # the finder left all the same
    assert later is not None and "cv2" in later  # the error comes back where the module is used


@pytest.mark.backend_free  # keras is never imported
def test_a_blocked_keras_leaves_the_package_importable():
    code = ("import json, sys, warnings; sys.modules['keras'] = None\n"
            "with warnings.catch_warnings(record=True) as caught:\n    warnings.simplefilter('always')\n"
            "    import triplet_keras, triplet_keras.transfer, triplet_keras.data.datasets\n"
            "try:\n    import keras\nexcept ImportError as error:\n"
            "    ours = [str(w.message) for w in caught if 'triplet_keras' in str(w.message)]\n"
            "    print(json.dumps([str(error), ours]))")
    error, warned = python(code, {})
    assert "keras" in error and warned == []  # Python's own error for a blocked import; nothing of ours


ENTRY = """
import json, os, runpy, sys
sys.argv = [{entry!r}, "--help"]
try:
    {run}
except SystemExit:
    pass
print(json.dumps([os.environ.get("KERAS_BACKEND"), os.environ.get("XLA_FLAGS")]))
print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"), file=sys.stderr)
"""
# The console script runs the function setup.py names, as pip's generated script does.
CONSOLE_SCRIPT = re.search(r"triplet-keras=([\w.]+):(\w+)", (ROOT / "setup.py").read_text()).groups()
ENTRIES = {
    "init.py": 'runpy.run_path("init.py", run_name="__main__")',
    "python -m triplet_keras": 'runpy.run_module("triplet_keras", run_name="__main__", alter_sys=True)',
    "triplet-keras": "from {} import {} as console_script; sys.exit(console_script())".format(*CONSOLE_SCRIPT),
}


def run_entry(entry, env_changes):
    """(KERAS_BACKEND and XLA_FLAGS after ``entry --help``, its stderr lines, the last of them
    TF_CPP_MIN_LOG_LEVEL)."""
    done = run_python(ENTRY.format(entry=entry, run=ENTRIES[entry]), env_changes)
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr.splitlines()


@pytest.mark.backend_free  # fresh interpreters, each with KERAS_BACKEND set or unset here
@pytest.mark.parametrize("entry", sorted(ENTRIES))
def test_entry_points_choose_the_same_way_and_respect_a_set_backend(entry):
    # No GPU in sight: JAX, the fastest measured on a CPU (and an install requirement).
    new_jaxlib = JAX_INSTALLED and tuple(
        int(part) for part in importlib.metadata.version("jaxlib").split(".")[:2]) >= (0, 10)
    state, stderr = run_entry(entry, {"KERAS_BACKEND": None, "XLA_FLAGS": None, "CUDA_VISIBLE_DEVICES": ""})
    assert state == ["jax", "--xla_cpu_use_xnnpack=true" if new_jaxlib else None]
    assert [line for line in stderr if line.startswith("Keras backend")] == [
        "Keras backend: jax (the fastest measured on CPU, no NVIDIA GPU found); "
        "KERAS_BACKEND=tensorflow|torch chooses another"]
    state, stderr = run_entry(entry, {"KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": None, "XLA_FLAGS": None})
    assert state == ["tensorflow", None]
    assert stderr[-1] == "1"  # TF_CPP_MIN_LOG_LEVEL: no INFO lines from TensorFlow's import
    state, stderr = run_entry(entry, {"KERAS_BACKEND": "numpy", "XLA_FLAGS": "--xla_cpu_use_xnnpack=false"})
    assert state == ["numpy", "--xla_cpu_use_xnnpack=false"]
    assert stderr[0] == "Keras backend: numpy (set by KERAS_BACKEND); KERAS_BACKEND=jax|tensorflow|torch chooses another"
