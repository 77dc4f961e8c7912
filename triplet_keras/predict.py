"""The Predictor: an encoder, the fitted transfer classifier and the class names, saved without pickle;
optionally calibrated (a softmax temperature and an "unknown" threshold) and with a gallery to look up.

A model directory holds ``encoder.keras`` (loaded in Keras safe mode), ``classifier.npz`` (numeric or
string arrays only, loaded with allow_pickle=False), ``gallery.npz`` when there is a gallery (its
embeddings, labels and ids, the last two as unicode arrays) and ``predictor.json``, which names the
format, the class names, the image size, the classifier's configuration and the calibration. Each
file is written to a temporary file and renamed into place; the JSON goes last. Version 1 folders
(before calibration and galleries) still load, uncalibrated and without a gallery.

Calibration (``calibrate``) on held-out labelled images of the predictor's classes, with s(x) the
classifier's class scores (-distance to each prototype) and d(x) = min_c distance(x, prototype_c) in
the classifier's own space:

* temperature T = argmin_T -mean_i log softmax(s(x_i) / T)[y_i] (the NLL; scipy's bounded search on
  log T); predict_proba then is softmax(s(x) / T);
* threshold t = the ``accept_rate`` quantile of d(x_i) (numpy's "higher" quantile, so at least that
  share of the calibration images has d <= t); predict answers UNKNOWN where d(x) > t.

``lookup`` ranks the gallery by the cosine distance between embeddings (scikit-learn's
NearestNeighbors, brute force).
"""
import json
import os
import zipfile
from typing import NamedTuple

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.neighbors import NearestNeighbors

from .export import atomic_write, write_text
from .images import as_image_size, read_image, resize_image
from .transfer import classifier_from_state

FORMAT = "triplet_keras.predictor"
VERSION = 2
VERSIONS = (1, 2)
CONFIG_FILE = "predictor.json"
ARRAYS_FILE = "classifier.npz"
GALLERY_FILE = "gallery.npz"
ENCODER_FILE = "encoder.keras"
TEMPERATURE_BOUNDS = (1e-4, 1e4)


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
    """Fitted by Predictor.calibrate: softmax ``temperature``, distance ``threshold`` and the
    ``accept_rate`` it was chosen for."""
    temperature: float
    threshold: float
    accept_rate: float


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
        self.calibration = calibration
        self.gallery = None
        self._index = None
        if gallery is not None:
            self.add_gallery_embeddings(*gallery)

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

    def _rows_nearest(self, rows):
        return self.classifier.prototype_distances(rows).min(axis=1)

    def predict_proba_embeddings(self, embeddings, batch_size=None):
        """(N, n_classes) class probabilities, columns in the order of ``class_names``: with a
        calibration softmax(scores / temperature), else the classifier's own."""
        return self._batched(self._rows_proba, embeddings, batch_size)

    def predict_proba(self, images, batch_size=None):
        """predict_proba_embeddings of the images' embeddings."""
        return self.predict_proba_embeddings(self.embed(images, batch_size), batch_size)

    def predict_embeddings(self, embeddings, batch_size=None, reject_unknown=True):
        """List of N class names; with a calibration and ``reject_unknown``, UNKNOWN for each embedding
        farther than the threshold from every prototype."""
        best = np.argmax(self.predict_proba_embeddings(embeddings, batch_size), axis=1)
        names = [self.class_names[i] for i in best]
        if self.calibration is None or not reject_unknown:
            return names
        far = self._batched(self._rows_nearest, embeddings, batch_size) > self.calibration.threshold
        return [self.UNKNOWN if beyond else name for name, beyond in zip(names, far)]

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

    def _calibration_labels(self, labels, accept_rate):
        """_label_indices(labels), after checking accept_rate."""
        if not 0.0 < accept_rate <= 1.0:
            raise ValueError(f"accept_rate must be in (0, 1], got {accept_rate!r}")
        return self._label_indices(labels)

    def calibrate_embeddings(self, embeddings, labels, accept_rate=0.95):
        """Fit and set the temperature and threshold (module docstring) on held-out embeddings whose
        ``labels`` are class names of the predictor; returns the Calibration."""
        index = self._calibration_labels(labels, accept_rate)
        if len(embeddings) != len(index):
            raise ValueError(f"{len(embeddings)} images but {len(index)} labels")
        scores = self._batched(self.classifier.class_scores, embeddings)
        rows = np.arange(len(index))

        def nll(log_temperature):
            return -np.mean(log_softmax(scores / np.exp(log_temperature), axis=1)[rows, index])

        fitted = minimize_scalar(nll, bounds=np.log(TEMPERATURE_BOUNDS), method="bounded")
        nearest = self._batched(self._rows_nearest, embeddings)
        self.calibration = Calibration(float(np.exp(fitted.x)), float(np.quantile(nearest, accept_rate, method="higher")),
                                       float(accept_rate))
        return self.calibration

    def calibrate(self, images, labels, accept_rate=0.95):
        """calibrate_embeddings of the images' embeddings."""
        self._calibration_labels(labels, accept_rate)  # bad arguments fail before the images are read
        return self.calibrate_embeddings(self.embed(images), labels, accept_rate)

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
        if self._index is None:
            self._index = NearestNeighbors(metric="cosine", algorithm="brute").fit(self.gallery.embeddings)
        found, nearest = self._index.kneighbors(np.asarray(embeddings, np.float32), n_neighbors=k)
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
        try:
            predictor = cls(encoder, config["class_names"], classifier, config["image_size"], batch_size,
                            None if calibration is None else Calibration(**calibration))
        except ValueError as error:
            raise PredictorFormatError(f"{config_path!r}: {error}") from error
        if config.get("gallery"):
            gallery_path = os.path.join(directory, GALLERY_FILE)
            try:
                with np.load(gallery_path, allow_pickle=False) as stored:
                    predictor.add_gallery_embeddings(*(stored[name] for name in Gallery._fields))
            except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
                raise PredictorFormatError(f"invalid gallery file {gallery_path!r}: {error}") from error
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
            problems += _calibration_problems(config.get("calibration", False))
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


def _calibration_problems(calibration):
    """What is wrong with a predictor.json 'calibration' entry (null or a Calibration's fields)."""
    if calibration is None:
        return []
    if not isinstance(calibration, dict) or set(calibration) != set(Calibration._fields):
        return [f"'calibration' must be null or an object with {', '.join(Calibration._fields)}"]
    values = [calibration[name] for name in Calibration._fields]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in values):
        return ["'calibration' values must be finite numbers"]
    temperature, threshold, accept_rate = values
    if temperature <= 0 or threshold < 0 or not 0 < accept_rate <= 1:
        return ["'calibration' needs temperature > 0, threshold >= 0 and accept_rate in (0, 1]"]
    return []


def predict(images, model_dir, batch_size=64, reject_unknown=True):
    """Class names for ``images`` (array(s) or file paths) with the Predictor saved in ``model_dir``."""
    return Predictor.load(model_dir, batch_size=batch_size).predict(images, reject_unknown=reject_unknown)
