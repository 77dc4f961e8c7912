"""MNIST / Fashion-MNIST: small gzip IDX files of the real format through the real loading code."""
import dataclasses
import gzip
import hashlib
import os
import shutil

import numpy as np
import pytest

from triplet_keras.data import idx
from triplet_keras.data.datasets import DatasetError, load_dataset

pytestmark = pytest.mark.backend_free  # numpy and the data loaders only (keras.utils.get_file is replaced)

TRAIN_PER_CLASS, TEST_PER_CLASS = 6, 3
FASHION = "/usr/share/datasets/fashion-mnist"


def idx_bytes(array, magic=None):
    """The IDX encoding of a uint8 array: magic 0x0000 08 <ndim>, the sizes, the bytes."""
    array = np.asarray(array, np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    return b"".join([magic.to_bytes(4, "big"), *(size.to_bytes(4, "big") for size in array.shape), array.tobytes()])


def write_gz(path, data, level=9, mtime=0):
    path.write_bytes(gzip.compress(data, compresslevel=level, mtime=mtime))


def write_parts(folder, seed=0):
    """The four files of a 10-class set, labels shuffled; returns {part: (images, labels)}."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    parts = {}
    for part, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        labels = rng.permutation(np.repeat(np.arange(10), per_class)).astype(np.uint8)
        images = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(len(labels))  # each image is told apart by its first pixel
        images_file, labels_file = idx.FILES[part]
        write_gz(folder / images_file, idx_bytes(images))
        write_gz(folder / labels_file, idx_bytes(labels))
        parts[part] = images, labels
    return parts


def accept(monkeypatch, folder, name="fashion_mnist"):
    """Pin the SHA-256 of the decompressed files in ``folder`` and hide the system folder."""
    def sha256(file):
        try:
            return hashlib.sha256(gzip.decompress((folder / file).read_bytes())).hexdigest()
        except OSError:
            return "0" * 64

    source = idx.IDX_SOURCES[name]
    pins = {file: sha256(file) for file in source.sha256}
    monkeypatch.setitem(idx.IDX_SOURCES, name, dataclasses.replace(source, sha256=pins, system_folder=""))


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No system folder, an empty Keras home, and no network."""
    for name, source in idx.IDX_SOURCES.items():
        monkeypatch.setitem(idx.IDX_SOURCES, name, dataclasses.replace(source, system_folder=""))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    calls = []
    monkeypatch.setattr(idx, "host_reachable", lambda host: calls.append(host) or False)
    return calls


def _rows(images):
    return sorted(map(bytes, images.reshape(len(images), -1)))


def test_round_trip_keeps_the_official_test_split_and_cuts_validation_from_train(tmp_path, monkeypatch):
    parts = write_parts(tmp_path / "f")
    accept(monkeypatch, tmp_path / "f")
    data = load_dataset("fashion_mnist", archive=str(tmp_path / "f"), validation_fraction=0.2, test_fraction=0.5,
                        seed=1)
    assert data.class_names == ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                "Bag", "Ankle boot"]
    test_images, test_labels = parts["test"]
    loaded = data.test.load(np.arange(len(data.test)))
    assert loaded.dtype == np.uint8 and loaded.shape == (30, 28, 28, 3)
    for channel in range(3):
        np.testing.assert_array_equal(loaded[..., channel], test_images)
    np.testing.assert_array_equal(data.test.labels, test_labels)
    # train + validation = the official train part, validation 1 image (20% of 6) per class
    train_images, train_labels = parts["train"]
    assert np.bincount(data.validation.labels).tolist() == [1] * 10
    assert np.bincount(data.train.labels).tolist() == [5] * 10
    both = np.concatenate([data.train.load(np.arange(len(data.train))),
                           data.validation.load(np.arange(len(data.validation)))])
    assert _rows(both[..., 0]) == _rows(train_images)
    by_first_pixel = dict(zip(train_images[:, 0, 0].tolist(), train_labels.tolist()))
    assert [by_first_pixel[int(image[0, 0, 0])] for image in both] == (
        data.train.labels.tolist() + data.validation.labels.tolist())
    assert load_dataset("fashion_mnist", archive=str(tmp_path / "f"), image_size=8).train.load([0]).shape == (1, 8, 8, 3)


