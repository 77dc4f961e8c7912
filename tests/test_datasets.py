import hashlib
import io
import os
import pickle
import tarfile
import warnings

import numpy as np
import pytest

from images_factory import random_rgb, write_image, write_truncated_jpeg
from triplet_keras.data import datasets
from triplet_keras.data.datasets import ArraySplit, DatasetError, FileSplit, load_dataset, stratified_split

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend


# ------------------------------------------------------------------------------------------ digits


def test_digits_loads_offline_as_rgb_uint8_with_a_stratified_seeded_split():
    from sklearn.datasets import load_digits

    data = load_dataset("digits", seed=3)
    assert data.class_names == [str(digit) for digit in range(10)]
    sizes = [len(data.train), len(data.validation), len(data.test)]
    assert sum(sizes) == 1797 and abs(sizes[2] - 0.2 * 1797) < 10 and abs(sizes[1] - 0.1 * 1797) < 10
    for split in (data.train, data.validation, data.test):
        assert split.labels.dtype == np.int64 and set(split.labels) == set(range(10))
        assert split.image_shape == (8, 8, 3)
    images = data.test.load(np.arange(len(data.test)))
    assert images.dtype == np.uint8 and images.shape == (len(data.test), 8, 8, 3) and images.max() == 255
    np.testing.assert_array_equal(images[..., 0], images[..., 2])
    # every test image is a real digit, scaled 0..16 -> 0..255, with its own label
    reference = {bytes(np.round(image * 255 / 16).astype(np.uint8)): label
                 for image, label in zip(load_digits().images, load_digits().target)}
    assert [reference[bytes(image[..., 0])] for image in images] == list(data.test.labels)
    again = load_dataset("digits", seed=3)
    np.testing.assert_array_equal(again.test.load([0, 1, 2]), images[:3])
    other = load_dataset("digits", seed=4)
    assert not np.array_equal(other.test.load(np.arange(20)), images[:20])


def test_digits_image_size_resizes_on_load():
    data = load_dataset("digits", image_size=(16, 12), validation_fraction=0.0)
    assert len(data.validation) == 0 and data.validation.load([]).shape == (0, 16, 12, 3)
    assert data.train.image_shape == (16, 12, 3) and data.train.load([0, 5]).shape == (2, 16, 12, 3)
    square = load_dataset("digits", image_size=16)
    assert square.test.image_shape == (16, 16, 3) and square.test.load([1]).shape == (1, 16, 16, 3)
    for bad in (0, -16, (16, 16, 3), "16"):
        with pytest.raises(ValueError, match="image_size must be a positive int"):
            load_dataset("digits", image_size=bad)


def test_max_per_class_caps_each_digit_before_splitting():
    from sklearn.datasets import load_digits

    data = load_dataset("digits", max_per_class=10, validation_fraction=0.2, test_fraction=0.3, seed=5)
    for split, count in ((data.train, 5), (data.validation, 2), (data.test, 3)):
        assert np.bincount(split.labels).tolist() == [count] * 10
    digits = load_digits()
    reference = {bytes(np.round(image * 255 / 16).astype(np.uint8)): label
                 for image, label in zip(digits.images, digits.target)}
    images = np.concatenate([split.load(np.arange(len(split))) for split in (data.train, data.validation, data.test)])
    labels = np.concatenate([data.train.labels, data.validation.labels, data.test.labels])
    assert len({bytes(image[..., 0]) for image in images}) == 100
    assert [reference[bytes(image[..., 0])] for image in images] == labels.tolist()
    again = load_dataset("digits", max_per_class=10, validation_fraction=0.2, test_fraction=0.3, seed=5)
    np.testing.assert_array_equal(again.train.load(np.arange(50)), data.train.load(np.arange(50)))
    other = load_dataset("digits", max_per_class=10, validation_fraction=0.2, test_fraction=0.3, seed=6)
    assert not np.array_equal(other.train.load(np.arange(50)), data.train.load(np.arange(50)))
    for bad in (0, -1, 2.5, "3", True):
        with pytest.raises(ValueError, match="max_per_class"):
            load_dataset("digits", max_per_class=bad)


