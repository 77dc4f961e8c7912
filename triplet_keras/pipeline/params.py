"""The vocabulary of the experiment parameters: one flat key each, as in ``<model_dir>/params.json`` and
the command-line flags, with its default, type and help (SCHEMA), and the check of one value.

Every key has a default and a type below; an unknown key or a value of the wrong type is an error
that lists the valid keys. ``null`` is allowed where the default is ``None`` or where noted.
triplet_keras.pipeline.config reads params.json and the flags into typed, frozen sections.
"""
import argparse
import json

from triplet_keras.core.images import as_image_size
from triplet_keras.core.strategies import OFFLINE_STRATEGIES, ONLINE_STRATEGIES
from triplet_keras.core.vocabulary import TRANSFER_FEATURES, TRANSFER_MODES

# name: (default, type or tuple of allowed values, help)
SCHEMA = {
    "dataset": ("digits", str, '"digits", "cifar10", "mnist", "fashion_mnist", "glyphs" (rendered from the installed '
                'fonts) or a folder of class subfolders'),
    "archive": (None, str, "offline data: the local cifar-10-python.tar.gz (CIFAR-10), or the folder holding the "
                "four IDX .gz files (MNIST, Fashion-MNIST)"),
    "image_size": (None, list, "size images are resized to on load: [height, width] or one number n for n x n "
                   "(folders: 224 x 224)"),
    "max_per_class": (None, int, "at most this many images per class in each part the dataset gives, drawn with "
                      "seed (a quick experiment on a big dataset)"),
    "loader_workers": (4, int, "threads that prepare training batches ahead of the train step (Keras PyDataset "
                       "workers; 1 = in the training loop, no prefetch)"),
    "cache_mb": (2048, int, "folders: a split whose decoded, resized images fit in this many MB is kept in "
                 "memory after the first epoch (0: decode every epoch)"),
    "validation_fraction": (0.1, float, "share of each class held out for validation"),
    "test_fraction": (0.2, float, "share of each class held out for testing (unused by cifar10, mnist and "
                      "fashion_mnist, which keep their official test split)"),
    "seed": (0, int, "seed for splits, mining, episodes and weights"),
    "backbone": ("resnet50", ("resnet50", "small_cnn"), "the CNN under the embedding"),
    "weights": ("imagenet", str, '"imagenet", "none" or a backbone weights file'),
    "backbone_size": (None, list, "size the model resizes images to: [height, width] or one number n for n x n "
                      "(ResNet50: at least 32)"),
    "embedding_dim": (128, int, "size of the L2-normalised embedding"),
    "freeze_layers": (15, int, "number of leading backbone layers kept frozen"),
    "strategy": ("semi_hard", OFFLINE_STRATEGIES + ONLINE_STRATEGIES,
                 "offline-mined triplets (random, semi_hard, hard) or an online loss"),
    "margin": (0.2, float, "triplet margin"),
    "squared": (True, bool, "squared L2 distance in the losses"),
    "triplets_per_anchor": (1, int, "offline mining: triplets mined per anchor"),
    "remine_every": (1, int, "offline mining: re-mine with the current encoder every N epochs"),
    "batch_size": (32, int, "triplets per batch (offline) or images per batch (online)"),
    "samples_per_class": (4, int, "online losses: K images per class in a P x K batch"),
    "epochs": (10, int, "training epochs"),
    "learning_rate": (1e-3, float, "Adam learning rate"),
    "augment_flip": (False, bool, "random horizontal flips while training"),
    "augment_crop": (0, int, "random pad-and-crop by this many pixels while training"),
    "pseudo_classes": (False, bool, "train on each rotation / reflection of a source class as a class of "
                       "its own (square images; triplet_keras.data.pseudo_classes)"),
    "precision": ("float32", ("float32", "mixed_bfloat16", "mixed_float16"), "Keras dtype policy"),
    "distribute": (False, bool, "data-parallel training over every device (JAX: keras.distribution; "
                   "TensorFlow: MirroredStrategy)"),
    "collapse_patience": (3, int, "warn of embedding collapse after this many bad epochs in a row"),
    "source_classes": (None, list, "classes the encoder trains on; the others are the transfer target"),
    "target_dataset": (None, str, "folder of the target domain with the same class names"),
    "target_transform": (None, ("style",), "a synthetic target domain made from the test split"),
    "transfer_mode": ("auto", ("auto",) + TRANSFER_MODES,
                      "transfer mode; auto: chosen with the network, features, whitening and the use of unlabelled "
                      "target images on evidence the scored features never trained on, then by leave-one-out on "
                      "the support when it has 2 shots a class or more (triplet_keras.transfer.choice)"),
    "transfer_whiten": ("auto", float, "shrinkage (0 to 1) of the source within-class covariance that whitens the "
                        "transfer features (triplet_keras.transfer.source_whitening); null: no whitening; "
                        "\"auto\": chosen with the mode"),
    "transfer_features": ("auto", ("auto",) + TRANSFER_FEATURES,
                          "vectors the transfer works on: the L2-normalised pooled backbone features under the "
                          "embedding, the backbone's last map pooled to 2 x 2 cells (4x as wide), the embedding "
                          "itself (models.feature_encoder), or auto: chosen with the mode"),
    "transfer_shift_average": (0, int, "pixels: the transfer vector of an image is the mean over the image and "
                               "its four copies moved by this many pixels (models.feature_encoder; 0: off)"),
    "shots": ([1, 5], list, "K of the K-shot transfer episodes"),
    "episodes": (100, int, "few-shot episodes per K"),
    "plot_method": ("tsne", ("tsne", "pca"), "2-D map of the embeddings"),
}


