"""The embedding encoder, the three-branch merge model and the online-loss model.

The encoder maps raw RGB images with values in 0..255, shape (B, H, W, 3), to L2-normalised
float32 embeddings (B, embedding_dim). Everything an image needs (casting, resizing to the
backbone's input size, the backbone's own preprocessing) happens inside the model, so a saved
encoder is all that is needed to embed new images.
"""
import functools
import json
import os
import zipfile

import keras
import numpy as np
from keras import layers, ops
from tqdm.auto import tqdm

from triplet_keras.core import distances_ops
from triplet_keras.core.downloads import host_reachable, keras_home
from triplet_keras.core.export import atomic_write, to_jsonable
from triplet_keras.core.images import as_image_size
from triplet_keras.core.vocabulary import TRANSFER_FEATURES
from triplet_keras.models import distribution

BACKBONES = ("resnet50", "small_cnn")
MIN_RESNET_SIZE = 32
IMAGENET_HOST = ("storage.googleapis.com", 443)
RESNET50_NOTOP_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights are neither cached nor downloadable."""


@keras.saving.register_keras_serializable(package="triplet_keras")
class ImagePreprocessing(layers.Layer):
    """Raw 0..255 RGB in, backbone input out.

    ``mode="caffe"`` (ResNet50's ImageNet convention): RGB -> BGR, minus the ImageNet channel means.
    ``mode="unit"``: x / 255.
    """

    IMAGENET_BGR_MEAN = (103.939, 116.779, 123.68)

    def __init__(self, mode="unit", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("caffe", "unit"):
            raise ValueError(f"mode must be 'caffe' or 'unit', got {mode!r}")
        self.mode = mode

    def call(self, images):
        x = ops.cast(images, self.compute_dtype)
        if self.mode == "unit":
            return x / 255.0
        return ops.flip(x, axis=-1) - ops.convert_to_tensor(self.IMAGENET_BGR_MEAN, dtype=self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="triplet_keras")
class L2Normalize(layers.Layer):
    """x / max(|x|, 1e-12) along the last axis, computed in float32 (finite gradient at x = 0)."""

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, x):
        return distances_ops.l2_normalize(x)


@keras.saving.register_keras_serializable(package="triplet_keras")
class ConcatBatch(layers.Layer):
    """Stacks k same-shaped batches along the batch axis: k x (B, ...) -> (k * B, ...)."""

    def call(self, inputs):
        return ops.concatenate(inputs, axis=0)

    def compute_output_shape(self, input_shapes):
        return (None,) + tuple(input_shapes[0][1:])


@keras.saving.register_keras_serializable(package="triplet_keras")
class SplitTriplet(layers.Layer):
    """Undoes ConcatBatch for three batches of embeddings: (3 * B, D) -> (B, 3, D)."""

    def call(self, x):
        return ops.transpose(ops.reshape(x, (3, -1, ops.shape(x)[-1])), (1, 0, 2))

    def compute_output_shape(self, input_shape):
        return (None, 3, input_shape[-1])


@keras.saving.register_keras_serializable(package="triplet_keras")
class ShiftedCopies(layers.Layer):
    """(B, H, W, C) -> (5 * B, H, W, C): the images, then the images moved by ``shift`` pixels right,
    left, down and up (zero-filled), one copy after the other along the batch axis."""

    OFFSETS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))

    def __init__(self, shift, **kwargs):
        super().__init__(**kwargs)
        if int(shift) < 1:
            raise ValueError(f"shift must be a whole number of pixels >= 1, got {shift!r}")
        self.shift = int(shift)

    def call(self, images):
        s = self.shift
        height, width = images.shape[1], images.shape[2]
        padded = ops.pad(images, [[0, 0], [s, s], [s, s], [0, 0]])
        copies = [padded[:, s - dy * s:s - dy * s + height, s - dx * s:s - dx * s + width] for dy, dx in self.OFFSETS]
        return ops.concatenate(copies, axis=0)

    def compute_output_shape(self, input_shape):
        return (None,) + tuple(input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "shift": self.shift}


@keras.saving.register_keras_serializable(package="triplet_keras")
class MeanOfCopies(layers.Layer):
    """(copies * B, D) -> (B, D): the mean over ``copies`` batches stacked along the batch axis."""

    def __init__(self, copies, **kwargs):
        super().__init__(**kwargs)
        self.copies = int(copies)

    def call(self, x):
        return ops.mean(ops.reshape(x, (self.copies, -1, x.shape[-1])), axis=0)

    def compute_output_shape(self, input_shape):
        return (None, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "copies": self.copies}


def _small_cnn(input_shape):
    """A small VGG-style network (3 conv blocks, GAP) for tiny images and fast tests; no pretrained weights."""
    inputs = keras.Input(input_shape)
    x = inputs
    for filters in (32, 64, 128):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=0.9)(x)
        x = layers.Activation("relu")(x)
        if x.shape[1] > 2:
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x, name="small_cnn")


def _keras_cache_file(name):
    return os.path.join(keras_home(), "models", name)


def check_imagenet_weights(timeout=3.0):
    """Fail fast, with what to do offline, when ResNet50 ImageNet weights are neither cached nor reachable."""
    if os.path.exists(_keras_cache_file(RESNET50_NOTOP_FILE)) or host_reachable(IMAGENET_HOST, timeout):
        return
    raise WeightsUnavailableError(
        "ImageNet weights for ResNet50 are not cached and cannot be downloaded (no network). Offline, "
        f"either copy {RESNET50_NOTOP_FILE} into {os.path.dirname(_keras_cache_file(''))}, pass "
        "weights='/path/to/that.h5', or train from scratch with weights=None "
        "(in init.py: --weights none)."
    )


def _resolve_weights(backbone, weights):
    """Return the ``weights`` argument for keras.applications, or raise a clear error."""
    if weights is None or (isinstance(weights, str) and weights.lower() == "none"):
        return None
    if weights == "imagenet":
        if backbone != "resnet50":
            raise ValueError(f"backbone {backbone!r} has no ImageNet weights; pass weights=None or a file")
        check_imagenet_weights()
        return "imagenet"
    weights = os.fspath(weights)
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"weights file not found: {weights!r} (expected 'imagenet', None or a file)")
    return weights


def build_backbone(backbone, input_shape, weights):
    """The feature extractor with global average pooling, and its preprocessing mode."""
    if backbone == "resnet50":
        model = keras.applications.ResNet50(
            include_top=False, weights=None if weights != "imagenet" else "imagenet",
            input_shape=input_shape, pooling="avg",
        )
        mode = "caffe"
    elif backbone == "small_cnn":
        model, mode = _small_cnn(input_shape), "unit"
    else:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if weights not in (None, "imagenet"):
        model.load_weights(weights)
    return model, mode


def freeze(backbone, freeze_layers, freeze_batchnorm):
    """Freeze the first ``freeze_layers`` layers, and every BatchNorm layer when ``freeze_batchnorm``."""
    for index, layer in enumerate(backbone.layers):
        if index < freeze_layers or (freeze_batchnorm and isinstance(layer, layers.BatchNormalization)):
            layer.trainable = False


def build_encoder(
    backbone="resnet50",
    weights="imagenet",
    input_shape=(224, 224, 3),
    embedding_dim=128,
    freeze_layers=15,
    backbone_size=None,
    name="encoder",
):
    """Encoder: raw 0..255 RGB (B, H, W, 3) -> preprocess -> backbone -> GAP -> Dense -> L2 normalise.

    ``weights`` is "imagenet" (ResNet50 only; fails within seconds offline with what to do instead),
    None (random initialisation) or a path to a backbone weights file. The first ``freeze_layers``
    backbone layers are frozen; with pretrained weights every BatchNorm layer is frozen too.
    ``backbone_size`` (H, W, or n for n x n) resizes inside the model; by default images are fed at
    their own size, raised to 32 x 32 for ResNet50, which needs at least that.
    """
    backbone_size = as_image_size(backbone_size, "backbone_size")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}")
    if embedding_dim < 1 or freeze_layers < 0:
        raise ValueError("embedding_dim must be >= 1 and freeze_layers >= 0")
    weights = _resolve_weights(backbone, weights)
    height, width = input_shape[:2]
    if backbone_size is None and backbone == "resnet50":
        backbone_size = (max(height, MIN_RESNET_SIZE), max(width, MIN_RESNET_SIZE))
    size = tuple(backbone_size or (height, width))
    features, mode = build_backbone(backbone, size + (3,), weights)
    freeze(features, freeze_layers, freeze_batchnorm=weights is not None)

    images = keras.Input(tuple(input_shape), name="images")
    x = images
    if size != (height, width):
        x = layers.Resizing(*size, name="resize")(x)
    x = ImagePreprocessing(mode, name="preprocess")(x)
    x = features(x)
    x = layers.Dense(embedding_dim, name="embedding")(x)
    return keras.Model(images, L2Normalize(name="l2_normalize")(x), name=name)


GRID_CELLS = 2


def _backbone_features(encoder, features):
    """Images -> the backbone's pooled output ("backbone") or its last feature map average-pooled to
    GRID_CELLS x GRID_CELLS cells and flattened ("grid"), L2-normalised, sharing the encoder's layers."""
    if "embedding" not in [layer.name for layer in encoder.layers]:
        raise ValueError(f"{features} features need an encoder from build_encoder (its projection layer is "
                         f"named 'embedding'); {encoder.name!r} has none: use features='embedding'")
    pooled = encoder.get_layer("embedding").input
    if features == "grid":
        backbone = next(layer for layer in encoder.layers if isinstance(layer, keras.Model))
        feature_map = keras.Model(backbone.input, backbone.layers[-1].input, name=f"{backbone.name}_map")
        x = feature_map(encoder.get_layer("preprocess").output)
        cells = (min(GRID_CELLS, x.shape[1]), min(GRID_CELLS, x.shape[2]))
        pooled = layers.Flatten(name="flatten_grid")(layers.AdaptiveAveragePooling2D(cells, name="grid_pool")(x))
    normalised = L2Normalize(name=f"l2_normalize_{features}")(pooled)
    return keras.Model(encoder.input, normalised, name=f"{features}_features")


def check_shift_average(shift_average, image_shape):
    """ValueError unless ``shift_average`` is a whole number of pixels >= 0 that leaves part of an image
    of ``image_shape`` (H, W, C; None for a free size) in view."""
    if int(shift_average) != shift_average or shift_average < 0:
        raise ValueError(f"shift_average must be a whole number of pixels >= 0, got {shift_average!r}")
    sizes = [size for size in image_shape[:2] if size is not None]
    if sizes and shift_average >= min(sizes):
        raise ValueError(f"shift_average {shift_average} moves the whole image (shape {tuple(image_shape)}) "
                         "out of view; use a shift smaller than the image")


def feature_encoder(encoder, features="embedding", shift_average=0):
    """The model that gives the vectors the transfer step works on.

    "embedding": ``encoder`` itself (the trained, L2-normalised triplet embedding). "backbone": the
    same images -> the pooled backbone output that feeds the embedding projection, L2-normalised,
    sharing the encoder's layers and weights. The triplet loss shapes the projection for the source
    classes; the features before it keep more of what tells new classes apart (+6 points on unseen
    digits, mean of 3 encoders, benchmarks/bench_accuracy.py), as with the projection heads of
    contrastive learning. "grid": the backbone's last feature map before its global pooling,
    average-pooled to 2 x 2 cells and flattened (4x the backbone's width: 8,192 for ResNet50), which
    keeps where in the image each feature is.

    ``shift_average`` = s > 0: the vector of an image is the L2-normalised mean of those of the image
    and of its four copies moved by s pixels (ShiftedCopies), so one badly placed support image
    counts for less; five times the compute and memory per batch.
    """
    if features not in TRANSFER_FEATURES:
        raise ValueError(f"features must be one of {TRANSFER_FEATURES}, got {features!r}")
    check_shift_average(shift_average, encoder.input_shape[1:])
    model = encoder if features == "embedding" else _backbone_features(encoder, features)
    if not shift_average:
        return model
    images = keras.Input(encoder.input_shape[1:], name="images")
    copies = ShiftedCopies(shift_average, name="shifted_copies")(images)
    mean = MeanOfCopies(len(ShiftedCopies.OFFSETS), name="mean_of_copies")(model(copies))
    return keras.Model(images, L2Normalize(name="l2_normalize_mean")(mean), name=f"{model.name}_shift_average")


def pixel_features(image_shape):
    """Images -> their pixel values flattened (0..255, float32): the ``pixels`` network of the
    transfer choice (triplet_keras.transfer.choice), a model like the others so that a predictor can use it."""
    images = keras.Input(tuple(image_shape), name="images")
    return keras.Model(images, layers.Flatten(name="pixels")(images), name="pixels")


def joined_features(models, names):
    """Images -> the outputs of ``models`` (on the same images) side by side: one model for a predictor
    whose classifier scores several kinds of features (transfer.ScoreMixture). Each model is wrapped
    under its name in ``names``, so models whose own names clash can be joined."""
    images = keras.Input(models[0].input_shape[1:], name="images")
    outputs = [keras.Model(model.input, model.output, name=name)(images) for model, name in zip(models, names)]
    return keras.Model(images, layers.Concatenate(name="joined")(outputs), name="joined_features")


@keras.saving.register_keras_serializable(package="triplet_keras")
class RandomPadCrop(layers.Layer):
    """Training only: zero-pad each image by ``padding`` pixels, then crop a random H x W window of it."""

    def __init__(self, padding, seed=None, **kwargs):
        super().__init__(**kwargs)
        self.padding = int(padding)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=None):
        if not training or not self.padding:
            return images
        p = self.padding
        batch, height, width = ops.shape(images)[0], ops.shape(images)[1], ops.shape(images)[2]
        padded = ops.pad(images, [[0, 0], [p, p], [p, p], [0, 0]])
        offsets = keras.random.randint((batch, 2), 0, 2 * p + 1, seed=self.seed_generator)
        rows = offsets[:, :1] + ops.arange(height)[None, :]
        cols = offsets[:, 1:] + ops.arange(width)[None, :]
        x = ops.take_along_axis(padded, rows[:, :, None, None], axis=1)
        return ops.take_along_axis(x, cols[:, None, :, None], axis=2)

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "seed": self.seed}


