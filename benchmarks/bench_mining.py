"""Offline mining benchmark: the exact miner against the candidate search of large sets, up to 1M.

Clustered L2-normalised 128-d embeddings (default 1,000,000 in 1,000 classes): 50 group centres,
each class centre near one group centre, each point near its class centre, so most semi-hard
negatives lie in a few nearby classes, as after some training. One run prints, side by side:

- the exact miner on the first 50,000 embeddings (exact up to ``max_exact``);
- the candidate search on the same 50,000 (``max_exact=0``), with the default number of
  candidates and with the same share of the points as the default has at the full size;
- the candidate search on all points, checked: every triplet valid, and for a sample of anchors
  the exact semi-hard choice for the same (anchor, positive) pairs computed against all points.

"semi-hard share": the share of triplets whose negative is semi-hard, d(a, p) < d(a, n) <
d(a, p) + margin (the rest fell back to the closest negative found). Peak memory: what tracemalloc
sees numpy allocate during the call (the input embeddings excluded), and the process's peak
resident memory at the end. "CPU s" sums all threads. The 1M x 1M exact search is out of reach
(hours), hence the 50,000 comparison. Writes benchmarks/results/mining.json.

``--scan`` instead times ``mine_triplets`` against N on random embeddings with 10 or 100 classes
(the exact miner below ``max_exact``, the candidate search above).
Run: python benchmarks/bench_mining.py [--size 1000000] [--scan --sizes 1000 5000 ...]
"""
import argparse
import inspect
import json
import os
import platform
import resource
import time
import tracemalloc

import numpy as np

from triplet_keras.core.distances import pairwise
from triplet_keras.core.mining import mine_triplets

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mining.json")
MARGIN = 0.2
DEFAULT_CANDIDATES = inspect.signature(mine_triplets).parameters["candidates"].default


def clustered_embeddings(count, classes, dim=128, groups=50, spread=0.6, noise=0.5, seed=0):
    """(count, dim) float32 unit vectors and their labels, built in chunks to keep memory low."""
    rng = np.random.default_rng(seed)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    group = unit(rng.standard_normal((groups, dim), np.float32))
    centre = unit(group[rng.integers(0, groups, classes)]
                  + spread / np.sqrt(dim) * rng.standard_normal((classes, dim), np.float32))
    labels = rng.integers(0, classes, count)
    embeddings = np.empty((count, dim), np.float32)
    for low in range(0, count, 100_000):
        chunk = labels[low : low + 100_000]
        noisy = centre[chunk] + noise / np.sqrt(dim) * rng.standard_normal((len(chunk), dim), np.float32)
        embeddings[low : low + 100_000] = unit(noisy)
    return embeddings, labels


def semi_hard(embeddings, triplets, chunk=100_000):
    """Per triplet: whether its negative is semi-hard, and d(a, n) (squared)."""
    d_ap, d_an = np.empty((2, len(triplets)), np.float32)
    for low in range(0, len(triplets), chunk):
        anchors, positives, negatives = (embeddings[triplets[low : low + chunk, column]] for column in range(3))
        d_ap[low : low + chunk], d_an[low : low + chunk] = (np.sum((anchors - other) ** 2, axis=1)
                                                            for other in (positives, negatives))
    return (d_ap < d_an) & (d_an < d_ap + MARGIN), d_an


def timed(embeddings, labels, strategy="semi_hard", **kwargs):
    tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    triplets = mine_triplets(embeddings, labels, strategy, MARGIN, progress=False, **kwargs)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    is_semi_hard, d_an = semi_hard(embeddings, triplets)
    valid = bool(np.all((labels[triplets[:, 0]] == labels[triplets[:, 1]]) & (triplets[:, 0] != triplets[:, 1])
                        & (labels[triplets[:, 0]] != labels[triplets[:, 2]])))
    row = {"n": len(labels), "strategy": strategy, **kwargs, "triplets": len(triplets), "all_valid": valid,
           "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_mb": round(peak / 2**20, 1),
           "semi_hard_share": round(float(is_semi_hard.mean()), 4), "mean_d_an": round(float(d_an.mean()), 4)}
    return row, triplets