NULLABLE = {"transfer_whiten"}
AUTO_ALLOWED = {"transfer_whiten"}  # numeric keys that also take the string "auto"
# Sizes: an int n for n x n or [height, width], stored as [height, width].
SIZE_KEYS = {"image_size", "backbone_size"}
# The least value of a whole-number parameter.
MINIMUM = {"loader_workers": 1, "cache_mb": 0, "embedding_dim": 1, "freeze_layers": 0, "triplets_per_anchor": 1,
           "remine_every": 1, "batch_size": 1, "samples_per_class": 2, "epochs": 1, "augment_crop": 0,
           "collapse_patience": 1, "transfer_shift_average": 0, "episodes": 1, "max_per_class": 1}


# What the elements of a list parameter must be: (type or types, least value or None, length or None).
ELEMENTS = {"shots": (int, 1, None), "source_classes": ((str, int), 0, None)}  # sizes: SIZE_KEYS
FRACTIONS = ("validation_fraction", "test_fraction")


class ParamsError(ValueError):
    """A parameter file or flag is invalid; the message lists the valid keys."""


def valid_keys():
    return "valid keys: " + ", ".join(sorted(SCHEMA))


def check_key(key):
    """ParamsError unless ``key`` is a parameter of SCHEMA."""
    if key not in SCHEMA:
        raise ParamsError(f"unknown parameter {key!r}; {valid_keys()}")


def check_value(key, value):
    """Return ``value`` converted to the key's type, or raise ParamsError."""
    check_key(key)
    default, kind, _ = SCHEMA[key]
    if value is None and (default is None or key in NULLABLE):
        return None
    if value == "auto" and key in AUTO_ALLOWED:
        return value
    if key in SIZE_KEYS:
        try:
            return list(as_image_size(value, key))
        except ValueError as error:
            raise ParamsError(str(error)) from None
    if isinstance(kind, tuple):
        if value not in kind:
            raise ParamsError(f"{key} must be one of {list(kind)}, got {value!r}")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ParamsError(f"{key} must be of type {kind.__name__}, got {value!r}; {valid_keys()}")
    if key in MINIMUM and value < MINIMUM[key]:
        raise ParamsError(f"{key} must be at least {MINIMUM[key]}, got {value!r}")
    if key in FRACTIONS and not 0.0 <= value < 1.0:
        raise ParamsError(f"{key} must be at least 0 and below 1, got {value!r}")
    if key == "transfer_whiten" and not 0.0 <= value <= 1.0:
        raise ParamsError(f"transfer_whiten must be null, \"auto\" or a shrinkage between 0 and 1, got {value}")
    if isinstance(value, list) and key in ELEMENTS:
        check_elements(key, value)
    return value


def check_elements(key, value):
    """ParamsError unless the list ``value`` has the length and element types ELEMENTS gives ``key``."""
    kinds, least, length = ELEMENTS[key]
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    names = " or ".join(kind.__name__ for kind in kinds)
    wanted = f"a list of {length or 'one or more'} {names}s" + (f" >= {least}" if int in kinds else "")
    if not value or (length is not None and len(value) != length):
        raise ParamsError(f"{key} must be {wanted}, got {value!r}")
    for item in value:
        if not isinstance(item, kinds) or isinstance(item, bool) or (isinstance(item, int) and item < least):
            raise ParamsError(f"{key} must be {wanted}, got {value!r}")


def check_fractions(validation_fraction, test_fraction):
    """ParamsError unless the two fractions leave images to train on."""
    if validation_fraction + test_fraction >= 1.0:
        raise ParamsError(f"validation_fraction + test_fraction must be below 1 to leave training images, got "
                          f"{validation_fraction} + {test_fraction}")


def _parse_flag(text):
    """A command-line value: JSON when it parses (numbers, lists, true/false, null), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def add_param_flags(parser):
    """One ``--key`` flag per parameter; values are parsed as JSON, falling back to a string."""
    group = parser.add_argument_group("parameters (override params.json)")
    for key, (default, kind, text) in SCHEMA.items():
        choices = f" One of {', '.join(kind)}." if isinstance(kind, tuple) else ""
        group.add_argument(f"--{key}", type=_parse_flag, default=argparse.SUPPRESS, metavar="VALUE",
                           help=f"{text}.{choices} Default: {json.dumps(default)}.")
