"""A Predictor's folder, saved without pickle.

A model directory holds ``encoder.keras`` (loaded in Keras safe mode), ``classifier.npz`` (numeric or
string arrays only, loaded with allow_pickle=False), ``gallery.npz`` when there is a gallery (its
embeddings, labels and ids, the last two as unicode arrays, and, when its index is approximate,
``index_centroids`` and ``index_cells``: see triplet_keras.serving.gallery) and ``predictor.json``, which
names the format, the class names, the image size, the classifier's configuration and the calibration. Each
file is written to a temporary file and renamed into place; the JSON goes last. Version 1 folders
(before calibration and galleries) still load, uncalibrated and without a gallery; version 2
calibrations (one distance threshold) load as a "distance" score; a gallery.npz without an index
(older folders, small galleries) gets one built when first searched.
"""
import json
import os
import zipfile

import numpy as np

from triplet_keras.core.export import atomic_write, write_text
from triplet_keras.core.images import as_image_size
from triplet_keras.transfer import classifier_from_state
from .calibration import saved_calibration, saved_calibration_problems
from .gallery import Gallery, GalleryIndex

FORMAT = "triplet_keras.predictor"
VERSION = 3
VERSIONS = (1, 2, 3)
CONFIG_FILE = "predictor.json"
ARRAYS_FILE = "classifier.npz"
GALLERY_FILE = "gallery.npz"
ENCODER_FILE = "encoder.keras"
# what np.load raises for a missing, truncated or hostile .npz
NPZ_ERRORS = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


class PredictorFormatError(ValueError):
    """A model directory is missing a file or holds an invalid one; the message names the file."""


def save_predictor(predictor, directory):
    """Write the predictor's encoder.keras, classifier.npz, gallery.npz (when it has a gallery) and
    predictor.json into ``directory``."""
    from triplet_keras.models.networks import save_model

    os.makedirs(directory, exist_ok=True)
    save_model(predictor.encoder, os.path.join(directory, ENCODER_FILE))
    state, arrays = predictor.classifier.get_state()
    atomic_write(os.path.join(directory, ARRAYS_FILE), lambda temporary: np.savez(temporary, **arrays))
    if predictor.gallery is not None:
        arrays = predictor.gallery._asdict()
        index = predictor.neighbour_index()
        if not index.exact:
            arrays.update(index_centroids=index.centroids, index_cells=index.cells)
        atomic_write(os.path.join(directory, GALLERY_FILE), lambda temporary: np.savez(temporary, **arrays))
    calibration = predictor.calibration
    config = {"format": FORMAT, "version": VERSION, "class_names": predictor.class_names,
              "image_size": list(predictor.image_size), "classifier": state,
              "calibration": None if calibration is None else calibration._asdict(),
              "gallery": predictor.gallery is not None, "features_from": predictor.features_from}
    write_text(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2))


def load_predictor(predictor_class, directory, batch_size=64):
    """``predictor_class(encoder, class_names, classifier, image_size, batch_size)`` from a directory
    written by save_predictor, with its gallery and calibration; PredictorFormatError names any bad file."""
    from triplet_keras.models.networks import load_model

    config_path = os.path.join(directory, CONFIG_FILE)
    config = read_config(config_path)
    arrays_path = os.path.join(directory, ARRAYS_FILE)
    try:
        with np.load(arrays_path, allow_pickle=False) as stored:
            classifier = classifier_from_state(config["classifier"], dict(stored))
    except NPZ_ERRORS as error:
        raise PredictorFormatError(f"invalid classifier file {arrays_path!r}: {error}") from error
    encoder_path = os.path.join(directory, ENCODER_FILE)
    try:
        encoder = load_model(encoder_path)
    except Exception as error:  # Keras raises many types for a bad file; all mean the same here
        raise PredictorFormatError(f"invalid encoder file {encoder_path!r}: {error}") from error
    if encoder.output_shape[-1] != classifier.n_features_in_:
        raise PredictorFormatError(f"{encoder_path!r} gives {encoder.output_shape[-1]}-d embeddings but "
                                   f"{arrays_path!r} expects {classifier.n_features_in_}")
    try:
        predictor = predictor_class(encoder, config["class_names"], classifier, config["image_size"], batch_size,
                                    features_from=config.get("features_from"))
    except ValueError as error:
        raise PredictorFormatError(f"{config_path!r}: {error}") from error
    if config.get("gallery"):
        gallery_path = os.path.join(directory, GALLERY_FILE)
        try:
            with np.load(gallery_path, allow_pickle=False) as stored:
                predictor.add_gallery_embeddings(*(stored[name] for name in Gallery._fields))
                if "index_cells" in stored.files:
                    predictor.gallery_index = GalleryIndex.from_cells(predictor.gallery.embeddings,
                                                                      stored["index_centroids"], stored["index_cells"])
        except NPZ_ERRORS as error:
            raise PredictorFormatError(f"invalid gallery file {gallery_path!r}: {error}") from error
    calibration = saved_calibration(config.get("calibration"), config["version"])
    if calibration is not None and "neighbours" in calibration.thresholds and predictor.gallery is None:
        raise PredictorFormatError(f"{config_path!r}: the neighbours score needs a gallery, and there is none")
    predictor.calibration = calibration
    return predictor


def read_config(path):
    """predictor.json, checked key by key."""
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except FileNotFoundError as error:
        raise PredictorFormatError(f"not a model directory: {path!r} is missing") from error
    except (OSError, ValueError) as error:
        raise PredictorFormatError(f"cannot read {path!r}: {error}") from error
    expected = {"format": str, "version": int, "class_names": list, "image_size": list, "classifier": dict}
    problems = [f"{key!r} must be a {kind.__name__}" for key, kind in expected.items()
                if not isinstance(config, dict) or not isinstance(config.get(key), kind)]
    if not problems:
        if config["format"] != FORMAT or config["version"] not in VERSIONS:
            problems.append(f"format {config['format']!r} version {config['version']!r} is not "
                            f"{FORMAT!r} version {' or '.join(map(str, VERSIONS))}")
        elif config["version"] >= 2:
            problems += saved_calibration_problems(config.get("calibration", False), config["version"])
            if not isinstance(config.get("gallery"), bool):
                problems.append("'gallery' must be true or false")
        if not isinstance(config.get("features_from"), (str, type(None))):
            problems.append("'features_from' must be a string or null")
        if not all(isinstance(name, str) for name in config["class_names"]):
            problems.append("'class_names' must be strings")
        try:
            as_image_size(config["image_size"], "'image_size'")
        except ValueError as error:
            problems.append(str(error))
        if not isinstance(config["classifier"].get("params"), dict):
            problems.append("'classifier' must hold a 'params' object")
    if problems:
        raise PredictorFormatError(f"invalid {path!r}: " + "; ".join(problems))
    return config
