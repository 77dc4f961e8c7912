"""The gallery on its own: items appended with running ids, lookup against a numpy brute force, bad input."""
import numpy as np
import pytest

from triplet_keras.gallery import Gallery, GalleryIndex, extend_gallery, lookup

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend


def test_extend_and_lookup_match_a_brute_force():
    rng = np.random.default_rng(0)
    embeddings, queries = rng.normal(size=(40, 6)), rng.normal(size=(9, 6))
    labels = np.array(["cat", "dog"])[rng.integers(0, 2, 40)]
    gallery = extend_gallery(None, embeddings[:25], labels[:25], dimension=6)
    gallery = extend_gallery(gallery, embeddings[25:], labels[25:], ids=[f"x{i}" for i in range(15)])
    assert isinstance(gallery, Gallery) and gallery.embeddings.dtype == np.float32
    assert gallery.ids.tolist() == [str(i) for i in range(25)] + [f"x{i}" for i in range(15)]
    index = GalleryIndex(6)
    index.extend(gallery.embeddings)
    found = lookup(gallery, index, queries, k=4)
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    cosine = 1 - unit(queries) @ unit(embeddings).T
    order = np.argsort(cosine, axis=1)[:, :4]
    np.testing.assert_array_equal(found.ids, gallery.ids[order])
    np.testing.assert_array_equal(found.labels, labels[order])
    np.testing.assert_allclose(found.distances, np.take_along_axis(cosine, order, axis=1), atol=1e-5)
    assert extend_gallery(gallery, embeddings[:2], labels[:2]).ids[-2:].tolist() == ["40", "41"]


def test_bad_items_and_k_are_refused():
    gallery = extend_gallery(None, np.eye(3), ["a", "b", "c"])
    for arguments, match in [((np.eye(3), ["a"] * 3, None, 4), r"must be \(N, 4\), got \(3, 3\)"),
                             ((np.ones(3), ["a"] * 3), r"must be \(N, D\)"),
                             ((np.eye(3), ["a"] * 2), "3 gallery images, 2 labels and 2 ids"),
                             ((np.eye(3), ["a"] * 3, ["x"]), "3 gallery images, 3 labels and 1 ids")]:
        with pytest.raises(ValueError, match=match):
            extend_gallery(gallery, *arguments)
    index = GalleryIndex(3)
    index.extend(gallery.embeddings)
    for k in (0, 4):
        with pytest.raises(ValueError, match="k must be between 1 and the gallery size 3"):
            lookup(gallery, index, np.eye(3), k)
