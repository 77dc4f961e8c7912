"""Embedding throughput of three ways to run an encoder over many batches, on the current Keras backend.

- ``embed_images``: what the package uses (``Model.predict`` over a ``keras.utils.PyDataset``);
- ``predict_on_batch``: one call per batch, each result copied back to the host before the next;
- ``jit stateless`` (JAX only): a jitted ``stateless_call`` per batch, dispatched asynchronously.

    KERAS_BACKEND=jax python benchmarks/bench_embed.py --image_size 224 --batch 256 --precision bfloat16

Prints images per second (median of ``--repeats``) and the largest difference from ``embed_images``.
"""
import argparse
import time

from triplet_keras.backend_choice import choose_backend

choose_backend()

import keras  # noqa: E402
import numpy as np  # noqa: E402

from triplet_keras.models.networks import build_encoder, embed_images  # noqa: E402


def per_batch(encoder, batch):
    def run(x):
        return np.concatenate([encoder.predict_on_batch(x[i:i + batch]) for i in range(0, len(x), batch)])
    return run


def jax_stateless(encoder, batch):
    import jax

    call = jax.jit(lambda tv, ntv, x: encoder.stateless_call(tv, ntv, x, training=False)[0])

    def run(x):
        trainable = [v.value for v in encoder.trainable_variables]
        fixed = [v.value for v in encoder.non_trainable_variables]
        outputs = [call(trainable, fixed, x[i:i + batch]) for i in range(0, len(x), batch)]
        return np.concatenate([np.asarray(o, np.float32) for o in outputs])
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    args = parser.parse_args()
    if args.precision == "bfloat16":
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    size = (args.image_size, args.image_size, 3)
    pool = np.random.default_rng(0).integers(0, 256, (args.batch * 4,) + size, dtype=np.uint8)
    images = np.resize(pool, (args.batch * args.batches,) + size)
    encoder = build_encoder(args.backbone, weights=None, input_shape=size)
    ways = {"embed_images": lambda x: embed_images(encoder, x, batch_size=args.batch, progress=False),
            "predict_on_batch": per_batch(encoder, args.batch)}
    if keras.backend.backend() == "jax":
        ways["jit stateless"] = jax_stateless(encoder, args.batch)
    reference = None
    print(f"{keras.backend.backend()}, {args.backbone}, {args.image_size} px, {args.precision}, batch {args.batch}")
    for name, run in ways.items():
        run(images[: 2 * args.batch])  # compile
        rates = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = run(images)
            rates.append(len(images) / (time.perf_counter() - start))
        reference = out if reference is None else reference
        print(f"{name:18s} {np.median(rates):10.0f} img/s  (max |diff| {np.abs(out - reference).max():.1e})")


if __name__ == "__main__":
    main()
