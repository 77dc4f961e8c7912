"""Gallery lookup benchmark: the Predictor's gallery index against exact search, in one run.

A gallery of ``--size`` L2-normalised ``--dim``-d embeddings in ``--classes`` classes (class centre c, a
random unit vector, plus ``--spread`` * g / sqrt(dim), g standard normal, then normalised) and
``--queries`` fresh embeddings drawn the same way. Rows:
- numpy exact: a float32 matrix product with the normalised gallery and np.argpartition (the
  reference of recall@10);
- FAISS exact: triplet_keras.serving.gallery.GalleryIndex with exact_limit above the size (IndexFlatIP);
- Predictor gallery: ``Predictor.add_gallery_embeddings`` then ``lookup_embeddings`` with the default
  GalleryIndex (approximate beyond EXACT_LIMIT items), and its predictor folder saved and loaded.
Build is the time until the first lookup can run; "1,000 queries" one lookup of all queries at
k = 10; "one query" the mean over 100 single-query lookups. Run:
python benchmarks/bench_gallery.py [--size 1000000]
"""
import argparse
import os
import platform
import tempfile
import time

import numpy as np

from triplet_keras.serving.gallery import EXACT_LIMIT, PROBES, GalleryIndex, cell_count, unit_rows

K = 10
SINGLE_QUERIES = 100


def embeddings_in_classes(count, centres, spread, rng, chunk=100_000):
    """(count, dim) float32 unit vectors around the rows of ``centres``, and their class numbers."""
    labels = rng.integers(0, len(centres), count)
    out = np.empty((count, centres.shape[1]), np.float32)
    for start in range(0, count, chunk):
        rows = slice(start, start + chunk)
        noise = rng.standard_normal((len(labels[rows]), centres.shape[1]), dtype=np.float32)
        out[rows] = centres[labels[rows]] + spread / np.sqrt(centres.shape[1]) * noise
    return unit_rows(out), labels


def timed(function):
    start = time.perf_counter()
    result = function()
    return result, time.perf_counter() - start


def single_query_ms(search, queries):
    """Mean milliseconds of ``search`` over SINGLE_QUERIES one-row query arrays."""
    search(queries[:1])  # warm
    start = time.perf_counter()
    for i in range(SINGLE_QUERIES):
        search(queries[i:i + 1])
    return (time.perf_counter() - start) / SINGLE_QUERIES * 1000


def numpy_top_k(gallery, queries, k=K, chunk=100):
    """Rows of the k largest inner products per query (unordered), a float32 matrix product per chunk."""
    return np.concatenate([np.argpartition(-(queries[i:i + chunk] @ gallery.T), k, axis=1)[:, :k]
                           for i in range(0, len(queries), chunk)])


def recall(found, exact):
    """Mean share of each query's exact top-k found in its approximate top-k."""
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)])


def tiny_predictor(centres, names):
    """A Predictor whose classifier is the nearest class centre (its encoder only matters for saving)."""
    import keras

    from triplet_keras.serving.predict import Predictor
    from triplet_keras.transfer import NearestMeanClassifier

    inputs = keras.Input((2, 2, 3))
    encoder = keras.Model(inputs, keras.layers.Dense(centres.shape[1])(keras.layers.Flatten()(inputs)))
    twice = np.concatenate([centres, centres])  # two items a class keep scikit-learn from warning
    return Predictor(encoder, names, NearestMeanClassifier().fit(twice, np.tile(np.arange(len(centres)), 2)))


def row(name, build, batch, single, found, exact):
    print(f"{name:<26} {build:>9.1f} {batch:>14.3f} {single:>11.2f} {recall(found, exact):>10.4f}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--spread", type=float, default=1.5)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, load average at start "
          f"{os.getloadavg()[0]:.1f} (shared machine: times are upper bounds)")
    rng = np.random.default_rng(0)
    centres = unit_rows(rng.standard_normal((args.classes, args.dim)))
    gallery, labels = embeddings_in_classes(args.size, centres, args.spread, rng)
    queries, query_labels = embeddings_in_classes(args.queries, centres, args.spread, rng)
    exact, batch = timed(lambda: numpy_top_k(gallery, queries))
    nearest = exact[np.arange(len(exact)), np.einsum("qkd,qd->qk", gallery[exact], queries).argmax(axis=1)]
    print(f"gallery {args.size:,} x {args.dim} in {args.classes:,} classes, spread {args.spread}; exact nearest item "
          f"of the query's class for {np.mean(labels[nearest] == query_labels):.1%} of {args.queries:,} queries")
    print(f"index: exact up to {EXACT_LIMIT:,} items, beyond {cell_count(args.size):,} IVF cells at this size, "
          f"{PROBES} probed")
    print(f"{'method':<26} {'build s':>9} {f'{args.queries:,} queries s':>14} {'one query ms':>11} "
          f"{f'recall@{K}':>10}")
    single = single_query_ms(lambda q: numpy_top_k(gallery, q), queries)
    row("numpy exact", 0.0, batch, single, exact, exact)

    flat = GalleryIndex(args.dim, exact_limit=args.size + 1)
    _, build = timed(lambda: flat.extend(gallery))
    (_, found), batch = timed(lambda: flat.search(queries, K))
    row("FAISS exact (IndexFlatIP)", build, batch, single_query_ms(lambda q: flat.search(q, K), queries), found, exact)
    del flat

    names = [f"class {c}" for c in range(args.classes)]
    predictor = tiny_predictor(centres, names)
    _, build = timed(lambda: [predictor.add_gallery_embeddings(gallery, np.array(names)[labels]),
                              predictor.lookup_embeddings(queries[:1], K)])
    rows = lambda found: found.ids.astype(np.int64)  # noqa: E731  (the default ids are the row numbers)
    found, batch = timed(lambda: predictor.lookup_embeddings(queries, K))
    row("Predictor gallery", build, batch, single_query_ms(lambda q: predictor.lookup_embeddings(q, K), queries),
        rows(found), exact)
    with tempfile.TemporaryDirectory() as directory:
        _, save = timed(lambda: predictor.save(directory))
        size_mb = os.path.getsize(os.path.join(directory, "gallery.npz")) / 2**20
        from triplet_keras.serving.predict import Predictor

        loaded, load = timed(lambda: Predictor.load(directory))
        again = loaded.lookup_embeddings(queries, K)
    same = all(np.array_equal(a, b) for a, b in zip(again, found))
    print(f"save {save:.1f} s (gallery.npz {size_mb:,.0f} MB), load {load:.1f} s; same answers after loading: {same}")
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