def test_mnist_reads_the_same_format_with_digit_names(tmp_path, monkeypatch):
    parts = write_parts(tmp_path / "m", seed=2)
    accept(monkeypatch, tmp_path / "m", "mnist")
    data = load_dataset("MNIST", archive=tmp_path / "m")
    assert data.class_names == [str(digit) for digit in range(10)]
    np.testing.assert_array_equal(data.test.load([4])[0, :, :, 1], parts["test"][0][4])


def corrupt(folder, file, data):
    write_gz(folder / file, data)


@pytest.mark.parametrize("file, make, message", [
    ("train-images-idx3-ubyte.gz", lambda: idx_bytes(np.zeros((60, 28, 28)), magic=0x0C03),
     r"not an IDX file of unsigned bytes with 3 dimension\(s\): magic number 0x00000c03, expected 0x00000803"),
    ("t10k-labels-idx1-ubyte.gz", lambda: idx_bytes(np.zeros((30, 1)), magic=0x0802),
     "magic number 0x00000802, expected 0x00000801"),
    ("t10k-images-idx3-ubyte.gz", lambda: idx_bytes(np.zeros((30, 27, 28))),
     r"items of shape \(27, 28\), expected \(28, 28\)"),
    ("train-images-idx3-ubyte.gz", lambda: idx_bytes(np.zeros((60, 28, 28)))[:-5],
     r"announces shape \(60, 28, 28\), 47040 bytes of data, but it holds fewer"),
    ("train-labels-idx1-ubyte.gz", lambda: idx_bytes(np.zeros(60)) + b"\0",
     r"announces shape \(60,\), 60 bytes of data, but it holds more"),
    ("t10k-images-idx3-ubyte.gz", lambda: idx_bytes(np.zeros((30, 28, 28)))[:10], "truncated inside its 16-byte header"),
    ("t10k-labels-idx1-ubyte.gz", lambda: idx_bytes(np.arange(30) % 11), r"holds label 10, outside 0\.\.9"),
    ("t10k-labels-idx1-ubyte.gz", lambda: idx_bytes(np.arange(29) % 10), "holds 30 images but .* 29 labels"),
])
def test_structural_errors_name_the_file(tmp_path, monkeypatch, file, make, message):
    write_parts(tmp_path)
    corrupt(tmp_path, file, make())
    accept(monkeypatch, tmp_path)  # the corrupt file's own checksum: only the structure check can fail
    with pytest.raises(DatasetError, match=message) as error:
        load_dataset("fashion_mnist", archive=tmp_path)
    assert repr(str(tmp_path / file)) in str(error.value)


def test_a_file_that_is_not_gzip_is_named(tmp_path, monkeypatch):
    write_parts(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(idx_bytes(np.zeros(60)))
    accept(monkeypatch, tmp_path)
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz' is not a readable gzip file"):
        load_dataset("fashion_mnist", archive=tmp_path)


def test_checksum_of_the_decompressed_bytes_is_checked(tmp_path, monkeypatch):
    parts = write_parts(tmp_path)
    accept(monkeypatch, tmp_path)
    labels = parts["train"][1].copy()
    labels[0] = (labels[0] + 1) % 10  # still a well-formed file, but not the pinned one
    corrupt(tmp_path, "train-labels-idx1-ubyte.gz", idx_bytes(labels))
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz' is not the official file: the SHA-256 of its "
                                           "decompressed bytes is [0-9a-f]{64}, expected"):
        load_dataset("fashion_mnist", archive=tmp_path)


def test_files_compressed_differently_are_accepted(tmp_path, monkeypatch):
    parts = write_parts(tmp_path)
    accept(monkeypatch, tmp_path)
    for file in idx.IDX_SOURCES["fashion_mnist"].sha256:
        before = (tmp_path / file).read_bytes()
        write_gz(tmp_path / file, gzip.decompress(before), level=1, mtime=123456)
        assert (tmp_path / file).read_bytes() != before
    data = load_dataset("fashion_mnist", archive=tmp_path)
    np.testing.assert_array_equal(data.test.load(np.arange(30))[..., 2], parts["test"][0])


def test_offline_without_files_fails_fast_saying_what_to_do(tmp_path, isolated):
    with pytest.raises(DatasetError, match="cannot be reached.*apt-get install dataset-fashion-mnist.*--archive FOLDER"):
        load_dataset("fashion_mnist", cache_dir=str(tmp_path))
    with pytest.raises(DatasetError, match="mnist: .*not in .*--archive FOLDER"):
        load_dataset("mnist", cache_dir=str(tmp_path))
    assert isolated == [idx.DOWNLOAD_HOST] * 2


