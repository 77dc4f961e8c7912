"""The Predictor: an encoder, the fitted transfer classifier and the class names, saved without pickle;
optionally calibrated (a softmax temperature and an "unknown" threshold) and with a gallery to look up.

A model directory holds ``encoder.keras`` (loaded in Keras safe mode), ``classifier.npz`` (numeric or
string arrays only, loaded with allow_pickle=False), ``gallery.npz`` when there is a gallery (its
embeddings, labels and ids, the last two as unicode arrays) and ``predictor.json``, which names the
format, the class names, the image size, the classifier's configuration and the calibration. Each
file is written to a temporary file and renamed into place; the JSON goes last. Version 1 folders
(before calibration and galleries) still load, uncalibrated and without a gallery; version 2
calibrations (one distance threshold) load as a "distance" score.

Calibration (``calibrate``) on held-out labelled images of the predictor's classes, with s(x) the
classifier's class scores (-distance to each prototype):

* temperature T = argmin_T -mean_i log softmax(s(x_i) / T)[y_i] (the NLL; scipy's bounded search on
  log T); predict_proba then is softmax(s(x) / T);
* acceptance scores, each larger for images less like the calibration images: ``distance``, the
  distance to the nearest prototype in the classifier's own space; ``probability``, 1 - max_c
  softmax(s(x) / T)_c; ``neighbours``, the cosine distance to the k-th nearest gallery embedding
  (k = ``neighbours``, at most the gallery size). ``score`` joins one or more with "+"; the default is
  "neighbours+probability" when the predictor has a gallery, else "distance+probability";
* thresholds t_j: for each score j the m-th smallest of its calibration values, one m for all
  scores: the smallest m that accepts (every score <= its threshold) at least ``accept_rate`` of the
  calibration images; or, with ``target_precision``, the largest m whose accepted calibration images
  are right at least that often. predict answers UNKNOWN where any score is above its threshold.

``lookup`` ranks the gallery by the cosine distance between embeddings (scikit-learn's
NearestNeighbors, brute force).
"""
import json
import os
import warnings
import zipfile
from typing import NamedTuple, Optional

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.neighbors import NearestNeighbors

from .export import atomic_write, write_text
from .images import as_image_size, read_image, resize_image
from .transfer import classifier_from_state

FORMAT = "triplet_keras.predictor"
VERSION = 3
VERSIONS = (1, 2, 3)
CONFIG_FILE = "predictor.json"
ARRAYS_FILE = "classifier.npz"
GALLERY_FILE = "gallery.npz"
ENCODER_FILE = "encoder.keras"
TEMPERATURE_BOUNDS = (1e-4, 1e4)
SCORES = ("distance", "probability", "neighbours")
NEIGHBOURS = 2


class PredictorFormatError(ValueError):
    """A model directory is missing a file or holds an invalid one; the message names the file."""


class ImageBatches:
    """Images to embed, loaded a batch at a time: ``load(indices)`` reads files and resizes to ``size``.

    ``images``: one image (H, W, 3), an array (N, H, W, 3), one path, or a sequence of paths/images.
    """

    def __init__(self, images, size):
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        elif isinstance(images, np.ndarray) and images.ndim == 3:
            images = images[None]
        if isinstance(images, np.ndarray) and (images.ndim != 4 or images.shape[-1] != 3):
            raise ValueError(f"images must have shape (N, H, W, 3) or (H, W, 3), got {images.shape}")
        self.images = images
        self.size = tuple(size)

    def __len__(self):
        return len(self.images)

    def _image(self, item):
        image = read_image(os.fspath(item)) if isinstance(item, (str, os.PathLike)) else np.asarray(item)
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"each image must have shape (H, W, 3), got {image.shape}")
        return resize_image(image, self.size)

    def load(self, indices):
        return np.stack([self._image(self.images[i]) for i in indices])


class Calibration(NamedTuple):
    """Fitted by Predictor.calibrate: softmax ``temperature``; ``thresholds`` {score name: threshold}
    (module docstring); ``accept_rate``, the share of calibration images asked for, or with
    ``target_precision`` the share accepted there; ``neighbours``, the k of the neighbours score."""
    temperature: float
    thresholds: dict
    accept_rate: float
    target_precision: Optional[float] = None
    neighbours: int = NEIGHBOURS


class Gallery(NamedTuple):
    """Items to look up: ``embeddings`` (N, D) float32, ``labels`` and ``ids`` (N,) strings."""
    embeddings: np.ndarray
    labels: np.ndarray
    ids: np.ndarray