def build_augmentation(flip=False, crop_padding=0, seed=None, name="augmentation"):
    """Training-only augmentation layers (identity at inference): horizontal flip, pad-and-random-crop."""
    steps = [layers.Rescaling(1.0, name=f"{name}_cast")]
    if flip:
        steps.append(layers.RandomFlip("horizontal", seed=seed, name=f"{name}_flip"))
    if crop_padding:
        steps.append(RandomPadCrop(crop_padding, seed=seed, name=f"{name}_crop"))
    return keras.Sequential(steps, name=name)


def build_merge_model(encoder, augmentation=None, name="merge_model"):
    """Three inputs (anchor, positive, negative) through ONE shared encoder -> (B, 3, D).

    The three batches are concatenated into one batch of 3B images, so the encoder runs once per
    step; train the output with :class:`triplet_keras.core.losses.TripletMarginLoss`.
    """
    shape = encoder.input_shape[1:]
    inputs = [keras.Input(shape, name=role) for role in ("anchor", "positive", "negative")]
    x = ConcatBatch(name="concat_batch")(inputs)
    if augmentation is not None:
        x = augmentation(x)
    return keras.Model(inputs, SplitTriplet(name="split_triplet")(encoder(x)), name=name)


def build_online_model(encoder, augmentation=None, name="online_model"):
    """Images -> (optional augmentation) -> encoder, for the online losses over (labels, embeddings)."""
    images = keras.Input(encoder.input_shape[1:], name="images")
    x = augmentation(images) if augmentation is not None else images
    return keras.Model(images, encoder(x), name=name)


