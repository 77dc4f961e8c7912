"""The Predictor: an encoder, the fitted transfer classifier and the class names, saved without pickle.

A model directory holds ``encoder.keras`` (loaded in Keras safe mode), ``classifier.npz`` (numeric or
string arrays only, loaded with allow_pickle=False) and ``predictor.json``, which names the format,
the class names, the image size and the classifier's configuration. Each file is written to a
temporary file and renamed into place; the JSON goes last.
"""
import json
import os
import zipfile

import numpy as np

from .export import atomic_write, write_text
from .images import as_image_size, read_image, resize_image
from .transfer import classifier_from_state

FORMAT = "triplet_keras.predictor"
VERSION = 1
CONFIG_FILE = "predictor.json"
ARRAYS_FILE = "classifier.npz"
ENCODER_FILE = "encoder.keras"


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


class Predictor:
    """Class names for images: encoder -> embeddings -> classifier (NearestMeanClassifier or
    TransferClassifier). ``class_names[i]`` names ``classifier.classes_[i]`` (default: str of each).
    ``image_size`` (H, W, or n for n x n): inputs are resized to it; default the encoder's input size."""

    def __init__(self, encoder, class_names, classifier, image_size=None, batch_size=64):
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

    def embed(self, images, batch_size=None):
        """L2-normalised embeddings (N, D), reading and resizing ``batch_size`` images at a time."""
        from .models import embed_images

        return embed_images(self.encoder, ImageBatches(images, self.image_size),
                            batch_size=batch_size or self.batch_size, progress=False)

    def predict_proba(self, images, batch_size=None):
        """(N, n_classes) class probabilities, columns in the order of ``class_names``.

        Classified ``batch_size`` rows at a time, so the classifier's float64 work stays one batch.
        """
        embeddings = self.embed(images, batch_size)
        step = batch_size or self.batch_size
        out = np.empty((len(embeddings), len(self.class_names)))
        for start in range(0, len(embeddings), step):
            out[start:start + step] = self.classifier.predict_proba(embeddings[start:start + step])
        return out

    def predict(self, images, batch_size=None):
        """List of N class names."""
        best = np.argmax(self.predict_proba(images, batch_size), axis=1)
        return [self.class_names[i] for i in best]

    def save(self, directory):
        """Write encoder.keras, classifier.npz and predictor.json into ``directory``."""
        from .models import save_model

        os.makedirs(directory, exist_ok=True)
        save_model(self.encoder, os.path.join(directory, ENCODER_FILE))
        state, arrays = self.classifier.get_state()
        atomic_write(os.path.join(directory, ARRAYS_FILE), lambda temporary: np.savez(temporary, **arrays))
        config = {"format": FORMAT, "version": VERSION, "class_names": self.class_names,
                  "image_size": list(self.image_size), "classifier": state}
        write_text(os.path.join(directory, CONFIG_FILE), json.dumps(config, indent=2))

    @classmethod
    def load(cls, directory, batch_size=64):
        """Read a directory written by :meth:`save`; PredictorFormatError names any bad file."""
        from .models import load_model

        config = _read_config(os.path.join(directory, CONFIG_FILE))
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
        try:
            return cls(encoder, config["class_names"], classifier, config["image_size"], batch_size)
        except ValueError as error:
            raise PredictorFormatError(f"{os.path.join(directory, CONFIG_FILE)!r}: {error}") from error


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
        if config["format"] != FORMAT or config["version"] != VERSION:
            problems.append(f"format {config['format']!r} version {config['version']!r} is not "
                            f"{FORMAT!r} version {VERSION}")
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


def predict(images, model_dir, batch_size=64):
    """Class names for ``images`` (array(s) or file paths) with the Predictor saved in ``model_dir``."""
    return Predictor.load(model_dir, batch_size=batch_size).predict(images)
