"""triplet_keras: triplet-loss fine-tuning in Keras and few-shot transfer by nearest class means.

Public names are imported lazily, so ``import triplet_keras`` is cheap and the command-line help does
not wait for a deep-learning backend. JAX is the default Keras backend when it is installed and
``KERAS_BACKEND`` is unset (it trains faster than TensorFlow on CPU and GPU; see the README).
"""
import importlib
import importlib.util
import os

__version__ = "0.1.0"

if "KERAS_BACKEND" not in os.environ and importlib.util.find_spec("jax") is not None:
    os.environ["KERAS_BACKEND"] = "jax"

_EXPORTS = {
    "triplet_margin_loss": "losses",
    "batch_all_triplet_loss": "losses",
    "batch_hard_triplet_loss": "losses",
    "semi_hard_triplet_loss": "losses",
    "pairwise_distances": "losses",
    "TripletMarginLoss": "losses",
    "OnlineTripletLoss": "losses",
    "build_encoder": "models",
    "build_merge_model": "models",
    "build_online_model": "models",
    "embed_images": "models",
    "feature_encoder": "models",
    "load_model": "models",
    "load_dataset": "datasets",
    "read_image": "images",
    "mine_triplets": "mining",
    "TripletGenerator": "generators",
    "PKBatchGenerator": "generators",
    "RemineCallback": "generators",
    "NearestMeanClassifier": "transfer",
    "fit_transfer": "transfer",
    "Predictor": "predict",
    "predict": "predict",
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