class Neighbours(NamedTuple):
    """Lookup result, each (n, k), nearest first: gallery ``labels``, ``ids`` and cosine ``distances``."""
    labels: np.ndarray
    ids: np.ndarray
    distances: np.ndarray


class Predictor:
    """Class names for images: encoder -> embeddings -> classifier (NearestMeanClassifier or
    TransferClassifier). ``class_names[i]`` names ``classifier.classes_[i]`` (default: str of each).
    ``image_size`` (H, W, or n for n x n): inputs are resized to it; default the encoder's input size.

    Methods taking images (arrays or file paths) embed them and call their ``*_embeddings`` twin,
    which takes the output of :meth:`embed` instead.
    """

    UNKNOWN = "unknown"

    def __init__(self, encoder, class_names, classifier, image_size=None, batch_size=64, calibration=None,
                 gallery=None):
        self.encoder = encoder
        self.classifier = classifier
        classes = classifier.classes_
        self.class_names = [str(c) for c in classes] if class_names is None else [str(n) for n in class_names]
        if len(self.class_names) != len(classes):
            raise ValueError(f"{len(self.class_names)} class names for {len(classes)} classifier classes")
        if image_size is None:
            image_size = encoder.input_shape[1:3]
            if None in image_size:
                raise ValueError("the encoder takes any image size: pass image_size=(height, width)")
        self.image_size = as_image_size(image_size)
        self.batch_size = batch_size
        self.calibration = None
        self.gallery = None
        self._index = None
        if gallery is not None:
            self.add_gallery_embeddings(*gallery)
        self.calibration = calibration

    def embed(self, images, batch_size=None):
        """L2-normalised embeddings (N, D), reading and resizing ``batch_size`` images at a time."""
        from .models import embed_images

        return embed_images(self.encoder, ImageBatches(images, self.image_size),
                            batch_size=batch_size or self.batch_size, progress=False)

    def _batched(self, function, embeddings, batch_size=None):
        """np.concatenate of ``function`` over ``batch_size`` rows at a time, so the classifier's
        float64 work stays one batch."""
        step = batch_size or self.batch_size
        return np.concatenate([function(embeddings[start:start + step]) for start in range(0, len(embeddings), step)])

    def _rows_proba(self, rows):
        if self.calibration is None:
            return self.classifier.predict_proba(rows)
        return softmax(self.classifier.class_scores(rows) / self.calibration.temperature, axis=1)

    def _neighbour_index(self):
        """scikit-learn NearestNeighbors over the gallery embeddings (cosine), built once per gallery."""
        if self._index is None:
            self._index = NearestNeighbors(metric="cosine", algorithm="brute").fit(self.gallery.embeddings)
        return self._index

    def acceptance_scores(self, embeddings, names, temperature, neighbours=NEIGHBOURS, batch_size=None):
        """(N, len(names)) acceptance scores (module docstring) of the embeddings, one column per score
        name, larger = less like the calibration images."""
        measures = {
            "distance": lambda rows: self.classifier.prototype_distances(rows).min(axis=1),
            "probability": lambda rows: 1 - softmax(self.classifier.class_scores(rows) / temperature,
                                                    axis=1).max(axis=1),
            "neighbours": lambda rows: self._neighbour_index().kneighbors(
                np.asarray(rows, np.float32), n_neighbors=min(neighbours, len(self.gallery.ids)))[0][:, -1]}
        return self._batched(lambda rows: np.stack([measures[name](rows) for name in names], axis=1),
                             embeddings, batch_size)

    def predict_proba_embeddings(self, embeddings, batch_size=None):
        """(N, n_classes) class probabilities, columns in the order of ``class_names``: with a
        calibration softmax(scores / temperature), else the classifier's own."""
        return self._batched(self._rows_proba, embeddings, batch_size)

    def predict_proba(self, images, batch_size=None):
        """predict_proba_embeddings of the images' embeddings."""
        return self.predict_proba_embeddings(self.embed(images, batch_size), batch_size)

    def predict_embeddings(self, embeddings, batch_size=None, reject_unknown=True):
        """List of N class names; with a calibration and ``reject_unknown``, UNKNOWN for each embedding
        with an acceptance score above its threshold."""
        best = np.argmax(self.predict_proba_embeddings(embeddings, batch_size), axis=1)
        names = [self.class_names[i] for i in best]
        if self.calibration is None or not reject_unknown:
            return names
        unknown = self.unknown_embeddings(embeddings, batch_size)
        return [self.UNKNOWN if beyond else name for name, beyond in zip(names, unknown)]

    def unknown_embeddings(self, embeddings, batch_size=None):
        """(N,) bools: True where an acceptance score of the calibrated predictor is above its threshold."""
        if self.calibration is None:
            raise ValueError("the predictor is not calibrated: call calibrate(images, labels) first")
        calibration = self.calibration
        scores = self.acceptance_scores(embeddings, list(calibration.thresholds), calibration.temperature,
                                        calibration.neighbours, batch_size)
        return np.any(scores > np.array(list(calibration.thresholds.values())), axis=1)

    def predict(self, images, batch_size=None, reject_unknown=True):
        """predict_embeddings of the images' embeddings."""
        return self.predict_embeddings(self.embed(images, batch_size), batch_size, reject_unknown)

    def _label_indices(self, labels):
        """Indices into class_names of ``labels`` (class names, or values whose str is one)."""
        labels = [str(label) for label in np.asarray(labels, dtype=object).ravel()]
        if not labels:
            raise ValueError("no labels given: pass one class name per image")
        position = {name: i for i, name in enumerate(self.class_names)}
        unknown = sorted(set(labels) - set(position))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not class names of the predictor {self.class_names}")
        return np.array([position[label] for label in labels])

    def _calibration_arguments(self, labels, accept_rate, score, target_precision, neighbours):
        """(label indices, score names) after checking every argument of calibrate."""
        if not 0.0 < accept_rate <= 1.0:
            raise ValueError(f"accept_rate must be in (0, 1], got {accept_rate!r}")
        if target_precision is not None and not 0.0 < target_precision <= 1.0:
            raise ValueError(f"target_precision must be None or in (0, 1], got {target_precision!r}")
        if isinstance(neighbours, bool) or not isinstance(neighbours, (int, np.integer)) or neighbours < 1:
            raise ValueError(f"neighbours must be an int >= 1, got {neighbours!r}")
        if score is None:
            score = "neighbours+probability" if self.gallery is not None else "distance+probability"
        names = str(score).split("+")
        if not names or set(names) - set(SCORES) or len(set(names)) != len(names):
            raise ValueError(f"score must be one or more of {', '.join(SCORES)} joined by '+', got {score!r}")
        if "neighbours" in names and self.gallery is None:
            raise ValueError("the neighbours score needs a gallery: call add_gallery(images, labels) first")
        return self._label_indices(labels), names

    def calibrate_embeddings(self, embeddings, labels, accept_rate=0.95, score=None, target_precision=None,
                             neighbours=NEIGHBOURS):
        """Fit and set the temperature and the thresholds of the ``score`` names (module docstring) on
        held-out embeddings whose ``labels`` are class names of the predictor; ``target_precision``, when
        given, replaces ``accept_rate``. Returns the Calibration."""
        index, names = self._calibration_arguments(labels, accept_rate, score, target_precision, neighbours)
        if len(embeddings) != len(index):
            raise ValueError(f"{len(embeddings)} images but {len(index)} labels")
        scores = self._batched(self.classifier.class_scores, embeddings)
        rows = np.arange(len(index))

        def nll(log_temperature):
            return -np.mean(log_softmax(scores / np.exp(log_temperature), axis=1)[rows, index])

        temperature = float(np.exp(minimize_scalar(nll, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded").x))
        values = self.acceptance_scores(embeddings, names, temperature, neighbours)
        correct = None if target_precision is None else np.argmax(scores, axis=1) == index
        thresholds, share = acceptance_thresholds(values, accept_rate, correct, target_precision)
        self.calibration = Calibration(temperature, dict(zip(names, map(float, thresholds))),
                                       float(accept_rate if target_precision is None else share),
                                       None if target_precision is None else float(target_precision), int(neighbours))
        return self.calibration

    def calibrate(self, images, labels, accept_rate=0.95, score=None, target_precision=None, neighbours=NEIGHBOURS):
        """calibrate_embeddings of the images' embeddings."""
        # bad arguments fail before the images are read
        self._calibration_arguments(labels, accept_rate, score, target_precision, neighbours)
        return self.calibrate_embeddings(self.embed(images), labels, accept_rate, score, target_precision, neighbours)

    def add_gallery_embeddings(self, embeddings, labels, ids=None):
        """Append items to the gallery: embeddings (N, D), labels (class names), ids (strings such as
        file paths; default the running numbers after the items already there)."""
        embeddings = np.asarray(embeddings, np.float32)
        names = np.array(self.class_names)[self._label_indices(labels)]
        start = 0 if self.gallery is None else len(self.gallery.ids)
        ids = np.arange(start, start + len(names)) if ids is None else np.asarray(ids)
        ids = ids.astype(str)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.classifier.n_features_in_:
            raise ValueError(f"gallery embeddings must be (N, {self.classifier.n_features_in_}), got {embeddings.shape}")
        if not len(embeddings) == len(names) == len(ids):
            raise ValueError(f"{len(embeddings)} gallery images, {len(names)} labels and {len(ids)} ids")
        if self.gallery is not None:
            embeddings, names, ids = (np.concatenate([old, new]) for old, new in
                                      zip(self.gallery, (embeddings, names, ids)))
        self.gallery = Gallery(embeddings, names, ids)
        self._index = None
        if self.calibration is not None and "neighbours" in self.calibration.thresholds:
            warnings.warn("the gallery changed after calibrating with the neighbours score: call calibrate again",
                          stacklevel=2)

    def add_gallery(self, images, labels, ids=None):
        """add_gallery_embeddings of the images' embeddings."""
        self._label_indices(labels)
        self.add_gallery_embeddings(self.embed(images), labels, ids)

    def lookup_embeddings(self, embeddings, k=5):
        """The k gallery items nearest to each embedding (cosine distance), as Neighbours (n, k)."""
        if self.gallery is None:
            raise ValueError("the predictor has no gallery: call add_gallery(images, labels, ids) first")
        if not 1 <= k <= len(self.gallery.ids):
            raise ValueError(f"k must be between 1 and the gallery size {len(self.gallery.ids)}, got {k!r}")
        found, nearest = self._neighbour_index().kneighbors(np.asarray(embeddings, np.float32), n_neighbors=k)
        return Neighbours(self.gallery.labels[nearest], self.gallery.ids[nearest], found)

    def lookup(self, images, k=5):
        """lookup_embeddings of the images' embeddings."""
        return self.lookup_embeddings(self.embed(images), k)

    def save(self, directory):
        """Write encoder.keras, classifier.npz, gallery.npz (when there is a gallery) and predictor.json
        into ``directory``."""
        from .models import save_model

        os.makedirs(directory, exist_ok=True)
        save_model(self.encoder, os.path.join(directory, ENCODER_FILE))
        state, arrays = self.classifier.get_state()
        atomic_write(os.path.join(directory, ARRAYS_FILE), lambda temporary: np.savez(temporary, **arrays))
        if self.gallery is not None:
            atomic_write(os.path.join(directory, GALLERY_FILE),
                         lambda temporary: np.savez(temporary, **self.gallery._asdict()))
        config = {"format": FORMAT, "version": VERSION, "class_names": self.class_names,
                  "image_size": list(self.image_size), "classifier": state,
                  "calibration": None if self.calibration is None else self.calibration._asdict(),
                  "gallery": self.gallery is not None}
        write_text(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2))

    @classmethod
    def load(cls, directory, batch_size=64):
        """Read a directory written by :meth:`save`; PredictorFormatError names any bad file."""
        from .models import load_model

        config_path = os.path.join(directory, CONFIG_FILE)
        config = _read_config(config_path)
        arrays_path = os.path.join(directory, ARRAYS_FILE)
        try:
            with np.load(arrays_path, allow_pickle=False) as stored:
                classifier = classifier_from_state(config["classifier"], dict(stored))
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
            raise PredictorFormatError(f"invalid classifier file {arrays_path!r}: {error}") from error
        encoder_path = os.path.join(directory, ENCODER_FILE)
        try:
            encoder = load_model(encoder_path)
        except Exception as error:  # Keras raises many types for a bad file; all mean the same here
            raise PredictorFormatError(f"invalid encoder file {encoder_path!r}: {error}") from error
        if encoder.output_shape[-1] != classifier.n_features_in_:
            raise PredictorFormatError(f"{encoder_path!r} gives {encoder.output_shape[-1]}-d embeddings but "
                                       f"{arrays_path!r} expects {classifier.n_features_in_}")
        calibration = config.get("calibration")
        if calibration is not None and config["version"] == 2:
            calibration = {"temperature": calibration["temperature"], "accept_rate": calibration["accept_rate"],
                           "thresholds": {"distance": calibration["threshold"]}}
        try:
            predictor = cls(encoder, config["class_names"], classifier, config["image_size"], batch_size)
        except ValueError as error:
            raise PredictorFormatError(f"{config_path!r}: {error}") from error
        if config.get("gallery"):
            gallery_path = os.path.join(directory, GALLERY_FILE)
            try:
                with np.load(gallery_path, allow_pickle=False) as stored:
                    predictor.add_gallery_embeddings(*(stored[name] for name in Gallery._fields))
            except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
                raise PredictorFormatError(f"invalid gallery file {gallery_path!r}: {error}") from error
        if calibration is not None and "neighbours" in calibration["thresholds"] and predictor.gallery is None:
            raise PredictorFormatError(f"{config_path!r}: the neighbours score needs a gallery, and there is none")
        predictor.calibration = None if calibration is None else Calibration(**calibration)
        return predictor


def _read_config(path):
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
            problems += _calibration_problems(config.get("calibration", False), config["version"])
            if not isinstance(config.get("gallery"), bool):
                problems.append("'gallery' must be true or false")
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


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def _calibration_problems(calibration, version):
    """What is wrong with a predictor.json 'calibration' entry: null, or a Calibration's fields (version 3)
    or temperature, threshold and accept_rate (version 2)."""
    if calibration is None:
        return []
    fields = ("temperature", "threshold", "accept_rate") if version == 2 else Calibration._fields
    if not isinstance(calibration, dict) or set(calibration) != set(fields):
        return [f"'calibration' must be null or an object with {', '.join(fields)}"]
    if version == 2:
        thresholds, target_precision, neighbours = {"distance": calibration["threshold"]}, None, NEIGHBOURS
    else:
        thresholds, target_precision, neighbours = (calibration[key] for key in ("thresholds", "target_precision",
                                                                               "neighbours"))
    if not isinstance(thresholds, dict) or not thresholds or set(thresholds) - set(SCORES):
        return [f"'calibration' thresholds must name one or more of {', '.join(SCORES)}"]
    values = [calibration["temperature"], calibration["accept_rate"], *thresholds.values()]
    if not all(map(_is_number, values)) or not (target_precision is None or _is_number(target_precision)):
        return ["'calibration' values must be finite numbers"]
    if calibration["temperature"] <= 0 or min(thresholds.values()) < 0 or not 0 < calibration["accept_rate"] <= 1 \
            or not (target_precision is None or 0 < target_precision <= 1):
        return ["'calibration' needs temperature > 0, thresholds >= 0, accept_rate and target_precision in (0, 1]"]
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 1:
        return ["'calibration' neighbours must be an int >= 1"]
    return []


def acceptance_thresholds(scores, accept_rate=0.95, correct=None, target_precision=None):
    """Thresholds (j,) on calibration acceptance scores (n, j), larger = stranger, and the share of rows
    they accept (every score <= its threshold): each column's m-th smallest value, one m for all; the
    smallest m accepting at least ``accept_rate`` of the rows, or with ``target_precision`` the largest m
    whose accepted rows have a mean of ``correct`` (n,) bools at least that."""
    ordered = np.sort(scores, axis=0)
    # row i is accepted at m exactly when each of its scores has fewer than m values below it
    first = 1 + np.max([np.searchsorted(column, values) for column, values in zip(ordered.T, scores.T)], axis=0)
    if target_precision is None:
        m = np.sort(first)[int(np.ceil(accept_rate * len(first) - 1e-9)) - 1]
    else:
        order = np.argsort(first, kind="stable")
        ranks = first[order]
        precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
        ends = np.r_[ranks[1:] != ranks[:-1], True]  # where a group of equal ranks ends: a threshold's accepted set
        reached = np.flatnonzero(ends & (precision >= target_precision))
        if not len(reached):
            raise ValueError(f"no threshold reaches precision {target_precision} on the calibration images "
                             f"(their accuracy is {np.mean(correct):.3f}): lower target_precision")
        m = ranks[reached[-1]]
    return ordered[m - 1], float(np.mean(first <= m))


def predict(images, model_dir, batch_size=64, reject_unknown=True):
    """Class names for ``images`` (array(s) or file paths) with the Predictor saved in ``model_dir``."""
    return Predictor.load(model_dir, batch_size=batch_size).predict(images, reject_unknown=reject_unknown)
