"""Hostile input, fuzzed with hypothesis: every outcome is a result or a documented error.

Inputs: image folders (random bytes, mutated PNG/JPEG, odd file names), CIFAR archives (mutated
gzip bytes; members with ``..``, absolute paths, links), params.json (random JSON and bytes),
predictor directories (mutated predictor.json, classifier.npz, encoder.keras) and the predict
command line (random argv). Runs are derandomized, so CI sees the same examples every time.
"""
import contextlib
import hashlib
import io
import json
import os
import tarfile
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from images_factory import random_rgb, write_image
from test_datasets import _add, _cifar_archive
from triplet_keras import __main__ as cli
from triplet_keras.data import datasets
from triplet_keras.data.datasets import DatasetError, load_dataset, read_cifar10_archive
from triplet_keras.pipeline.config import load_config
from triplet_keras.pipeline.params import ParamsError
from triplet_keras.serving.predict import Predictor, PredictorFormatError

COUNTS = {}


def fuzz(examples):
    """Hypothesis settings for one fuzz target: ``examples`` examples, reproducible, no database."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def tally(target):
    COUNTS[target] = COUNTS.get(target, 0) + 1


@pytest.fixture(autouse=True)
def examples_ran(request):
    """After each fuzz target, whether run alone or in any order: it ran at least 50 examples."""
    COUNTS.clear()
    yield
    configured = getattr(request.function, "_hypothesis_internal_use_settings", None)
    if configured is not None:
        assert len(COUNTS) == 1 and min(COUNTS.values()) >= 50, (request.function.__name__, COUNTS)


@st.composite
def mutated(draw, original):
    """``original`` bytes with a few random byte flips, insertions, deletions or a truncation."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= draw(st.integers(1, 255))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        else:
            del data[at:]
    return bytes(data)


def encoded(extension, seed=0):
    return cv2.imencode(extension, random_rgb(12, 10, seed))[1].tobytes()


PNG, JPEG = encoded(".png"), encoded(".jpg")
NAME = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00"), min_size=1,
               max_size=30).filter(lambda name: name not in (".", "..") and len(name.encode()) < 200)


# ------------------------------------------------------------------------------------------ folders
@pytest.mark.backend_free  # numpy / OpenCV / parameters only
@fuzz(300)
@given(content=st.one_of(st.binary(max_size=300), mutated(PNG), mutated(JPEG)), name=NAME,
       extension=st.sampled_from([".png", ".jpg", ".JPEG", ".bmp", ".webp", ".tif"]))
def test_folder_loader_takes_any_file(content, name, extension):
    tally("folders")
    with tempfile.TemporaryDirectory() as root:
        for label in ("a", "b"):
            for seed in range(2):
                write_image(os.path.join(root, label, f"{seed}.png"), random_rgb(12, 10, seed))
        with open(os.path.join(root, "a", name + extension), "wb") as file:
            file.write(content)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                data = load_dataset(root, image_size=(8, 8), validation_fraction=0.0, test_fraction=0.0)
            except DatasetError:
                return
            images = data.train.load(np.arange(len(data.train)))
    assert images.shape[1:] == (8, 8, 3) and images.dtype == np.uint8 and len(images) in (4, 5)


# -------------------------------------------------------------------------------------- CIFAR archive
@pytest.fixture(scope="module")
def cifar_bytes(tmp_path_factory):
    path = _cifar_archive(tmp_path_factory.mktemp("cifar") / "a.tar.gz")
    return open(path, "rb").read()


def read_accepted(data, monkeypatch):
    """read_cifar10_archive on ``data`` with its checksum accepted (to reach the tar and pickle code)."""
    with tempfile.NamedTemporaryFile(suffix=".tar.gz") as file:
        file.write(data)
        file.flush()
        monkeypatch.setattr(datasets, "CIFAR10_CHECKSUMS", {"md5": hashlib.md5(data).hexdigest()})
        return read_cifar10_archive(file.name)


@pytest.mark.backend_free  # numpy / OpenCV / parameters only
@fuzz(400)
@given(data=st.data())
def test_mutated_cifar_archives_load_or_raise_dataset_error(cifar_bytes, monkeypatch, data):
    tally("cifar archives")
    archive = data.draw(mutated(cifar_bytes))
    try:
        train_images, *_ = read_accepted(archive, monkeypatch)
    except DatasetError:
        return
    assert train_images.shape[1:] == (32, 32, 3)


@pytest.mark.backend_free  # numpy / OpenCV / parameters only
@fuzz(150)
@given(name=st.sampled_from(["../evil", "/etc/evil", "cifar-10-batches-py/../../evil", "\\evil", "a/../../b"])
       | st.builds("cifar-10-batches-py/{}".format, NAME),
       kind=st.sampled_from([tarfile.REGTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE]),
       target=st.sampled_from(["/etc/passwd", "../x", "cifar-10-batches-py/data_batch_1"]))