def test_stratified_split_is_per_class_disjoint_and_keeps_a_training_row():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 1 + [3] * 5)
    train, validation, test = stratified_split(labels, 0.2, 0.3, seed=1)
    assert sorted(np.concatenate([train, validation, test])) == list(range(len(labels)))
    assert np.bincount(labels[test], minlength=4).tolist() == [3, 1, 0, 2]
    assert np.bincount(labels[validation], minlength=4).tolist() == [2, 0, 0, 1]
    assert set(labels[train]) == {0, 1, 2, 3}
    with pytest.raises(ValueError):
        stratified_split(labels, 0.5, 0.5)


def test_batches_prefetch_in_order_and_match_load_and_subset():
    images = np.arange(10 * 2 * 2 * 3, dtype=np.uint8).reshape(10, 2, 2, 3)
    split = ArraySplit(images, np.arange(10) % 3)
    batches = list(split.batches(4))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([batch for batch, _ in batches]), images)
    np.testing.assert_array_equal(np.concatenate([labels for _, labels in batches]), split.labels)
    (picked, labels), = list(split.batches(8, indices=[9, 0, 4]))
    np.testing.assert_array_equal(picked, images[[9, 0, 4]])
    part = split.subset([1, 3])
    assert len(part) == 2 and part.labels.tolist() == [1, 0]
    np.testing.assert_array_equal(part.load([1]), images[[3]])
    assert list(split.subset([]).batches(4)) == []
    with pytest.raises(DatasetError):
        ArraySplit(images.astype(np.float32), np.zeros(10))
    square = ArraySplit(images, np.arange(10) % 3, image_size=4)
    assert square.image_shape == (4, 4, 3) and square.subset([0, 1]).load([1]).shape == (1, 4, 4, 3)
    with pytest.raises(ValueError, match="image_size"):
        ArraySplit(images, np.arange(10) % 3, image_size=[4, 0])


# ---------------------------------------------------------------------------------------- CIFAR-10


def _pickle_batch(count, offset):
    """A batch of the real layout: rows of 3,072 bytes = red plane, green plane, blue plane."""
    data = np.zeros((count, 3, 32, 32), np.uint8)
    data[:, 0] = (np.arange(count) + offset)[:, None, None]
    data[:, 1] = 100
    data[:, 2, 0, 1] = 200  # blue at row 0, column 1
    labels = [(offset + i) % 10 for i in range(count)]
    return pickle.dumps({b"batch_label": b"x", b"labels": labels, b"data": data.reshape(count, 3072)}, protocol=2)


def _add(tar, name, data, **fields):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in fields.items():
        setattr(info, key, value)
    tar.addfile(info, io.BytesIO(data))


