"""The synthetic target domain: deterministic, shape-preserving, and really different."""
import numpy as np
import pytest

from triplet_keras.data.datasets import ArraySplit, load_dataset
from triplet_keras.data.domain_shift import apply_style, apply_to_split

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend


def test_style_is_deterministic_and_keeps_shape():
    images = load_dataset("digits").test.load(np.arange(20))
    first, second = apply_style("style", images, seed=1), apply_style("style", images, seed=1)
    np.testing.assert_array_equal(first, second)
    assert first.shape == images.shape and first.dtype == np.uint8
    assert not np.array_equal(first, apply_style("style", images, seed=2))
    # Thicker strokes: more lit pixels on average, and the images really change.
    assert (first > 64).mean() > (images > 64).mean()
    assert np.abs(first.astype(int) - images).mean() > 10


def test_split_keeps_labels_and_rejects_unknown_style():
    split = ArraySplit(np.zeros((3, 8, 8, 3), np.uint8), [0, 1, 1])
    styled = apply_to_split("style", split)
    np.testing.assert_array_equal(styled.labels, [0, 1, 1])
    with pytest.raises(ValueError, match="unknown target style"):
        apply_style("cartoon", split.images)
