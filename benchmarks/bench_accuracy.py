"""Few-shot accuracy of every transfer mode on the embedded scikit-learn digits, in both regimes.

(a) new classes: the encoder trains on digits 0-4 (train split); 5-way K-shot episodes over digits
    5-9 (every split: the encoder never saw them), K = 1, 5. With --pseudo_classes (the default) each
    source digit under each of the 8 rotations and reflections of the square is a class of its own
    (5 -> 40 training classes, triplet_keras.pseudo_classes): five classes alone teach an embedding
    too little about new ones.
(b) new domain: the encoder trains on all ten digits (train split); 10-way K-shot episodes over the
    test split redrawn in another writing style (triplet_keras.domain_shift), K = 1, 5, 10.

Each regime is evaluated on each kind of transfer vectors named in --features (models.feature_encoder):
"embedding", "backbone" or "grid", with ":s" for the vector averaged over each image and its
copies moved by s pixels. Every mode runs on the same episodes, whitened with the source's
within-class covariance (shrinkage 0.3, the default; learnt on the pseudo-classes when there are
any, as init.py does) except ``none``; "auto unwhitened" is ``auto`` without it; transductive variants (the episode's queries as the
unlabelled pool) are reported apart. Prints Markdown tables and writes
benchmarks/results/accuracy.json.

    python benchmarks/bench_accuracy.py [--epochs 6] [--backbone_size 32] [--seeds 3] [--episodes 300]
        [--features backbone grid:1]
"""
import argparse
import json
import os
import platform
import time

import keras
import numpy as np

from triplet_keras import domain_shift, metrics
from triplet_keras.datasets import ArraySplit, load_dataset
from triplet_keras.evaluation import METHODS, evaluate_few_shot
from triplet_keras.losses import OnlineTripletLoss
from triplet_keras.models import TRANSFER_FEATURES, build_encoder, build_online_model, embed_images, feature_encoder
from triplet_keras.pseudo_classes import with_pseudo_classes

BENCH_METHODS = {**METHODS, "auto unwhitened": {"mode": "auto", "whiten": None}}
INDUCTIVE = list(BENCH_METHODS)
TRANSDUCTIVE = [f"{name}+transductive" for name in INDUCTIVE]


def train_encoder(images, labels, args, seed):
    """small_cnn trained with an online triplet loss (semi-hard by default) on shuffled batches."""
    keras.utils.set_random_seed(seed)
    encoder = build_encoder("small_cnn", weights=None, input_shape=images.shape[1:], embedding_dim=64,
                            freeze_layers=0, backbone_size=(args.backbone_size, args.backbone_size))
    model = build_online_model(encoder)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss=OnlineTripletLoss(args.strategy, margin=args.margin))
    model.fit(images.astype(np.float32), labels, batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
              verbose=0)
    return encoder


def combine_seeds(per_seed):
    """Per mode: the mean over training seeds of the episode means, its 95% half-width from the
    per-seed half-widths (sqrt(sum ci^2) / n), and every seed's mean (their spread is the larger effect)."""
    combined = {}
    for mode in per_seed[0]:
        means = [result[mode]["mean"] for result in per_seed]
        half_widths = np.array([result[mode]["ci95"] for result in per_seed])
        combined[mode] = {"mean": float(np.mean(means)), "ci95": float(np.sqrt(np.sum(half_widths ** 2)) / len(means)),
                          "seed_means": means}
    return combined


def feature_kind(text):
    """"grid:1" -> ("grid", 1): the features and the shift_average of models.feature_encoder."""
    features, _, shift = text.partition(":")
    if features not in TRANSFER_FEATURES or not (shift or "0").isdigit():
        raise argparse.ArgumentTypeError(f"expected one of {TRANSFER_FEATURES}, optionally with ':<pixels>', "
                                         f"got {text!r}")
    return features, int(shift or 0)


def feature_label(features, shift):
    return f"{features}, shift average {shift}" if shift else features