def _cifar_archive(path, extra=None, skip=()):
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    with tarfile.open(path, "w:gz") as tar:
        for number, name in enumerate(names):
            if name not in skip:
                _add(tar, f"cifar-10-batches-py/{name}", _pickle_batch(10, 10 * number))
        meta = {b"label_names": [f"class{i}".encode() for i in range(10)], b"num_vis": 3072}
        _add(tar, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        _add(tar, "cifar-10-batches-py/readme.html", b"<html></html>")
        if extra:
            extra(tar)
    return str(path)


def _accept(monkeypatch, path):
    md5 = hashlib.md5(open(path, "rb").read()).hexdigest()
    monkeypatch.setattr(datasets, "CIFAR10_CHECKSUMS", {"md5": md5})


def test_cifar_archive_of_the_real_layout(tmp_path, monkeypatch):
    archive = _cifar_archive(tmp_path / "small.tar.gz")
    _accept(monkeypatch, archive)
    data = load_dataset("cifar10", archive=archive, validation_fraction=0.2, seed=0)
    assert data.class_names == [f"class{i}" for i in range(10)]
    assert (len(data.train), len(data.validation), len(data.test)) == (40, 10, 10)
    images = data.test.load(np.arange(10))
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
    np.testing.assert_array_equal(images[:, 5, 7, 0], np.arange(50, 60))
    assert (images[..., 1] == 100).all() and images[0, 0, 1, 2] == 200 and images[0, 1, 0, 2] == 0
    assert data.test.labels.tolist() == list(range(10))
    train = np.concatenate([data.train.load(np.arange(40)), data.validation.load(np.arange(10))])
    assert sorted(train[:, 0, 0, 0]) == list(range(50))
    assert set(data.validation.labels) == set(range(10))
    resized = load_dataset("cifar10", archive=archive, image_size=(8, 8))
    assert resized.test.load([0]).shape == (1, 8, 8, 3)


def test_max_per_class_caps_the_cifar_train_and_test_parts(tmp_path, monkeypatch):
    archive = _cifar_archive(tmp_path / "small.tar.gz", skip=["test_batch"],
                             extra=lambda tar: _add(tar, "cifar-10-batches-py/test_batch", _pickle_batch(30, 0)))
    _accept(monkeypatch, archive)
    data = load_dataset("cifar10", archive=archive, max_per_class=2, validation_fraction=0.5, seed=0)
    for split in (data.train, data.validation):
        assert np.bincount(split.labels).tolist() == [1] * 10
    assert np.bincount(data.test.labels).tolist() == [2] * 10
    test = data.test.load(np.arange(20))
    assert ((test[:, 0, 0, 0] % 10) == data.test.labels).all() and len(set(test[:, 0, 0, 0])) == 20
    other = load_dataset("cifar10", archive=archive, max_per_class=2, seed=1)
    assert set(other.test.load(np.arange(20))[:, 0, 0, 0]) != set(test[:, 0, 0, 0])


def test_cifar_archive_is_found_in_the_cache_dir(tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir()
    archive = _cifar_archive(tmp_path / "cache" / "cifar-10-python.tar.gz")
    _accept(monkeypatch, archive)
    assert len(load_dataset("cifar10", cache_dir=str(tmp_path / "cache")).test) == 10


def test_wrong_checksum_is_rejected_before_anything_is_unpickled(tmp_path, monkeypatch):
    archive = _cifar_archive(tmp_path / "cifar-10-python.tar.gz")
    calls = []
    monkeypatch.setattr(datasets, "_ArrayUnpickler", lambda *args, **kwargs: calls.append(args))
    with pytest.raises(DatasetError, match="not the official"):
        load_dataset("cifar10", archive=archive)
    assert calls == []


def test_pickles_that_reference_other_globals_are_refused(tmp_path, monkeypatch):
    class Exploit:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    archive = _cifar_archive(tmp_path / "a.tar.gz", skip=["test_batch"],
                             extra=lambda tar: _add(tar, "cifar-10-batches-py/test_batch", pickle.dumps(Exploit())))
    _accept(monkeypatch, archive)
    with pytest.raises(DatasetError, match="refusing to unpickle .*system"):
        load_dataset("cifar10", archive=archive)


@pytest.mark.parametrize("name, fields", [("../escape", {}), ("/absolute", {}),
                                          ("cifar-10-batches-py/link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"})])
def test_unsafe_members_are_refused(tmp_path, monkeypatch, name, fields):
    archive = _cifar_archive(tmp_path / "a.tar.gz", extra=lambda tar: _add(tar, name, b"x", **fields))
    _accept(monkeypatch, archive)
    with pytest.raises(DatasetError, match="unsafe"):
        load_dataset("cifar10", archive=archive)


def test_archive_missing_a_batch(tmp_path, monkeypatch):
    archive = _cifar_archive(tmp_path / "a.tar.gz", skip=["data_batch_3"])
    _accept(monkeypatch, archive)
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", archive=archive)


def test_offline_without_archive_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(datasets, "host_reachable", lambda host: False)
    with pytest.raises(DatasetError, match="cifar-10-python.tar.gz.*archive="):
        load_dataset("cifar10", cache_dir=str(tmp_path))


# ----------------------------------------------------------------------------------------- folders


def _hostile_folder(root):
    """'cat': 9 good files in every format and depth; 'dog': 3 good + 3 bad + ignored entries."""
    cat, dog = root / "cat", root / "dog"
    rgb = random_rgb(10, 14)
    write_image(cat / "a.jpg", rgb)
    write_image(cat / "B.JPG", rgb)
    write_image(cat / "ü猫.png", rgb)
    write_image(cat / "deep16.png", (rgb[..., 0].astype(np.uint16) * 257))
    write_image(cat / "gray.png", rgb[..., 0])
    write_image(cat / "rgba.png", np.dstack([rgb, rgb[..., :1]]))
    write_image(cat / "c.tif", rgb)
    write_image(cat / "sub" / "deeper" / "d.webp", rgb)
    write_image(cat / "e.bmp", rgb)
    for name in ["x.png", "y.jpeg", "z.tiff"]:
        write_image(dog / name, random_rgb(30, 20, seed=1))
    (dog / "zero.jpg").write_bytes(b"")
    (dog / "text.jpg").write_text("hello")
    write_truncated_jpeg(dog / "truncated.jpg")
    (dog / ".DS_Store").write_bytes(b"\x00\x01")
    write_image(dog / ".hidden" / "h.png", rgb)
    write_image(dog / "._h.png", rgb)
    (dog / "notes.txt").write_text("ignored")
    write_image(root / ".trash" / "t.png", rgb)
    return root


def _load_all(split):
    return np.concatenate([images for images, _ in split.batches(4)])


def test_hostile_folder_loads_good_files_and_warns_once(tmp_path):
    root = _hostile_folder(tmp_path / "data")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_dataset(str(root), image_size=(6, 8), validation_fraction=0.0, test_fraction=0.25)
    summaries = [str(warning.message) for warning in caught if "unreadable" in str(warning.message)]
    assert len(summaries) == 1 and summaries[0].startswith("3 unreadable image file(s)")
    assert data.class_names == ["cat", "dog"]
    labels = np.concatenate([data.train.labels, data.test.labels])
    assert np.bincount(labels).tolist() == [9, 3]
    assert np.bincount(data.test.labels).tolist() == [2, 1]
    images = _load_all(data.train)
    assert images.shape == (len(data.train), 6, 8, 3) and images.dtype == np.uint8
    paths = data.train.paths + data.test.paths
    assert any(path.endswith("ü猫.png") for path in paths) and any(path.endswith("d.webp") for path in paths)
    assert not any("/." in path or path.endswith("txt") for path in paths)


def test_strict_folder_raises_on_the_first_unreadable_files(tmp_path):
    with pytest.raises(DatasetError, match="3 unreadable.*(zero|text|truncated)"):
        load_dataset(str(_hostile_folder(tmp_path / "data")), strict=True)


def test_header_check_defers_truncated_files_to_batches_which_substitute_not_crash(tmp_path, monkeypatch):
    root = _hostile_folder(tmp_path / "data")
    decoded = []
    original = datasets.read_image
    monkeypatch.setattr(datasets, "read_image", lambda path, strict=True: decoded.append(path) or original(path, strict))
    with pytest.warns(UserWarning, match="2 unreadable"):
        data = load_dataset(str(root), image_size=(5, 5), validation_fraction=0.0, test_fraction=0.0, verify="header")
    assert decoded == [] and len(data.train) == 13
    dog = np.flatnonzero(data.train.labels == 1)
    with pytest.warns(UserWarning, match="truncated.jpg' replaced by"):
        images = _load_all(data.train)
    truncated = data.train.paths.index(str(root / "dog" / "truncated.jpg"))
    replacement = dog[(list(dog).index(truncated) + 1) % len(dog)]
    np.testing.assert_array_equal(images[truncated], images[replacement])
    with pytest.raises(Exception, match="truncated.jpg"):
        FileSplit(data.train.paths, data.train.labels, (5, 5), strict=True).load([truncated])


def test_splits_that_fit_the_cache_decode_each_file_once(tmp_path, monkeypatch):
    root = tmp_path / "data"
    for index in range(6):
        write_image(root / f"class{index % 2}" / f"{index}.png", random_rgb(9, 7, seed=index))
    decoded = []
    original = datasets.read_image
    monkeypatch.setattr(datasets, "read_image", lambda path, strict=True: decoded.append(path) or original(path, strict))
    data = load_dataset(str(root), image_size=(4, 4), validation_fraction=0.0, test_fraction=0.0, verify="header",
                        cache_bytes=6 * 4 * 4 * 3)  # exactly the 6 resized images
    first = data.train.load([5, 0, 3])
    assert len(decoded) == 3
    np.testing.assert_array_equal(_load_all(data.train)[[5, 0, 3]], first)  # the cached copies are the images
    np.testing.assert_array_equal(_load_all(data.train), _load_all(data.train))
    assert len(decoded) == 6  # every file decoded once over three passes
    uncached = FileSplit(data.train.paths, data.train.labels, (4, 4), cache_bytes=6 * 4 * 4 * 3 - 1)
    np.testing.assert_array_equal(_load_all(uncached), _load_all(data.train))
    _load_all(uncached)
    assert len(decoded) == 6 + 12  # one byte short of the whole split: no cache, decoded every pass
    subset = data.train.subset([1, 2])
    subset.load([0, 1]), subset.load([0, 1])
    assert len(decoded) == 18 + 2  # a subset keeps the budget and caches too


def test_class_whose_images_are_all_unreadable_gets_black_images_late(tmp_path):
    write_truncated_jpeg(tmp_path / "a.jpg")
    split = FileSplit([str(tmp_path / "a.jpg")] * 2, [0, 0], (3, 3))
    with pytest.warns(UserWarning, match="black image"):
        assert split.load([0]).max() == 0


def _class_folders(root, counts):
    for name, count in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for number in range(count):
            write_image(root / name / f"{number}.png", random_rgb(4, 4, seed=number))
    return str(root)


@pytest.mark.parametrize("counts, message", [
    ({"a": 3, "b": 0}, "'.*b' has no readable image"),
    ({"a": 3}, "at least two class folders"),
    ({"a": 3, "b": 1}, "'.*b' has a single image"),
])
def test_bad_folder_layouts_raise_naming_the_folder(tmp_path, counts, message):
    with pytest.raises(DatasetError, match=message):
        load_dataset(_class_folders(tmp_path / "root", counts))


def test_class_folder_of_only_bad_files_names_the_folder(tmp_path):
    root = _class_folders(tmp_path / "root", {"a": 2, "b": 0})
    (tmp_path / "root" / "b" / "bad.jpg").write_text("nope")
    with pytest.warns(UserWarning), pytest.raises(DatasetError, match="b' has no readable image"):
        load_dataset(root)


def test_presplit_layout_uses_the_given_splits_and_sorted_union_of_classes(tmp_path):
    _class_folders(tmp_path / "d" / "train", {"zebra": 3, "ant": 2})
    _class_folders(tmp_path / "d" / "test", {"ant": 1, "moth": 2})
    data = load_dataset(str(tmp_path / "d"), image_size=(4, 4))
    assert data.class_names == ["ant", "moth", "zebra"]
    assert data.train.labels.tolist() == [0, 0, 2, 2, 2] and data.test.labels.tolist() == [0, 1, 1]
    assert len(data.validation) == 0 and data.validation.load([]).shape == (0, 4, 4, 3)
    _class_folders(tmp_path / "d" / "validation", {"zebra": 1})
    assert load_dataset(str(tmp_path / "d")).validation.labels.tolist() == [2]


def test_max_per_class_caps_each_class_folder_and_each_given_split(tmp_path):
    root = _class_folders(tmp_path / "one", {"a": 5, "b": 3})
    data = load_dataset(root, image_size=4, max_per_class=2, validation_fraction=0.0, test_fraction=0.0, seed=1)
    assert data.train.labels.tolist() == [0, 0, 1, 1] and data.train.image_shape == (4, 4, 3)
    assert all(os.path.dirname(path).endswith(("a", "b")) for path in data.train.paths)
    other = load_dataset(root, image_size=4, max_per_class=2, validation_fraction=0.0, test_fraction=0.0, seed=2)
    assert other.train.paths != data.train.paths
    _class_folders(tmp_path / "two" / "train", {"a": 3, "b": 4})
    _class_folders(tmp_path / "two" / "test", {"a": 3, "b": 1})
    data = load_dataset(str(tmp_path / "two"), image_size=(4, 4), max_per_class=2)
    assert data.train.labels.tolist() == [0, 0, 1, 1] and data.test.labels.tolist() == [0, 0, 1]


def test_folder_image_size_may_be_one_int(tmp_path):
    root = _class_folders(tmp_path / "root", {"a": 2, "b": 2})
    split = datasets.load_folder(root, image_size=6, test_fraction=0.0, validation_fraction=0.0).train
    assert split.image_shape == (6, 6, 3) and split.load([0, 3]).shape == (2, 6, 6, 3)
    assert FileSplit(split.paths, split.labels, 5).load([1]).shape == (1, 5, 5, 3)
    for bad in (0, (6, 6, 6), "6"):
        with pytest.raises(ValueError, match="image_size must be a positive int"):
            datasets.load_folder(root, image_size=bad)


def test_folder_is_looked_for_in_cache_dir_and_unknown_sources_fail(tmp_path):
    _class_folders(tmp_path / "datasets" / "mine", {"a": 2, "b": 2})
    data = load_dataset("mine", cache_dir=str(tmp_path / "datasets"), test_fraction=0.0, validation_fraction=0.0)
    assert len(data.train) == 4 and data.train.image_shape == (224, 224, 3)
    with pytest.raises(DatasetError, match="unknown dataset"):
        load_dataset("nothing-here", cache_dir=str(tmp_path))
