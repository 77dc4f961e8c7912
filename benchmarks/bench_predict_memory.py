"""Peak memory of Predictor.predict against the number of images in one call (up to 100,000).

Each N runs in a fresh interpreter, so its peak resident set size (RSS) is its own. The images are
generated lazily (32 x 32 RGB, the CIFAR size); the encoder is the small CNN with random weights.

    python benchmarks/bench_predict_memory.py                 # N = 1,000 10,000 100,000
    python benchmarks/bench_predict_memory.py --counts 1000 5000
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

SIZE = 32


class GeneratedImages:
    """``count`` images, each made when indexed."""

    def __init__(self, count):
        self.count = count

    def __len__(self):
        return self.count

    def __getitem__(self, index):
        return np.random.default_rng(index).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def measure(count, batch_size):
    """Predict ``count`` images in one call; returns a dict of the figures."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from triplet_keras.backend_choice import choose_backend

    choose_backend()  # before keras is imported, as in init.py
    from triplet_keras.models.networks import build_encoder
    from triplet_keras.serving.predict import Predictor
    from triplet_keras.transfer import NearestMeanClassifier

    encoder = build_encoder("small_cnn", None, (SIZE, SIZE, 3), 64, 0)
    rng = np.random.default_rng(0)
    classifier = NearestMeanClassifier().fit(rng.normal(size=(100, 64)), np.arange(100) % 10)
    predictor = Predictor(encoder, [f"class{i}" for i in range(10)], classifier, batch_size=batch_size)
    predictor.predict(GeneratedImages(batch_size))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    names = predictor.predict(GeneratedImages(count))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"images": len(names), "seconds": round(seconds, 1), "images_per_s": round(count / seconds),
            "peak_rss_mib_before": round(before), "peak_rss_mib": round(peak),
            "images_as_float32_mib": round(count * SIZE * SIZE * 3 * 4 / 2**20)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.batch_size)))
        return
    print("| images | seconds | images/s | peak RSS after warm-up (MiB) | peak RSS (MiB) | the images as float32 (MiB) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for count in args.counts:
        output = subprocess.run([sys.executable, __file__, "--one", str(count), "--batch_size", str(args.batch_size)],
                                capture_output=True, text=True, check=True).stdout
        row = json.loads(output.strip().splitlines()[-1])
        print(f"| {row['images']:,} | {row['seconds']} | {row['images_per_s']:,} | {row['peak_rss_mib_before']:,} "
              f"| {row['peak_rss_mib']:,} | {row['images_as_float32_mib']:,} |", flush=True)


if __name__ == "__main__":
    main()