def test_archive_members_that_escape_or_link_are_refused(tmp_path, monkeypatch, name, kind, target):
    tally("archive members")
    path = tmp_path / "a.tar.gz"
    _cifar_archive(path, extra=lambda tar: _add(tar, name, b"" if kind != tarfile.REGTYPE else b"x",
                                                type=kind, linkname=target))
    hostile = kind != tarfile.REGTYPE or name.startswith(("/", "\\")) or ".." in name.split("/")
    try:
        read_accepted(path.read_bytes(), monkeypatch)
    except DatasetError as error:
        assert hostile and "refusing unsafe archive member" in str(error)
        return
    assert not hostile


# ------------------------------------------------------------------------------------------- params
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)
KEYS = st.sampled_from(["dataset", "epochs", "margin", "shots", "precision", "image_size", "squared", "zzz"])


@pytest.mark.backend_free  # numpy / OpenCV / parameters only
@fuzz(600)
@given(content=st.one_of(JSON.map(json.dumps), st.dictionaries(KEYS, JSON, max_size=5).map(json.dumps),
                         st.binary(max_size=60).map(lambda b: b.decode("latin-1"))))
def test_params_json_loads_or_raises_params_error(tmp_path, content):
    tally("params.json")
    (tmp_path / "params.json").write_bytes(content.encode("utf-8", "surrogatepass"))
    try:
        config = load_config(str(tmp_path))
    except ParamsError:
        return
    assert isinstance(config.training.epochs, int) and isinstance(config.training.margin, float)


# ---------------------------------------------------------------------------------------- predictor
@pytest.fixture(scope="module")
def predictor_dir(tmp_path_factory):
    import keras

    from triplet_keras.models.networks import L2Normalize
    from triplet_keras.transfer import NearestMeanClassifier

    inputs = keras.Input((8, 8, 3))
    outputs = L2Normalize()(keras.layers.Dense(4)(keras.layers.Flatten()(inputs)))
    rng = np.random.default_rng(0)
    classifier = NearestMeanClassifier().fit(rng.normal(size=(6, 4)), [0, 0, 0, 1, 1, 1])
    directory = tmp_path_factory.mktemp("predictor")
    Predictor(keras.Model(inputs, outputs), ["cat", "dog"], classifier).save(str(directory))
    write_image(str(directory / "image.png"), random_rgb(8, 8))
    return directory


def copy_with(source, target, name, content):
    for entry in ("predictor.json", "classifier.npz", "encoder.keras"):
        (target / entry).write_bytes(content if entry == name else (source / entry).read_bytes())


@fuzz(200)
@given(data=st.data(), name=st.sampled_from(["predictor.json", "classifier.npz", "encoder.keras"]))
def test_mutated_predictor_files_load_or_raise_predictor_format_error(predictor_dir, tmp_path, data, name):
    tally("predictor files")
    content = data.draw(mutated((predictor_dir / name).read_bytes()))
    copy_with(predictor_dir, tmp_path, name, content)
    try:
        predictor = Predictor.load(str(tmp_path))
    except PredictorFormatError:
        return
    assert set(predictor.predict(random_rgb(8, 8)[None])) <= set(predictor.class_names)


# ----------------------------------------------------------------------------------- predict command
@fuzz(200)
@given(argv=st.lists(st.one_of(st.sampled_from(["predict", "--model_dir", "--proba", "--batch_size", "-h", "0",
                                                "-1", "MODEL", "IMAGE", "GARBAGE", "MISSING", "FOLDER", "--x"]),
                               st.text(max_size=10)), max_size=7))
def test_predict_command_line_never_shows_a_traceback(predictor_dir, tmp_path, argv):
    tally("predict argv")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    paths = {"MODEL": predictor_dir, "IMAGE": predictor_dir / "image.png", "GARBAGE": garbage,
             "MISSING": tmp_path / "missing.jpg", "FOLDER": tmp_path}
    argv = [str(paths.get(arg, arg)) for arg in argv]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(argv)
        except SystemExit as exit:
            code = exit.code
    assert code in (0, 2), (argv, code, err.getvalue())
    assert "Traceback" not in err.getvalue()
    if code == 2:
        assert err.getvalue().strip(), argv


def documented_example_counts():
    """The "examples" column of the fuzzing table in docs/reliability.md."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "reliability.md").read_text(encoding="utf-8")
    rows = text.split("| input | examples |", 1)[1].split("\n\n", 1)[0].splitlines()[2:]
    return [int(row.split("|")[2]) for row in rows]


@pytest.mark.backend_free
def test_every_fuzz_target_runs_its_documented_example_count():
    """The counts in docs/reliability.md are each target's settings (that each ran them: examples_ran)."""
    targets = {name: test._hypothesis_internal_use_settings.max_examples for name, test in globals().items()
               if name.startswith("test_") and hasattr(test, "_hypothesis_internal_use_settings")}
    assert len(targets) == 6 and sorted(targets.values()) == sorted(documented_example_counts()), targets
