"""triplet_keras: triplet-loss fine-tuning in Keras and few-shot transfer by nearest class means.

The package is in layers, each importing only from those below it: ``core`` (distances, losses,
mining, images, files), ``data`` (datasets, generators), ``models`` (the Keras networks),
``transfer`` (the few-shot classifiers, the choice among them, evaluation), ``serving`` (the
Predictor) and ``pipeline`` (the end-to-end run); the command line (``__main__``) is on top. The
public names below are imported lazily from their modules.

Importing the package changes no environment variable and does not import keras or a deep-learning
backend: the entry points (init.py, ``triplet-keras``, ``python -m triplet_keras``, which all import
this file first) must set ``KERAS_BACKEND`` before keras is imported, since Keras reads it once, on
import (:mod:`triplet_keras.backend_choice`); Keras' first import also writes ~/.keras/keras.json,
and ``--help`` stays quick. Yet every Keras object of the package (layers, losses) is registered as
soon as keras is imported, before or after this package, so ``keras.saving.load_model`` reads the
files the package writes in safe mode without importing anything else first. When keras is already
imported, the registration happens here. Otherwise a finder on ``sys.meta_path`` waits for keras and
leaves once keras has run, then registers: the one thing importing the package changes. A
registration that fails (a broken dependency of ours, say OpenCV) never fails ``import keras``: it
warns (RuntimeWarning) and the error comes back where the module is imported for use.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__version__ = "0.1.0"

# The modules that define registered Keras objects (keras.saving.register_keras_serializable).
KERAS_OBJECT_MODULES = ("triplet_keras.core.losses", "triplet_keras.models.networks",
                        "triplet_keras.models.distribution")


def _register_keras_objects():
    """Import each of KERAS_OBJECT_MODULES not yet imported (one being imported, whose import brought
    keras in, registers its objects itself as it finishes); a failure is a warning, not an error."""
    for name in KERAS_OBJECT_MODULES:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception as error:  # whatever a broken dependency raises: keras itself is imported
            warnings.warn(f"triplet_keras could not register the Keras objects of {name} ({error!r}); "
                          "keras.saving.load_model cannot read the files that use them until "
                          f"`import {name}` works", RuntimeWarning, stacklevel=2)


class _ThenRegister(importlib.abc.Loader):
    """Keras' own loader, put back in place before keras runs; then the finder leaves sys.meta_path
    and KERAS_OBJECT_MODULES are imported."""

    def __init__(self, loader, finder):
        self.loader = loader
        self.finder = finder

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__spec__.loader = module.__loader__ = self.loader
        if self.finder in sys.meta_path:
            sys.meta_path.remove(self.finder)
        self.loader.exec_module(module)
        _register_keras_objects()


class _RegisterWithKeras(importlib.abc.MetaPathFinder):
    """Finds nothing itself: asked for keras, it hands back keras' usual spec with the loader wrapped in
    :class:`_ThenRegister` (a find_spec that loads nothing, as some libraries make, leaves it in place)."""

    searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "keras" or self.searching:
            return None
        self.searching = True
        try:
            spec = importlib.util.find_spec("keras")
        finally:
            self.searching = False
        if spec is not None:
            spec.loader = _ThenRegister(spec.loader, self)
        return spec


if sys.modules.get("keras") is not None:  # None: an import of keras was blocked
    _register_keras_objects()
else:
    sys.meta_path.insert(0, _RegisterWithKeras())

_EXPORTS = {
    "triplet_margin_loss": "core.losses",
    "batch_all_triplet_loss": "core.losses",
    "batch_hard_triplet_loss": "core.losses",
    "semi_hard_triplet_loss": "core.losses",
    "pairwise_distances": "core.losses",
    "TripletMarginLoss": "core.losses",
    "OnlineTripletLoss": "core.losses",
    "build_encoder": "models.networks",
    "build_merge_model": "models.networks",
    "build_online_model": "models.networks",
    "embed_images": "models.networks",
    "feature_encoder": "models.networks",
    "load_model": "models.networks",
    "load_dataset": "data.datasets",
    "read_image": "core.images",
    "mine_triplets": "core.mining",
    "TripletGenerator": "data.generators",
    "PKBatchGenerator": "data.generators",
    "RemineCallback": "pipeline.callbacks",
    "NearestMeanClassifier": "transfer",
    "fit_transfer": "transfer.choice",
    "TransferSearch": "transfer.choice",
    "Candidate": "transfer.choice",
    "Predictor": "serving.predict",
    "predict": "serving.predict",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'triplet_keras' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"triplet_keras.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