STATE_MEMBER = "training_state.json"


def save_model(model, path, state=None):
    """Save a .keras file atomically (temporary file beside it, then a rename over the target).

    ``state``, a JSON-able dict, is stored inside the same zip (as ``training_state.json``, which
    Keras ignores when loading), so the weights and the state they belong to move in one rename.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"model files end in .keras, got {path!r}")

    def write(temporary):
        model.save(temporary)
        if state is not None:
            with zipfile.ZipFile(temporary, "a") as archive:
                archive.writestr(STATE_MEMBER, json.dumps(to_jsonable(state), allow_nan=False))

    atomic_write(path, write)


def read_model_state(path):
    """The state dict stored by ``save_model(..., state=...)`` in a .keras file, or None if it has none.

    Raises ``zipfile.BadZipFile`` or ``ValueError`` for a file that is not an intact .keras zip.
    """
    with zipfile.ZipFile(os.fspath(path)) as archive:
        if STATE_MEMBER not in archive.namelist():
            return None
        return json.loads(archive.read(STATE_MEMBER).decode("utf-8"))


def load_model(path, compile=False):
    """Load a .keras file in safe mode (no arbitrary code); the triplet_keras layers and losses are registered."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path!r}")
    return keras.saving.load_model(path, compile=compile, safe_mode=True)