def run_regime(name, train, target, n_way, shots, args, pseudo_classes=False):
    """For each training seed: train, then embed with each kind of transfer features (--features)
    and evaluate every mode for each K on the same episodes.
    Returns {"<name> [<features>]": result} with the seeds combined (combine_seeds)."""
    source = with_pseudo_classes(ArraySplit(*train)) if pseudo_classes else ArraySplit(*train)
    kinds = {feature_label(*kind): kind for kind in args.features}
    per_seed = {features: {k: [] for k in shots} for features in kinds}
    retrieval = {features: [] for features in kinds}
    train_seconds = []
    for seed in range(args.seed, args.seed + args.seeds):
        started = time.perf_counter()
        encoder = train_encoder(source.load(np.arange(len(source))), source.labels, args, seed)
        train_seconds.append(round(time.perf_counter() - started, 1))
        for features, (kind, shift) in kinds.items():
            model = feature_encoder(encoder, kind, shift)
            source_emb = embed_images(model, train[0], progress=False)
            target_emb = embed_images(model, target[0], progress=False)
            whitening_data = (embed_images(model, source, progress=False), source.labels) if pseudo_classes \
                else None
            retrieval[features].append(metrics.retrieval_scores(target_emb, target[1], ks=(1, 5)))
            for k in shots:
                per_seed[features][k].append(evaluate_few_shot(
                    source_emb, train[1], target_emb, target[1], n_way, k, BENCH_METHODS, transductive=True,
                    n_episodes=args.episodes, seed=args.seed, whitening_data=whitening_data))
        print(f"{name}, seed {seed}: trained in {train_seconds[-1]} s, evaluated in "
              f"{time.perf_counter() - started - train_seconds[-1]:.1f} s", flush=True)
    return {f"{name} [{features}]": {"train_seconds": train_seconds, "target_retrieval": retrieval[features],
                                     "shots": {k: combine_seeds(per_seed[features][k]) for k in shots}}
            for features in kinds}


def table(results, methods):
    """Markdown table: one row per regime and K; per method the mean accuracy (%) over seeds, its 95%
    half-width over episodes, and [min-max] of the seed means."""
    lines = ["| regime | K | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for regime, result in results.items():
        for k, modes in result["shots"].items():
            cells = [f"{100 * modes[m]['mean']:.1f} ± {100 * modes[m]['ci95']:.1f} "
                     f"[{100 * min(modes[m]['seed_means']):.0f}-{100 * max(modes[m]['seed_means']):.0f}]"
                     for m in methods]
            lines.append(f"| {regime} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--backbone_size", type=int, default=32,
                        help="pixels the 8 x 8 digits are resized to inside the model (small_cnn's last map: size / 8)")
    parser.add_argument("--pseudo_classes", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--strategy", default="semi_hard", choices=["batch_hard", "semi_hard", "batch_all"])
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--features", type=feature_kind, nargs="+",
                        default=[("backbone", 0), ("backbone", 1), ("grid", 0), ("grid", 1)],
                        help="transfer vectors to evaluate: embedding, backbone or grid, with :<pixels> for the "
                             "shift average (default: backbone backbone:1 grid grid:1)")
    parser.add_argument("--seed", type=int, default=0, help="first training seed; also the episodes' seed")
    parser.add_argument("--seeds", type=int, default=3, help="encoders trained per regime (seeds seed, seed+1, ...)")
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "accuracy.json"))
    args = parser.parse_args()
    os.makedirs(os.path.dirname(args.output), exist_ok=True)

    digits = load_dataset("digits", seed=args.seed)
    train = digits.train.load(np.arange(len(digits.train))), digits.train.labels
    everything = [split.load(np.arange(len(split))) for split in (digits.train, digits.validation, digits.test)]
    images = np.concatenate(everything)
    labels = np.concatenate([digits.train.labels, digits.validation.labels, digits.test.labels])
    old = np.isin(train[1], range(5))
    styled = domain_shift.apply_style("style", digits.test.load(np.arange(len(digits.test))), seed=args.seed)

    results = {
        **run_regime("(a) new classes", (train[0][old], train[1][old]), (images[labels >= 5], labels[labels >= 5]),
                     5, (1, 5), args, args.pseudo_classes),
        **run_regime("(b) new domain", train, (styled, digits.test.labels), 10, (1, 5, 10), args),
    }
    print("\nInductive modes (accuracy %, mean ± 95% CI over episodes):\n")
    print(table(results, INDUCTIVE + ["ceiling"]))
    print("\nTransductive refinement (the episode's queries as the unlabelled pool):\n")
    print(table(results, TRANSDUCTIVE))
    report = {"args": vars(args), "backend": keras.backend.backend(), "machine": platform.platform(),
              "processor": platform.processor(), "cpus": os.cpu_count(), "results": results}
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
