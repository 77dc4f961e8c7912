"""MNIST and Fashion-MNIST from their four gzip IDX files (``load_dataset("mnist" | "fashion_mnist")``).

IDX is a plain array format: a big-endian header, the magic number 0x0000 08 D (08: unsigned bytes,
D: the number of dimensions) and D 32-bit sizes, then the prod(sizes) bytes of the array, row-major.
Images are 0x00000803 (n, 28, 28), labels 0x00000801 (n,). Every file is checked before use: its
header, its byte count against the header, labels in 0..9, as many labels as images, and the SHA-256
of its decompressed bytes against the official one (not the .gz, which repackagers re-compress).

The files are looked for in ``archive`` when given, else in the folder a system package installs
(Debian's ``dataset-fashion-mnist``: /usr/share/datasets/fashion-mnist), ``<cache_dir>/<name>`` and
the Keras cache ``~/.keras/datasets/<folder>``, else downloaded into the Keras cache after a 3 s
connectivity check, so offline it fails fast with what to do.
"""
import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass

import numpy as np

from triplet_keras.core.downloads import host_reachable, keras_home
from triplet_keras.data.errors import DatasetError

IMAGE_SIDE = 28
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
UNSIGNED_BYTE = 0x08
READ_CHUNK = 1 << 24
DOWNLOAD_HOST = ("storage.googleapis.com", 443)


@dataclass(frozen=True)
class IdxSource:
    """One IDX dataset: its class names, the SHA-256 of each decompressed file, where it is found."""

    class_names: tuple
    sha256: dict  # .gz file name -> SHA-256 of its decompressed bytes
    origin: str  # URL folder the four .gz files are downloaded from
    keras_folder: str  # the download lands in <Keras home>/datasets/<keras_folder>
    system_folder: str  # where a system package installs the files ("" if none)
    offline_hint: str