@functools.cache
def has_accelerator():
    """Whether Keras' backend sees a device other than the CPU (a GPU or TPU). PyTorch has no
    keras.distribution device list: there it is whether torch sees a CUDA device."""
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.is_available()
    return any(not device.lower().startswith("cpu") for device in keras.distribution.list_devices())


class PredictBatches(keras.utils.PyDataset):
    """Consecutive batches of ``load(indices)`` for ``count`` images, for ``Model.predict``, in their
    own dtype (uint8 stays uint8: a quarter of the bytes to copy, cast inside the model), loaded on
    two threads ahead of the model when Keras sees an accelerator and in the calling thread on CPU
    (where the threads would take cores from the model: benchmarks/bench_embed.py measures both).
    The last batch is padded with zeros to ``batch_size`` when there is more than one, so one compiled
    predict function serves all; a single batch to the next power of two (at most ``batch_size``), so
    calls with other small counts share a few compiled shapes at under twice the work; and every batch
    to a multiple of ``replicas`` (the devices a data-parallel distribution splits it over;
    ``batch_size`` is rounded up to one too).

    An error while loading does not escape into Keras' predict loop (on JAX that would leave the
    model's variables emptied): the batch becomes zeros of ``image_shape``, ``error`` keeps the first
    exception, and :class:`PredictProgress` stops the loop so the caller can raise it."""

    def __init__(self, load, count, batch_size, image_shape, replicas=1):
        super().__init__(workers=2 if has_accelerator() else 1)
        self.load, self.count, self.image_shape, self.replicas = load, count, tuple(image_shape), replicas
        self.batch_size = -(-batch_size // replicas) * replicas
        self.error = None

    def __len__(self):
        return -(-self.count // self.batch_size)

    def __getitem__(self, index):
        rows = np.arange(index * self.batch_size, min((index + 1) * self.batch_size, self.count))
        try:
            batch = np.asarray(self.load(rows))
        except Exception as error:  # noqa: BLE001 - kept and raised by embed_images after predict
            self.error = self.error or error
            batch = np.zeros((len(rows),) + self.image_shape, np.uint8)
        single = min(self.batch_size, 1 << (self.count - 1).bit_length())  # the next power of two
        size = self.batch_size if self.count > self.batch_size else single
        size = -(-size // self.replicas) * self.replicas
        if len(batch) < size:
            batch = np.concatenate([batch, np.zeros((size - len(batch),) + batch.shape[1:], batch.dtype)])
        return batch


class PredictProgress(keras.callbacks.Callback):
    """A tqdm bar over the batches of one ``predict`` call, which it stops once ``batches.error`` is set.
    Async-safe: Keras calls it from a worker thread, so the predict loop does not wait for each
    batch's outputs to reach the host."""

    async_safe = True

    def __init__(self, batches, description, enabled):
        super().__init__()
        self.batches = batches
        self.bar = tqdm(total=len(batches), desc=description, unit="batch", disable=not enabled, leave=False)

    def on_predict_batch_end(self, batch, logs=None):
        self.bar.update(1)
        if self.batches.error is not None:
            self.model.stop_predicting = True

    def on_predict_end(self, logs=None):
        self.bar.close()


def embed_images(encoder, images, batch_size=256, progress=True, description="embedding"):
    """Embeddings (N, D) float32 of ``images``: an array (N, H, W, 3) or an object with ``__len__``
    and ``load(indices)``, through ``encoder.predict`` over :class:`PredictBatches` (Keras keeps the
    device busy: no copy back to the host after each batch). An error while loading is raised after
    the predict loop has ended, the encoder intact."""
    count = len(images)
    if count == 0:
        return np.zeros((0, encoder.output_shape[-1]), np.float32)
    load = images.load if hasattr(images, "load") else (lambda indices: np.asarray(images[indices]))
    batches = PredictBatches(load, count, batch_size, encoder.input_shape[1:], distribution.replica_count())
    out = encoder.predict(batches, verbose=0, callbacks=[PredictProgress(batches, description, progress)])
    if batches.error is not None:
        raise batches.error
    return np.asarray(out[:count], np.float32)
