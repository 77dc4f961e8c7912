"""Labelled image datasets: CIFAR-10, MNIST, Fashion-MNIST, scikit-learn's 8x8 digits, or a folder of
class subfolders.

``load_dataset`` returns a :class:`Dataset`: sorted ``class_names`` and three splits ``train``,
``validation`` (may be empty) and ``test``. A split holds an int64 ``labels`` array and hands out
RGB uint8 images (n, H, W, 3) in 0..255 through ``load(indices)`` or ``batches(batch_size)``.
Preprocessing belongs to the model, so nothing here scales or normalises pixels.

In-memory datasets (digits, CIFAR-10, and MNIST and Fashion-MNIST read by :mod:`triplet_keras.data.idx`)
are :class:`ArraySplit`; a folder dataset is a :class:`FileSplit` that keeps only file paths and
decodes each batch in worker threads, so a dataset larger than memory is never loaded whole.
"""
import hashlib
import io
import os
import pickle
import tarfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from triplet_keras.core.downloads import host_reachable, keras_home
from triplet_keras.core.images import as_image_size, has_image_signature, is_image_file, read_image, resize_image
from triplet_keras.core.per_class import shuffled_rows_per_class
from triplet_keras.data.errors import DatasetError
from triplet_keras.data.glyphs import GlyphError, build_glyph_folder
from triplet_keras.data.idx import load_idx_dataset

DEFAULT_IMAGE_SIZE = (224, 224)
FULL_CHECK_LIMIT = 2000
SPLIT_FOLDERS = ("train", "validation", "test")

CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_MEMBERS = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
# The official archive's checksums: MD5 from the CIFAR page, SHA-256 as Keras pins it.
CIFAR10_CHECKSUMS = {
    "md5": "c58f30108f718f92721af3b95e74349a",
    "sha256": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
}
CIFAR10_HOST = ("www.cs.toronto.edu", 443)
IDX_DATASETS = ("mnist", "fashion_mnist")
GLYPHS = "glyphs"
GLYPH_IMAGE_SIZE = (28, 28)


class Split:
    """One split of labelled images. Subclasses set ``labels`` and define ``image_shape``,
    ``load(indices)`` and ``subset(indices)``."""

    labels = np.zeros(0, np.int64)

    def __len__(self):
        return len(self.labels)

    def batches(self, batch_size, indices=None):
        """Yield ``(images, labels)`` for consecutive chunks of ``indices`` (default: every row in
        order); the next chunk is loaded on a worker thread while the current one is in use."""
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, np.int64)
        chunks = [indices[start : start + batch_size] for start in range(0, len(indices), batch_size)]
        with ThreadPoolExecutor(max_workers=1) as prefetch:
            pending = prefetch.submit(self.load, chunks[0]) if chunks else None
            for number, chunk in enumerate(chunks):
                images = pending.result()
                if number + 1 < len(chunks):
                    pending = prefetch.submit(self.load, chunks[number + 1])
                yield images, self.labels[chunk]


def _stack(images, image_shape):
    return np.stack(images) if images else np.zeros((0,) + tuple(image_shape), np.uint8)


