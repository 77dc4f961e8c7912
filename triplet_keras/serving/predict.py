"""The Predictor: an encoder, the fitted transfer classifier and the class names; optionally
calibrated (a softmax temperature and "unknown" thresholds, see triplet_keras.serving.calibration) and with a
gallery to look up (triplet_keras.serving.gallery). Its folder format (predictor.json, classifier.npz,
gallery.npz, encoder.keras; no pickle) is in triplet_keras.serving.predictor_folder.
"""
import os
import warnings

import numpy as np

from triplet_keras.core.images import as_image_size, read_image, resize_image
from .calibration import (NEIGHBOURS, SCORES, Calibration, acceptance_scores, acceptance_thresholds,
                          calibrated_proba, fit_calibration, score_names)
from .gallery import Gallery, GalleryIndex, Neighbours, extend_gallery, lookup
from .predictor_folder import PredictorFormatError, load_predictor, save_predictor

# What tests, the command line and benchmarks import from here, several of them defined in the modules above.
__all__ = ["Calibration", "Gallery", "GalleryIndex", "ImageBatches", "Neighbours", "NEIGHBOURS", "Predictor",
           "PredictorFormatError", "SCORES", "acceptance_thresholds", "predict"]


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
    ``image_size`` (H, W, or n for n x n): inputs are resized to it; default the encoder's input size.

    Methods taking images (arrays or file paths) embed them and call their ``*_embeddings`` twin,
    which takes the output of :meth:`embed` instead. ``features_from``: what the encoder's vectors are
    (such as the transfer choice's candidate name: "initial backbone: center"), kept in predictor.json.
    ``gallery_index``: the GalleryIndex that lookups and the neighbours score search (None until first
    needed; set one to choose its exact_limit and probes); it is brought up to date with the gallery
    before each search.
    """

    UNKNOWN = "unknown"

    def __init__(self, encoder, class_names, classifier, image_size=None, batch_size=64, calibration=None,
                 gallery=None, features_from=None):
        self.encoder = encoder
        self.features_from = features_from
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
        self.gallery_index = None
        if gallery is not None:
            self.add_gallery_embeddings(*gallery)
        self.calibration = calibration

    def embed(self, images, batch_size=None):
        """L2-normalised embeddings (N, D), reading and resizing ``batch_size`` images at a time."""
        from triplet_keras.models.networks import embed_images

        return embed_images(self.encoder, ImageBatches(images, self.image_size),
                            batch_size=batch_size or self.batch_size, progress=False)

    def _batched(self, function, embeddings, batch_size=None):
        """np.concatenate of ``function`` over ``batch_size`` rows at a time, so the classifier's
        float64 work stays one batch."""
        step = batch_size or self.batch_size
        return np.concatenate([function(embeddings[start:start + step]) for start in range(0, len(embeddings), step)])

    def neighbour_index(self):
        """gallery_index, created when None and extended with the gallery items it does not hold yet."""
        if self.gallery_index is None:
            self.gallery_index = GalleryIndex(self.gallery.embeddings.shape[1])
        self.gallery_index.extend(self.gallery.embeddings)
        return self.gallery_index

    def acceptance_scores(self, embeddings, names, temperature, neighbours=NEIGHBOURS, batch_size=None):
        """(N, len(names)) acceptance scores (triplet_keras.serving.calibration) of the embeddings, one column per
        score name, larger = less like the calibration images."""
        index = self.neighbour_index() if "neighbours" in names else None
        return self._batched(lambda rows: acceptance_scores(self.classifier, rows, names, temperature, index,
                                                            neighbours), embeddings, batch_size)

    def predict_proba_embeddings(self, embeddings, batch_size=None):
        """(N, n_classes) class probabilities, columns in the order of ``class_names``: with a
        calibration softmax(scores / temperature), else the classifier's own."""
        if self.calibration is None:
            return self._batched(self.classifier.predict_proba, embeddings, batch_size)
        return self._batched(lambda rows: calibrated_proba(self.classifier, rows, self.calibration.temperature),
                             embeddings, batch_size)

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

    def _calibration_arguments(self, labels, accept_rate, score, target_precision, neighbours):
        """(label indices, score names) after checking every argument of calibrate."""
        return (label_indices(labels, self.class_names),
                score_names(score, accept_rate, target_precision, neighbours, self.gallery is not None))

    def calibrate_embeddings(self, embeddings, labels, accept_rate=0.95, score=None, target_precision=None,
                             neighbours=NEIGHBOURS):
        """Fit and set the temperature and the thresholds of the ``score`` names (triplet_keras.serving.calibration)
        on held-out embeddings whose ``labels`` are class names of the predictor; ``target_precision``, when
        given, replaces ``accept_rate``. Returns the Calibration."""
        index, names = self._calibration_arguments(labels, accept_rate, score, target_precision, neighbours)
        if len(embeddings) != len(index):
            raise ValueError(f"{len(embeddings)} images but {len(index)} labels")
        self.calibration = fit_calibration(
            self._batched(self.classifier.class_scores, embeddings), index,
            lambda temperature: self.acceptance_scores(embeddings, names, temperature, neighbours),
            names, accept_rate, target_precision, neighbours)
        return self.calibration

    def calibrate(self, images, labels, accept_rate=0.95, score=None, target_precision=None, neighbours=NEIGHBOURS):
        """calibrate_embeddings of the images' embeddings."""
        # bad arguments fail before the images are read
        self._calibration_arguments(labels, accept_rate, score, target_precision, neighbours)
        return self.calibrate_embeddings(self.embed(images), labels, accept_rate, score, target_precision, neighbours)

    def add_gallery_embeddings(self, embeddings, labels, ids=None):
        """Append items to the gallery: embeddings (N, D), labels (class names), ids (strings such as
        file paths; default the running numbers after the items already there)."""
        names = np.array(self.class_names)[label_indices(labels, self.class_names)]
        self.gallery = extend_gallery(self.gallery, embeddings, names, ids, self.classifier.n_features_in_)
        if self.calibration is not None and "neighbours" in self.calibration.thresholds:
            warnings.warn("the gallery changed after calibrating with the neighbours score: call calibrate again",
                          stacklevel=2)

    def add_gallery(self, images, labels, ids=None):
        """add_gallery_embeddings of the images' embeddings."""
        label_indices(labels, self.class_names)
        self.add_gallery_embeddings(self.embed(images), labels, ids)

    def lookup_embeddings(self, embeddings, k=5):
        """The k gallery items nearest to each embedding (cosine distance), as Neighbours (n, k)."""
        if self.gallery is None:
            raise ValueError("the predictor has no gallery: call add_gallery(images, labels, ids) first")
        return lookup(self.gallery, self.neighbour_index(), embeddings, k)

    def lookup(self, images, k=5):
        """lookup_embeddings of the images' embeddings."""
        return self.lookup_embeddings(self.embed(images), k)

    def save(self, directory):
        """Write encoder.keras, classifier.npz, gallery.npz (when there is a gallery) and predictor.json
        into ``directory`` (triplet_keras.serving.predictor_folder)."""
        save_predictor(self, directory)

    @classmethod
    def load(cls, directory, batch_size=64):
        """Read a directory written by :meth:`save`; PredictorFormatError names any bad file."""
        return load_predictor(cls, directory, batch_size)


def label_indices(labels, class_names):
    """Indices into ``class_names`` of ``labels`` (class names, or values whose str is one)."""
    labels = [str(label) for label in np.asarray(labels, dtype=object).ravel()]
    if not labels:
        raise ValueError("no labels given: pass one class name per image")
    position = {name: i for i, name in enumerate(class_names)}
    unknown = sorted(set(labels) - set(position))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not class names of the predictor {class_names}")
    return np.array([position[label] for label in labels])


def predict(images, model_dir, batch_size=64, reject_unknown=True):
    """Class names for ``images`` (array(s) or file paths) with the Predictor saved in ``model_dir``."""
    return Predictor.load(model_dir, batch_size=batch_size).predict(images, reject_unknown=reject_unknown)
