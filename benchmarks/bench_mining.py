"""Offline mining benchmark: time and peak memory of ``mine_triplets`` against N.

Random L2-normalised 128-d embeddings with 10 or 100 classes, N from 1k to 100k. Prints a table
and writes benchmarks/results/mining.json. Peak memory is what tracemalloc sees numpy allocate
during the call (the input embeddings excluded); "CPU s" sums all threads, so CPU s / wall s
shows how many cores BLAS used. Run: python benchmarks/bench_mining.py [--sizes 1000 5000 ...]
"""
import argparse
import json
import os
import platform
import time
import tracemalloc

import numpy as np

from triplet_keras.mining import mine_triplets

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "mining.json")


def measure(count, classes, strategy, dim=128, block_size=1024):
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(count, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    labels = rng.integers(0, classes, count)
    tracemalloc.start()
    wall, cpu = time.perf_counter(), time.process_time()
    triplets = mine_triplets(embeddings, labels, strategy, block_size=block_size, progress=False)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"n": count, "classes": classes, "strategy": strategy, "dim": dim, "block_size": block_size,
            "triplets": len(triplets), "wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
            "peak_mb": round(peak / 2**20, 1), "n_by_n_matrix_mb": round(count * count * 4 / 2**20, 1)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 10000, 50000, 100000])
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--strategies", nargs="+", default=["semi_hard"])
    args = parser.parse_args()
    machine = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(), "processor": platform.processor(),
               "numpy": np.__version__}
    rows = []
    print(f"{'N':>7} {'classes':>7} {'strategy':>9} {'wall s':>8} {'CPU s':>8} {'peak MB':>8} {'N x N MB':>9}")
    for strategy in args.strategies:
        for count in args.sizes:
            for classes in args.classes:
                row = measure(count, classes, strategy)
                rows.append(row)
                print(f"{count:>7} {classes:>7} {strategy:>9} {row['wall_s']:>8.2f} {row['cpu_s']:>8.2f} "
                      f"{row['peak_mb']:>8.1f} {row['n_by_n_matrix_mb']:>9.1f}", flush=True)
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as file:
        json.dump({"machine": machine, "results": rows}, file, indent=2)
    print(f"machine: {machine}\nwritten: {RESULTS}")


if __name__ == "__main__":
    main()