class ArraySplit(Split):
    """Images held in memory as a uint8 array (n, H, W, 3); ``image_size`` (H, W, or n for n x n),
    when given, resizes each loaded batch (the stored array keeps its own size)."""

    def __init__(self, images, labels, image_size=None):
        self.images = np.asarray(images)
        self.labels = np.asarray(labels, np.int64).reshape(-1)
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise DatasetError(f"images must be uint8 (n, H, W, 3), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise DatasetError(f"{len(self.images)} images but {len(self.labels)} labels")
        self.image_size = as_image_size(image_size)

    @property
    def image_shape(self):
        return (self.image_size or self.images.shape[1:3]) + (3,)

    def load(self, indices):
        images = self.images[np.asarray(indices, np.int64)]
        if self.image_size is None:
            return images
        return _stack([resize_image(image, self.image_size) for image in images], self.image_shape)

    def subset(self, indices):
        indices = np.asarray(indices, np.int64)
        return ArraySplit(self.images[indices], self.labels[indices], self.image_size)


class FileSplit(Split):
    """Images decoded from files on demand with ``workers`` threads and resized to ``image_size``
    (H, W, or n for n x n).

    A file that fails to decode here (it passed the load-time check but is corrupt further in) is
    named in a warning and replaced by the next readable image of the same class, or a black image
    if its class has none left, so an epoch never stops halfway. With ``strict`` it raises instead.

    When the whole split, decoded and resized, fits in ``cache_bytes`` (N x H x W x 3 bytes), each
    image is kept in memory after its first read, so later epochs decode nothing.
    """

    def __init__(self, paths, labels, image_size=DEFAULT_IMAGE_SIZE, strict=False, workers=4, cache_bytes=0):
        self.paths = [os.fspath(path) for path in paths]
        self.labels = np.asarray(labels, np.int64).reshape(-1)
        if len(self.paths) != len(self.labels):
            raise DatasetError(f"{len(self.paths)} paths but {len(self.labels)} labels")
        self.image_size = as_image_size(image_size)
        self.strict = strict
        self.workers = workers
        self.cache_bytes = cache_bytes
        self.unreadable = set()
        size = len(self.paths) * int(np.prod(self.image_shape))
        self.cache = np.empty((len(self.paths),) + self.image_shape, np.uint8) if 0 < size <= cache_bytes else None
        self.cached = np.zeros(len(self.paths), bool)

    @property
    def image_shape(self):
        return self.image_size + (3,)

    def load(self, indices):
        with ThreadPoolExecutor(self.workers) as pool:
            images = list(pool.map(self._read, np.asarray(indices, np.int64).reshape(-1)))
        return _stack(images, self.image_shape)

    def subset(self, indices):
        indices = np.asarray(indices, np.int64)
        paths = [self.paths[index] for index in indices]
        return FileSplit(paths, self.labels[indices], self.image_size, self.strict, self.workers, self.cache_bytes)

    def _read(self, index):
        if self.cached[index]:
            return self.cache[index]
        image = read_image(self.paths[index], strict=self.strict)
        if image is None:
            image = self._substitute(index)
        image = resize_image(image, self.image_size)
        if self.cache is not None:
            self.cache[index] = image
            self.cached[index] = True
        return image

    def _substitute(self, index):
        self.unreadable.add(index)
        members = np.flatnonzero(self.labels == self.labels[index])
        for candidate in np.roll(members, -np.searchsorted(members, index)):
            if candidate in self.unreadable:
                continue
            image = read_image(self.paths[candidate], strict=False)
            if image is not None:
                warnings.warn(f"unreadable image {self.paths[index]!r} replaced by {self.paths[candidate]!r}")
                return image
            self.unreadable.add(candidate)
        warnings.warn(f"unreadable image {self.paths[index]!r} and no readable image left in its class: black image used")
        return np.zeros(self.image_shape, np.uint8)


@dataclass
class Dataset:
    class_names: list
    train: Split
    validation: Split
    test: Split


def load_dataset(
    source,
    image_size=None,
    validation_fraction=0.1,
    test_fraction=0.2,
    seed=0,
    archive=None,
    strict=False,
    cache_dir="datasets",
    workers=4,
    verify="auto",
    cache_bytes=0,
    max_per_class=None,
):
    """Load ``source``: "cifar10", "mnist", "fashion_mnist", "digits", "glyphs", or a folder (a path,
    or a folder name inside ``cache_dir``).

    - "digits": scikit-learn's 1,797 8x8 digits (offline), gray 0..16 scaled to RGB 0..255.
    - "cifar10": the official ``cifar-10-python.tar.gz`` from ``archive``, else from ``cache_dir``,
      else Keras' download (after a 3 s connectivity check).
    - "mnist", "fashion_mnist": the four official gzip IDX files from the folder ``archive``, else
      from where a system package or Keras keeps them, else downloaded (see :mod:`triplet_keras.data.idx`);
      28 x 28 gray images repeated to RGB.
    - "glyphs": the folder ``cache_dir/glyphs`` of characters rendered from the installed fonts,
      one class per character and one image per font, 28 x 28 gray as RGB; built on first use
      (:func:`triplet_keras.data.glyphs.build_glyph_folder`), then read as a folder.
    - a folder: class subfolders under one root, or ``train/`` plus ``validation/`` and/or
      ``test/`` each holding class subfolders (see :func:`load_folder`).

    CIFAR-10, MNIST and Fashion-MNIST keep their official test split (``test_fraction`` is unused)
    and cut validation from their official train split. Splits not given by the source are cut per
    class with ``seed`` (:func:`stratified_split`). ``max_per_class`` keeps at most that many images
    of each class, drawn with ``seed``, in each part the source gives (the official train and test
    parts; for digits and folders each class before splitting): a quick experiment on a big dataset.
    ``strict``, ``workers``, ``verify`` and ``cache_bytes`` concern folders only (see :func:`load_folder`).
    ``image_size`` (H, W, or n for n x n) resizes images as they are loaded; folders default to 224 x 224.
    """
    image_size = as_image_size(image_size)
    whole_number = isinstance(max_per_class, (int, np.integer)) and not isinstance(max_per_class, bool)
    if max_per_class is not None and not (whole_number and max_per_class >= 1):
        raise ValueError(f"max_per_class must be a whole number >= 1 or None, got {max_per_class!r}")
    name = str(source).lower()
    if name == "digits":
        images, labels = _digits()
        kept = cap_per_class(labels, max_per_class, seed)
        return _split_in_memory(images[kept], labels[kept], [str(digit) for digit in range(10)], image_size,
                                validation_fraction, test_fraction, seed)
    if name == "cifar10":
        return _official_splits(*_cifar10_arrays(archive, cache_dir), image_size, validation_fraction, seed,
                                max_per_class)
    if name in IDX_DATASETS:
        train_gray, train_labels, test_gray, test_labels, class_names = load_idx_dataset(name, archive, cache_dir)
        return _official_splits(gray_to_rgb(train_gray), train_labels, gray_to_rgb(test_gray), test_labels,
                                class_names, image_size, validation_fraction, seed, max_per_class)
    if name == GLYPHS:
        folder = os.path.join(cache_dir, GLYPHS)
        if not os.path.isdir(folder):
            try:
                build_glyph_folder(folder)
            except GlyphError as error:
                raise DatasetError(str(error)) from error
        return load_folder(folder, image_size or GLYPH_IMAGE_SIZE, validation_fraction, test_fraction, seed,
                           strict, workers, verify, cache_bytes, max_per_class)
    for folder in (os.fspath(source), os.path.join(cache_dir, os.fspath(source))):
        if os.path.isdir(folder):
            return load_folder(folder, image_size or DEFAULT_IMAGE_SIZE, validation_fraction, test_fraction,
                               seed, strict, workers, verify, cache_bytes, max_per_class)
    raise DatasetError(f"unknown dataset {source!r}: not 'cifar10', 'mnist', 'fashion_mnist', 'digits', 'glyphs' "
                       f"or a folder (also looked in {cache_dir!r})")


def cap_per_class(labels, max_per_class, seed=0):
    """Sorted row indices keeping at most ``max_per_class`` rows of each class, drawn with ``seed``;
    every row when ``max_per_class`` is None."""
    labels = np.asarray(labels)
    if max_per_class is None:
        return np.arange(len(labels))
    kept = [rows[:max_per_class] for rows in shuffled_rows_per_class(labels, np.random.default_rng(seed))]
    return np.sort(np.concatenate(kept)).astype(np.int64) if kept else np.zeros(0, np.int64)


def stratified_split(labels, validation_fraction=0.1, test_fraction=0.2, seed=0):
    """Sorted row indices (train, validation, test), cut class by class.

    Each class's n rows are shuffled with ``seed``; round(n * test_fraction) go to test and
    round(n * validation_fraction) to validation, but at least one row stays in train. Unlike a
    global stratified split this works for any class size, which few-shot folders need.
    """
    if min(validation_fraction, test_fraction) < 0 or validation_fraction + test_fraction >= 1:
        raise ValueError("fractions must be >= 0 and validation_fraction + test_fraction < 1")
    labels = np.asarray(labels)
    parts = ([], [], [])
    for rows in shuffled_rows_per_class(labels, np.random.default_rng(seed)):
        n_test = min(int(len(rows) * test_fraction + 0.5), len(rows) - 1)
        n_validation = min(int(len(rows) * validation_fraction + 0.5), len(rows) - 1 - n_test)
        parts[2].append(rows[:n_test])
        parts[1].append(rows[n_test : n_test + n_validation])
        parts[0].append(rows[n_test + n_validation :])
    return tuple(np.sort(np.concatenate(part)).astype(np.int64) if part else np.zeros(0, np.int64) for part in parts)


def _split_in_memory(images, labels, class_names, image_size, validation_fraction, test_fraction, seed):
    train, validation, test = stratified_split(labels, validation_fraction, test_fraction, seed)
    whole = ArraySplit(images, labels, image_size)
    return Dataset(class_names, whole.subset(train), whole.subset(validation), whole.subset(test))


def _official_splits(train_images, train_labels, test_images, test_labels, class_names, image_size,
                     validation_fraction, seed, max_per_class):
    """A Dataset keeping the source's test split; validation cut per class from its train split."""
    kept = cap_per_class(train_labels, max_per_class, seed)
    train, validation, _ = stratified_split(np.asarray(train_labels)[kept], validation_fraction, 0.0, seed)
    official_train = ArraySplit(train_images, train_labels, image_size)
    official_test = ArraySplit(test_images, test_labels, image_size)
    return Dataset(class_names, official_train.subset(kept[train]), official_train.subset(kept[validation]),
                   official_test.subset(cap_per_class(test_labels, max_per_class, seed)))


def gray_to_rgb(gray):
    """Gray uint8 images (n, H, W) as RGB (n, H, W, 3), the gray value repeated in each channel."""
    return np.repeat(np.asarray(gray, np.uint8)[..., None], 3, axis=-1)


def _digits():
    from sklearn.datasets import load_digits

    digits = load_digits()
    return gray_to_rgb(np.round(digits.images * (255.0 / 16.0))), digits.target


# ----------------------------------------------------------------------------------------- folders


def load_folder(root, image_size=DEFAULT_IMAGE_SIZE, validation_fraction=0.1, test_fraction=0.2, seed=0,
                strict=False, workers=4, verify="auto", cache_bytes=0, max_per_class=None):
    """A :class:`Dataset` of :class:`FileSplit` from a folder of class subfolders.

    Layouts: ``root/<class>/...`` (split per class with ``seed``) or ``root/train/<class>/...``
    and optionally ``root/validation/<class>/...`` and ``root/test/<class>/...`` (used as given). Images
    in nested folders inside a class folder belong to that class; hidden files and folders and
    files without an image extension (any case) are ignored. Class names are the sorted folder
    names over all splits.

    Every file is checked once at load time, in ``workers`` threads: fully decoded when
    ``verify="full"``, or ``"auto"`` with at most ``FULL_CHECK_LIMIT`` files; otherwise only its
    first bytes (``verify="header"``), which finds empty, text and missing files cheaply, while a
    file corrupt further in is replaced when its batch is read (see :class:`FileSplit`).
    Files failing the check are skipped and counted in one warning, or raise with ``strict``.
    Raises :class:`DatasetError`, naming the folder, for an empty class folder, fewer than two
    classes, or a training class with fewer than two images. ``cache_bytes``: each split keeps its
    decoded images in memory when they fit (see :class:`FileSplit`). ``max_per_class`` keeps at most
    that many images of each class in each split folder (or the one root), drawn with ``seed`` before
    any splitting. ``image_size`` is (H, W) or n for n x n.
    """
    image_size = as_image_size(image_size)
    if verify not in ("auto", "full", "header"):
        raise ValueError(f"verify must be 'auto', 'full' or 'header', got {verify!r}")
    root = os.fspath(root)
    present = [name for name in SPLIT_FOLDERS if os.path.isdir(os.path.join(root, name))]
    split_roots = [os.path.join(root, name) for name in present] if "train" in present else [root]
    scanned = [scan_classes(folder) for folder in split_roots]
    class_names = sorted(set().union(*scanned))
    if len(class_names) < 2:
        raise DatasetError(f"{root!r} needs at least two class folders, found {class_names}")
    readable = _check_files([path for classes in scanned for paths in classes.values() for path in paths],
                            root, verify, strict, workers)
    splits = {}
    for folder, classes in zip(split_roots, scanned):
        paths, labels = [], []
        for name, files in classes.items():
            kept = [path for path in files if path in readable]
            if not kept:
                raise DatasetError(f"class folder {os.path.join(folder, name)!r} has no readable image")
            if len(kept) < 2 and folder in (root, os.path.join(root, "train")):
                raise DatasetError(f"class folder {os.path.join(folder, name)!r} has a single image; "
                                   "triplets need at least two per class")
            paths += kept
            labels += [class_names.index(name)] * len(kept)
        split = FileSplit(paths, labels, image_size, strict, workers, cache_bytes)
        if max_per_class is not None:
            split = split.subset(cap_per_class(split.labels, max_per_class, seed))
        splits[os.path.basename(folder) if folder != root else "all"] = split
    if "all" in splits:
        indices = stratified_split(splits["all"].labels, validation_fraction, test_fraction, seed)
        return Dataset(class_names, *(splits["all"].subset(rows) for rows in indices))
    empty = FileSplit([], [], image_size, strict, workers, cache_bytes)
    return Dataset(class_names, *(splits.get(name, empty) for name in SPLIT_FOLDERS))


def scan_classes(folder):
    """{class folder name: sorted image paths below it}, hidden entries skipped."""
    classes = {}
    for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
        if entry.is_dir() and not entry.name.startswith("."):
            paths = []
            for directory, subfolders, names in os.walk(entry.path):
                subfolders[:] = [name for name in subfolders if not name.startswith(".")]
                paths += [os.path.join(directory, name) for name in names if is_image_file(name)]
            classes[entry.name] = sorted(paths)
    return classes


def _decodes(path):
    return read_image(path, strict=False) is not None


def _check_files(paths, root, verify, strict, workers):
    """The set of ``paths`` that pass the load-time check (see :func:`load_folder`)."""
    full = verify == "full" or (verify == "auto" and len(paths) <= FULL_CHECK_LIMIT)
    with ThreadPoolExecutor(workers) as pool:
        passed = list(pool.map(_decodes if full else has_image_signature, paths))
    bad = [path for path, ok in zip(paths, passed) if not ok]
    if bad:
        message = f"{len(bad)} unreadable image file(s) under {root!r}, e.g. {bad[:3]}"
        if strict:
            raise DatasetError(message)
        warnings.warn(message + "; skipped")
    return {path for path, ok in zip(paths, passed) if ok}


# ---------------------------------------------------------------------------------------- CIFAR-10


def _cifar10_arrays(archive, cache_dir):
    """(train_images, train_labels, test_images, test_labels, class_names) of CIFAR-10."""
    cached = os.path.join(cache_dir, CIFAR10_ARCHIVE)
    if archive is None and os.path.isfile(cached):
        archive = cached
    if archive is not None:
        return read_cifar10_archive(archive)
    class_names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    return (*_keras_cifar10(cache_dir), class_names)


def _keras_cifar10(cache_dir):
    import keras

    keras_cached = os.path.isdir(os.path.join(keras_home(), "datasets", "cifar-10-batches-py-target"))
    if not keras_cached and not host_reachable(CIFAR10_HOST):
        raise DatasetError(
            f"CIFAR-10 is not cached and {CIFAR10_HOST[0]} cannot be reached. Download {CIFAR10_ARCHIVE} "
            f"and put it in {cache_dir!r}, or pass archive='/path/to/{CIFAR10_ARCHIVE}'."
        )
    (train_images, train_labels), (test_images, test_labels) = keras.datasets.cifar10.load_data()
    return train_images, train_labels.reshape(-1), test_images, test_labels.reshape(-1)


def verify_checksums(path, expected):
    """Raise :class:`DatasetError` unless the file's digests equal ``expected`` ({algorithm: hex})."""
    digests = {algorithm: hashlib.new(algorithm) for algorithm in expected}
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            for digest in digests.values():
                digest.update(chunk)
    for algorithm, digest in digests.items():
        if digest.hexdigest() != expected[algorithm].lower():
            raise DatasetError(
                f"{path!r} is not the official {CIFAR10_ARCHIVE}: its {algorithm} is {digest.hexdigest()}, "
                f"expected {expected[algorithm]}; nothing in it was unpickled"
            )


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles only dicts, lists, bytes and numpy arrays: any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def read_cifar10_archive(path):
    """(train_images, train_labels, test_images, test_labels, class_names) from ``cifar-10-python.tar.gz``.

    The archive's checksums must equal ``CIFAR10_CHECKSUMS`` before anything is unpickled; members
    are read in memory (nothing is extracted), links and paths escaping the archive are refused,
    and the pickles may hold only dicts, lists, bytes and numpy arrays. Each batch row is 3,072
    bytes: the 32 x 32 red plane, then green, then blue.
    """
    verify_checksums(path, CIFAR10_CHECKSUMS)
    try:
        return _read_cifar10_members(path)
    except DatasetError:
        raise
    except (tarfile.TarError, EOFError, OSError, zlib.error, pickle.UnpicklingError, LookupError, TypeError,
            ValueError, AttributeError) as error:  # a damaged archive (only reachable past the checksum)
        raise DatasetError(f"{path!r} is not a readable CIFAR-10 archive: {error}") from error


def _read_cifar10_members(path):
    batches = {}
    with tarfile.open(path, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.name.startswith(("/", "\\")) or ".." in parts or not (member.isfile() or member.isdir()):
                raise DatasetError(f"{path!r}: refusing unsafe archive member {member.name!r}")
            if member.isfile() and parts[:-1] == [CIFAR10_FOLDER] and parts[-1] in CIFAR10_MEMBERS:
                data = tar.extractfile(member).read()
                batches[parts[-1]] = _ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    missing = [name for name in CIFAR10_MEMBERS if name not in batches]
    if missing:
        raise DatasetError(f"{path!r} lacks {CIFAR10_FOLDER}/{missing}")

    def images_and_labels(names):
        data = np.concatenate([np.asarray(batches[name][b"data"], np.uint8) for name in names])
        labels = np.concatenate([np.asarray(batches[name][b"labels"], np.int64) for name in names])
        return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels

    train_images, train_labels = images_and_labels(CIFAR10_MEMBERS[:5])
    test_images, test_labels = images_and_labels(["test_batch"])
    class_names = [name.decode() for name in batches["batches.meta"][b"label_names"]]
    return train_images, train_labels, test_images, test_labels, class_names