def test_archive_folder_lacking_a_file_names_it(tmp_path, isolated):
    write_parts(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DatasetError, match=r"must be a folder holding .* it lacks \['t10k-labels-idx1-ubyte.gz'\]"):
        load_dataset("fashion_mnist", archive=tmp_path)
    with pytest.raises(DatasetError, match="must be a folder"):
        load_dataset("fashion_mnist", archive=tmp_path / "train-images-idx3-ubyte.gz")
    assert isolated == []


def test_files_are_found_in_the_cache_dir_and_the_keras_cache(tmp_path, monkeypatch, isolated):
    write_parts(tmp_path / "cache" / "fashion_mnist")
    accept(monkeypatch, tmp_path / "cache" / "fashion_mnist")
    assert len(load_dataset("fashion_mnist", cache_dir=str(tmp_path / "cache")).test) == 30
    write_parts(tmp_path / "keras_home" / "datasets" / "fashion-mnist")
    assert len(load_dataset("fashion_mnist", cache_dir=str(tmp_path / "elsewhere")).test) == 30
    assert isolated == []


def test_online_the_files_are_downloaded_into_the_keras_cache(tmp_path, monkeypatch, isolated):
    write_parts(tmp_path / "server")
    accept(monkeypatch, tmp_path / "server", "mnist")
    monkeypatch.setattr(idx, "host_reachable", lambda host: True)
    fetched = []

    def get_file(fname, origin, cache_dir, cache_subdir):
        fetched.append(origin)
        os.makedirs(os.path.join(cache_dir, cache_subdir), exist_ok=True)
        return shutil.copy(tmp_path / "server" / fname, os.path.join(cache_dir, cache_subdir, fname))

    monkeypatch.setattr("keras.utils.get_file", get_file)
    data = load_dataset("mnist", cache_dir=str(tmp_path / "cache"))
    assert len(data.test) == 30 and len(fetched) == 4
    assert all(origin.startswith("https://storage.googleapis.com/cvdf-datasets/mnist/") for origin in fetched)
    assert sorted(os.listdir(tmp_path / "keras_home" / "datasets" / "mnist")) == sorted(idx.IDX_SOURCES["mnist"].sha256)


def test_a_failed_download_says_what_to_do(tmp_path, monkeypatch, isolated):
    monkeypatch.setattr(idx, "host_reachable", lambda host: True)

    def get_file(fname, origin, cache_dir, cache_subdir):
        raise Exception(f"URL fetch failure on {origin}: 404")

    monkeypatch.setattr("keras.utils.get_file", get_file)
    with pytest.raises(DatasetError, match="downloading .*train-images-idx3-ubyte.gz failed .*404.*apt-get install"):
        load_dataset("fashion_mnist", cache_dir=str(tmp_path))


def test_max_per_class_caps_the_official_train_and_test_parts(tmp_path, monkeypatch):
    parts = write_parts(tmp_path)
    accept(monkeypatch, tmp_path)
    data = load_dataset("fashion_mnist", archive=tmp_path, max_per_class=2, validation_fraction=0.5, seed=3)
    assert np.bincount(data.test.labels).tolist() == [2] * 10
    assert np.bincount(data.train.labels).tolist() == [1] * 10 and np.bincount(data.validation.labels).tolist() == [1] * 10
    test_images = data.test.load(np.arange(20))[..., 0]
    assert set(_rows(test_images)) <= set(_rows(parts["test"][0]))
    again = load_dataset("fashion_mnist", archive=tmp_path, max_per_class=2, validation_fraction=0.5, seed=3)
    np.testing.assert_array_equal(again.test.load(np.arange(20))[..., 0], test_images)
    other = load_dataset("fashion_mnist", archive=tmp_path, max_per_class=2, validation_fraction=0.5, seed=4)
    assert _rows(other.test.load(np.arange(20))[..., 0]) != _rows(test_images)
    assert len(load_dataset("fashion_mnist", archive=tmp_path, max_per_class=100).test) == 30


@pytest.mark.skipif(not os.path.isdir(FASHION), reason="the Debian package dataset-fashion-mnist is not installed")
def test_the_debian_fashion_mnist_matches_the_pinned_checksums():
    data = load_dataset("fashion_mnist", validation_fraction=0.0)
    assert len(data.train) == 60000 and len(data.test) == 10000
    assert np.bincount(data.test.labels).tolist() == [1000] * 10