IDX_SOURCES = {
    # Class names as the Fashion-MNIST authors give them, "/" replaced so that each is a valid
    # folder name (a target folder dataset with the same classes). Checksums computed from the
    # Debian package's files; the same values are pinned in public projects that download the
    # official release.
    "fashion_mnist": IdxSource(
        class_names=("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"),
        sha256={
            "train-images-idx3-ubyte.gz": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "train-labels-idx1-ubyte.gz": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "t10k-images-idx3-ubyte.gz": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "t10k-labels-idx1-ubyte.gz": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        },
        origin="https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        keras_folder="fashion-mnist",  # where keras.datasets.fashion_mnist keeps the same files
        system_folder="/usr/share/datasets/fashion-mnist",
        offline_hint="install the Debian package (apt-get install dataset-fashion-mnist) or pass --archive FOLDER "
                     "(archive=FOLDER)",
    ),
    # Checksums of the decompressed official files as pinned, identically, by many public projects
    # that download MNIST; sizes 47,040,016 / 60,008 / 7,840,016 / 10,008 bytes.
    "mnist": IdxSource(
        class_names=tuple(str(digit) for digit in range(10)),
        sha256={
            "train-images-idx3-ubyte.gz": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte.gz": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte.gz": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte.gz": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        origin="https://storage.googleapis.com/cvdf-datasets/mnist/",
        keras_folder="mnist",
        system_folder="",
        offline_hint="copy the four MNIST files into a folder and pass --archive FOLDER (archive=FOLDER)",
    ),
}


def load_idx_dataset(name, archive=None, cache_dir="datasets"):
    """(train_images, train_labels, test_images, test_labels, class_names) of ``name`` ("mnist" or
    "fashion_mnist"): gray uint8 images (n, 28, 28) and int64 labels, every file checked (see the module)."""
    source = IDX_SOURCES[name]
    folder = find_idx_folder(name, archive, cache_dir)
    parts = [read_images_and_labels(folder, part, source) for part in FILES]
    return (*parts[0], *parts[1], list(source.class_names))


def find_idx_folder(name, archive=None, cache_dir="datasets"):
    """The folder holding the four .gz files of ``name``, downloading them when they are nowhere."""
    source = IDX_SOURCES[name]
    names = [file for pair in FILES.values() for file in pair]
    if archive is not None:
        missing = [file for file in names if not os.path.isfile(os.path.join(archive, file))]
        if missing:
            raise DatasetError(f"archive {os.fspath(archive)!r} must be a folder holding {names}; it lacks {missing}")
        return os.fspath(archive)
    download_folder = os.path.join(keras_home(), "datasets", source.keras_folder)
    candidates = [folder for folder in (source.system_folder, os.path.join(cache_dir, name), download_folder) if folder]
    for folder in candidates:
        if all(os.path.isfile(os.path.join(folder, file)) for file in names):
            return folder
    import keras

    if not host_reachable(DOWNLOAD_HOST):
        raise DatasetError(f"{name}: the files {names} are not in {candidates} and {DOWNLOAD_HOST[0]} cannot be "
                           f"reached to download them; {source.offline_hint}")
    for file in names:
        try:
            keras.utils.get_file(file, origin=source.origin + file, cache_dir=keras_home(),
                                 cache_subdir=os.path.join("datasets", source.keras_folder))
        except Exception as error:  # get_file raises a plain Exception for every fetch failure
            raise DatasetError(f"{name}: downloading {source.origin + file} failed ({error}); "
                               f"{source.offline_hint}") from error
    return download_folder


def read_images_and_labels(folder, part, source):
    """Images (n, 28, 28) and labels (n,) of ``part`` ("train" or "test") in ``folder``, each file checked
    against ``source.sha256``, the labels against ``source.class_names``."""
    images_path, labels_path = (os.path.join(folder, file) for file in FILES[part])
    images = read_idx(images_path, (IMAGE_SIDE, IMAGE_SIDE), source.sha256[FILES[part][0]])
    labels = read_idx(labels_path, (), source.sha256[FILES[part][1]]).astype(np.int64)
    if len(labels) and labels.max() >= len(source.class_names):
        raise DatasetError(f"{labels_path!r} holds label {labels.max()}, outside 0..{len(source.class_names) - 1}")
    if len(images) != len(labels):
        raise DatasetError(f"{images_path!r} holds {len(images)} images but {labels_path!r} {len(labels)} labels")
    return images, labels


def read_idx(path, item_shape, sha256):
    """The uint8 array (n, *item_shape) in the gzip IDX file ``path``.

    The header must be that of unsigned bytes with 1 + len(item_shape) dimensions and sizes
    (n, *item_shape); the decompressed data exactly n * prod(item_shape) bytes; the SHA-256 of the
    decompressed file ``sha256``. Each failure is a :class:`DatasetError` naming ``path``. The data is
    read in chunks, so memory follows the bytes really there, whatever size a corrupt header announces.
    """
    dimensions = 1 + len(item_shape)
    header_size = 4 + 4 * dimensions
    digest = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as file:
            header = file.read(header_size)
            digest.update(header)
            magic = int.from_bytes(header[:4], "big")
            expected = UNSIGNED_BYTE << 8 | dimensions
            if len(header) < 4 or magic != expected:
                raise DatasetError(f"{path!r} is not an IDX file of unsigned bytes with {dimensions} dimension(s): "
                                   f"magic number 0x{magic:08x}, expected 0x{expected:08x}")
            if len(header) < header_size:
                raise DatasetError(f"{path!r} is truncated inside its {header_size}-byte header")
            shape = tuple(int.from_bytes(header[start : start + 4], "big") for start in range(4, header_size, 4))
            if shape[1:] != tuple(item_shape):
                raise DatasetError(f"{path!r} holds items of shape {shape[1:]}, expected {tuple(item_shape)}")
            size = math.prod(shape)
            chunks, remaining = [], size + 1  # one byte more than announced tells trailing data
            while remaining > 0:
                chunk = file.read(min(remaining, READ_CHUNK))
                if not chunk:
                    break
                chunks.append(chunk)
                digest.update(chunk)
                remaining -= len(chunk)
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetError(f"{path!r} is not a readable gzip file: {error}") from error
    data = b"".join(chunks)
    if len(data) != size:
        amount = "fewer" if len(data) < size else "more"
        raise DatasetError(f"{path!r}: its header announces shape {shape}, {size} bytes of data, but it holds {amount}")
    if digest.hexdigest() != sha256:
        raise DatasetError(f"{path!r} is not the official file: the SHA-256 of its decompressed bytes is "
                           f"{digest.hexdigest()}, expected {sha256}")
    return np.frombuffer(data, np.uint8).reshape(shape)
