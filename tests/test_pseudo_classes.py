import numpy as np
import pytest

from triplet_keras.data.datasets import ArraySplit
from triplet_keras.data.pseudo_classes import N_VARIANTS, symmetries, with_pseudo_classes

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend


def test_symmetries_are_the_eight_distinct_maps_of_the_square():
    image = np.arange(9, dtype=np.uint8).reshape(1, 3, 3, 1)
    variants = symmetries(image)
    assert len(variants) == N_VARIANTS
    assert len({v.tobytes() for v in variants}) == N_VARIANTS
    np.testing.assert_array_equal(variants[0], image)
    np.testing.assert_array_equal(variants[4][0, :, :, 0], image[0, :, ::-1, 0])


def test_each_symmetry_of_each_class_is_a_new_class():
    rng = np.random.default_rng(0)
    split = ArraySplit(rng.integers(0, 255, (6, 4, 4, 3), dtype=np.uint8), [0, 1, 2, 0, 1, 2])
    extended = with_pseudo_classes(split)
    assert len(extended) == 6 * N_VARIANTS
    assert sorted(np.unique(extended.labels)) == list(range(3 * N_VARIANTS))
    np.testing.assert_array_equal(extended.load(np.arange(6)), split.images)
    np.testing.assert_array_equal(extended.labels[6:12], split.labels + 3)


def test_symmetries_are_applied_as_rows_are_loaded(tmp_path):
    """Any rows, in any order, from an in-memory or a folder split, equal the eagerly turned images."""
    import cv2

    from triplet_keras.data.datasets import FileSplit

    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (5, 6, 6, 3), dtype=np.uint8)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        cv2.imwrite(paths[-1], image[..., ::-1])  # PNG is lossless; OpenCV writes BGR
    eager = np.concatenate(symmetries(images))
    rows = rng.permutation(len(eager))[:17]
    for split in (ArraySplit(images, [0, 1, 0, 1, 2]), FileSplit(paths, [0, 1, 0, 1, 2], (6, 6))):
        extended = with_pseudo_classes(split)
        np.testing.assert_array_equal(extended.load(rows), eager[rows])
        np.testing.assert_array_equal(extended.subset(rows).load(np.arange(17)), eager[rows])
        assert extended.image_shape == (6, 6, 3)
    np.testing.assert_array_equal(images, ArraySplit(images, [0, 1, 0, 1, 2]).images)  # the base is untouched


def test_non_square_images_are_refused():
    with pytest.raises(ValueError, match="square"):
        with_pseudo_classes(ArraySplit(np.zeros((2, 4, 5, 3), np.uint8), [0, 1]))