def exact_on_sample(embeddings, labels, triplets, sample=2000, seed=0):
    """The exact semi-hard rule for ``sample`` random triplets' (anchor, positive) against all points:
    the share that has a semi-hard negative, the found negatives' share, and the mean d(a, n) of both."""
    pick = np.random.default_rng(seed).choice(len(triplets), min(sample, len(triplets)), replace=False)
    found_semi_hard, found_d_an = semi_hard(embeddings, triplets[pick])
    exact_semi_hard, exact_d_an = [], []
    for rows in np.array_split(pick, max(1, len(pick) // 50)):
        anchors, positives = triplets[rows, 0], triplets[rows, 1]
        distances = pairwise(embeddings[anchors], embeddings, "squared_l2")
        d_ap = np.sum((embeddings[anchors] - embeddings[positives]) ** 2, axis=1)[:, None]
        distances[labels[None, :] == labels[anchors][:, None]] = np.inf
        window = np.where((distances > d_ap) & (distances < d_ap + MARGIN), distances, np.inf).min(axis=1)
        exact_semi_hard.append(np.isfinite(window))
        exact_d_an.append(np.where(np.isfinite(window), window, distances.min(axis=1)))
    return {"sampled_anchors": len(pick), "found_semi_hard_share": round(float(found_semi_hard.mean()), 4),
            "exact_semi_hard_share": round(float(np.concatenate(exact_semi_hard).mean()), 4),
            "found_mean_d_an": round(float(found_d_an.mean()), 4),
            "exact_mean_d_an": round(float(np.concatenate(exact_d_an).mean()), 4)}


def scale(size, classes, compare):
    embeddings, labels = clustered_embeddings(size, classes)
    small = (embeddings[:compare], labels[:compare])
    same_share = max(1, round(DEFAULT_CANDIDATES * compare / size))
    runs = [("exact", small, {}), ("candidates", small, {"max_exact": 0}),
            ("candidates, same share", small, {"max_exact": 0, "candidates": same_share}),
            ("candidates", (embeddings, labels), {})]
    rows = []
    print(f"{'N':>8} {'miner':>23} {'candidates':>10} {'wall s':>7} {'CPU s':>7} {'peak MB':>8} {'valid':>5} "
          f"{'semi-hard':>9} {'mean d_an':>9}")
    for name, (points, point_labels), kwargs in runs:
        row, triplets = timed(points, point_labels, **kwargs)
        row["miner"] = name
        shown = "all" if name == "exact" else kwargs.get("candidates", DEFAULT_CANDIDATES)
        print(f"{row['n']:>8} {name:>23} {shown:>10} {row['wall_s']:>7.1f} {row['cpu_s']:>7.1f} "
              f"{row['peak_mb']:>8.1f} {str(row['all_valid']):>5} {row['semi_hard_share']:>9.3f} "
              f"{row['mean_d_an']:>9.3f}", flush=True)
        rows.append(row)
    row["exact_on_sample"] = check = exact_on_sample(embeddings, labels, triplets)
    print(f"{size:,} points, {check['sampled_anchors']} sampled (anchor, positive) pairs: semi-hard share "
          f"{check['found_semi_hard_share']:.3f} found, {check['exact_semi_hard_share']:.3f} exact; mean d(a, n) "
          f"{check['found_mean_d_an']:.3f} found, {check['exact_mean_d_an']:.3f} exact")
    return rows


def scan(sizes, class_counts, strategies):
    rows = []
    print(f"{'N':>7} {'classes':>7} {'strategy':>9} {'wall s':>8} {'CPU s':>8} {'peak MB':>8} {'N x N MB':>9}")
    rng = np.random.default_rng(0)
    for strategy in strategies:
        for count in sizes:
            embeddings = rng.normal(size=(count, 128)).astype(np.float32)
            embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
            for classes in class_counts:
                row, _ = timed(embeddings, rng.integers(0, classes, count), strategy)
                row.update(classes=classes, n_by_n_matrix_mb=round(count * count * 4 / 2**20, 1))
                rows.append(row)
                print(f"{count:>7} {classes:>7} {strategy:>9} {row['wall_s']:>8.2f} {row['cpu_s']:>8.2f} "
                      f"{row['peak_mb']:>8.1f} {row['n_by_n_matrix_mb']:>9.1f}", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--compare", type=int, default=50_000, help="points the exact miner is compared on")
    parser.add_argument("--scan", action="store_true", help="time against N on random embeddings instead")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000, 50000, 100000])
    parser.add_argument("--scan_classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--strategies", nargs="+", default=["semi_hard"])
    args = parser.parse_args()
    machine = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(), "processor": platform.processor(),
               "numpy": np.__version__, "note": "shared 2-core machine: times are upper bounds"}
    if args.scan:
        rows = scan(args.sizes, args.scan_classes, args.strategies)
    else:
        rows = scale(args.size, args.classes, args.compare)
    machine["peak_resident_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10, 1)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as file:
        json.dump({"machine": machine, "results": rows}, file, indent=2)
    print(f"machine: {machine}\nwritten: {RESULTS}")


if __name__ == "__main__":
    main()
