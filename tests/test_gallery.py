"""The gallery on its own: items appended with running ids, lookup against a numpy brute force, bad input."""
import faiss
import numpy as np
import pytest

from triplet_keras.serving.gallery import Gallery, GalleryIndex, extend_gallery, lookup

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


def clustered(n, rng, classes=20, dimension=16, noise=0.5):
    """n embeddings around ``classes`` random unit centres, and their class numbers."""
    labels = rng.integers(0, classes, n)
    centres = np.random.default_rng(99).normal(size=(classes, dimension))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return (centres[labels] + rng.normal(0, noise / np.sqrt(dimension), (n, dimension))).astype(np.float32), labels


def exact_neighbours(queries, embeddings, k):
    """(cosine distances, rows) of the k nearest rows by numpy brute force, nearest first."""
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    cosine = 1 - unit(queries) @ unit(embeddings).T
    order = np.argsort(cosine, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(cosine, order, axis=1), order


def recall(found, expected):
    """Mean share of each row of ``expected`` found in the same row of ``found``."""
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, expected)])


def test_exact_up_to_the_limit_then_approximate_with_high_recall():
    rng = np.random.default_rng(1)
    embeddings, _ = clustered(4000, rng)
    queries, _ = clustered(200, rng)
    index = GalleryIndex(16, exact_limit=4000)
    index.extend(embeddings)
    assert index.exact and index.size == 4000
    distances, rows = index.search(queries, 10)
    expected_distances, expected_rows = exact_neighbours(queries, embeddings, 10)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_allclose(distances, expected_distances, atol=1e-5)

    approximate = GalleryIndex(16, exact_limit=1000, probes=8)
    approximate.extend(embeddings)
    assert not approximate.exact and approximate.index.nlist == 100  # 4000 // 40 cells, 8 probed
    distances, rows = approximate.search(queries, 10)
    assert recall(rows, expected_rows) >= 0.9
    threads = faiss.omp_get_max_threads()
    one_at_a_time = np.concatenate([approximate.search(queries[i:i + 1], 10)[1] for i in range(5)])
    np.testing.assert_array_equal(one_at_a_time, rows[:5])  # searched on one thread: the same answers
    assert faiss.omp_get_max_threads() == threads  # and the thread setting is restored
    hits = rows == expected_rows
    np.testing.assert_allclose(distances[hits], expected_distances[hits], atol=1e-5)  # exact distances of found items
    assert np.all(np.diff(distances, axis=1) >= -1e-6)


def test_k_beyond_the_probed_cells_searches_every_cell():
    embeddings, _ = clustered(400, np.random.default_rng(2))
    index = GalleryIndex(16, exact_limit=100, probes=1)
    index.extend(embeddings)
    _, rows = index.search(embeddings[:5], 400)  # one probed cell holds far fewer than 400 items
    assert np.all(rows >= 0) and all(sorted(row) == list(range(400)) for row in rows)


def test_growth_adds_new_items_and_retrains_fourfold():
    rng = np.random.default_rng(3)
    embeddings, _ = clustered(8000, rng)
    index = GalleryIndex(16, exact_limit=1000)
    index.extend(embeddings[:800])
    assert index.exact and index.size == 800
    index.extend(embeddings[:1600])  # past the limit: cells trained on all 1,600 items
    assert not index.exact and index.size == 1600 and index.index.nlist == 40
    index.extend(embeddings[:3000])  # cell_count(3000) = 3000 // 40 = 75 < 2 * 40 cells: only added
    assert index.size == 3000 and index.index.nlist == 40
    index.extend(embeddings)  # cell_count(8000) = 2 sqrt(8000) = 178 >= 80: trained again
    assert index.size == 8000 and index.index.nlist == 178
    distances, rows = index.search(embeddings[7990:], 1)
    assert rows[:, 0].tolist() == list(range(7990, 8000))  # each newest item finds itself
    np.testing.assert_allclose(distances, 0, atol=1e-5)
    index.extend(embeddings)  # nothing new: unchanged
    assert index.size == 8000
    with pytest.raises(ValueError, match="holds 8000 items but the gallery only 10"):
        index.extend(embeddings[:10])


def test_index_rebuilt_from_its_cells_gives_the_same_answers():
    rng = np.random.default_rng(5)
    embeddings, _ = clustered(3000, rng)
    queries, _ = clustered(50, rng)
    index = GalleryIndex(16, exact_limit=500)
    index.extend(embeddings)
    assert index.cells.shape == (3000,) and index.centroids.shape == (75, 16)
    loaded = GalleryIndex.from_cells(embeddings, index.centroids, index.cells, exact_limit=500)
    assert not loaded.exact and loaded.size == 3000
    for got, expected in zip(loaded.search(queries, 5), index.search(queries, 5)):
        np.testing.assert_array_equal(got, expected)
    loaded.extend(np.concatenate([embeddings, queries]))  # and it keeps growing
    assert loaded.search(queries[:1], 1)[1][0, 0] == 3000


def test_bad_cells_and_queries_are_refused():
    embeddings, centroids = np.eye(4, dtype=np.float32), np.eye(2, 4, dtype=np.float32)
    for arrays, match in [((centroids, [0, 1, 1]), r"4 ints in \[0, 2\)"),
                          ((centroids, [0, 1, 2, 1]), r"4 ints in \[0, 2\)"),
                          ((centroids, [0.0, 1, 1, 1]), "ints"),
                          ((np.eye(2, 3), [0, 1, 1, 1]), r"finite floats \(nlist, 4\)"),
                          ((np.full((2, 4), np.nan), [0, 1, 1, 1]), "finite floats"),
                          ((np.zeros((0, 4)), np.zeros(4, int)), r"\(nlist, 4\)")]:
        with pytest.raises(ValueError, match=match):
            GalleryIndex.from_cells(embeddings, *arrays)
    index = GalleryIndex(4)
    index.extend(embeddings)
    with pytest.raises(ValueError, match=r"must be \(n, 4\), got \(2, 3\)"):
        index.search(np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match="exact_limit and probes must be >= 1"):
        GalleryIndex(4, probes=0)
    with pytest.raises(ValueError, match="must be finite"):
        index.search(np.full((1, 4), np.nan), 1)
    distances, _ = index.search(np.zeros((1, 4)), 4)  # a zero query is at cosine distance 1 from everything
    np.testing.assert_allclose(distances, 1, atol=1e-6)
