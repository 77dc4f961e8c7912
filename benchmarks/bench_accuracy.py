"""Few-shot accuracy of every transfer mode on the embedded scikit-learn digits, in both regimes.

(a) new classes: the encoder trains on digits 0-4 (train split); 5-way K-shot episodes over digits
    5-9 (every split: the encoder never saw them), K = 1, 5. With --pseudo_classes (the default) each
    source digit under each of the 8 rotations and reflections of the square is a class of its own
    (5 -> 40 training classes, triplet_keras.pseudo_classes): five classes alone teach an embedding
    too little about new ones.
(b) new domain: the encoder trains on all ten digits (train split); 10-way K-shot episodes over the
    test split redrawn in another writing style (triplet_keras.domain_shift), K = 1, 5, 10.

Each regime is evaluated on the trained embedding and on the backbone features under it
(models.feature_encoder). Every mode runs on the same episodes; transductive variants (the episode's queries as the
unlabelled pool) are reported apart. Prints Markdown tables and writes
benchmarks/results/accuracy.json.

    python benchmarks/bench_accuracy.py [--epochs 30] [--episodes 300]
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
from triplet_keras.evaluation import evaluate_few_shot
from triplet_keras.losses import OnlineTripletLoss
from triplet_keras.models import TRANSFER_FEATURES, build_encoder, build_online_model, embed_images, feature_encoder
from triplet_keras.pseudo_classes import with_pseudo_classes

INDUCTIVE = ["none", "translate", "center", "calibrate", "auto"]
TRANSDUCTIVE = [f"{name}+transductive" for name in INDUCTIVE]


def train_encoder(images, labels, args):
    """small_cnn trained with an online triplet loss (semi-hard by default) on shuffled batches."""
    keras.utils.set_random_seed(args.seed)
    encoder = build_encoder("small_cnn", weights=None, input_shape=images.shape[1:], embedding_dim=64,
                            freeze_layers=0, backbone_size=(16, 16))
    model = build_online_model(encoder)
    model.compile(optimizer=keras.optimizers.Adam(args.learning_rate),
                  loss=OnlineTripletLoss(args.strategy, margin=args.margin))
    model.fit(images.astype(np.float32), labels, batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
              verbose=0)
    return encoder


def run_regime(name, train, target, n_way, shots, args, pseudo_classes=False):
    """Train, then for each kind of transfer features (the embedding, the backbone features under it)
    embed (saved to results/embeddings_<name>_<features>.npz) and evaluate every mode for each K.
    Returns {"<name> [<features>]": result}."""
    started = time.perf_counter()
    if pseudo_classes:
        extended = with_pseudo_classes(ArraySplit(*train))
        encoder = train_encoder(extended.images, extended.labels, args)
    else:
        encoder = train_encoder(*train, args)
    train_seconds = round(time.perf_counter() - started, 1)
    results = {}
    for features in TRANSFER_FEATURES:
        started = time.perf_counter()
        model = feature_encoder(encoder, features)
        source_emb = embed_images(model, train[0].astype(np.float32), progress=False)
        target_emb = embed_images(model, target[0].astype(np.float32), progress=False)
        np.savez(os.path.join(os.path.dirname(args.output), f"embeddings_{name.replace(' ', '_')}_{features}.npz"),
                 source=source_emb, source_labels=train[1], target=target_emb, target_labels=target[1])
        result = {"train_seconds": train_seconds,
                  "target_retrieval": metrics.retrieval_scores(target_emb, target[1], ks=(1, 5)),
                  "target_clustering": metrics.clustering_scores(target_emb, target[1]), "shots": {}}
        for k in shots:
            result["shots"][k] = evaluate_few_shot(source_emb, train[1], target_emb, target[1], n_way, k,
                                                   transductive=True, n_episodes=args.episodes, seed=args.seed)
        print(f"{name} [{features}]: trained in {train_seconds} s, evaluated in "
              f"{time.perf_counter() - started:.1f} s", flush=True)
        results[f"{name} [{features}]"] = result
    return results


def table(results, methods):
    """Markdown table: one row per regime and K, mean accuracy (%) +- 95% CI per method."""
    lines = ["| regime | K | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for regime, result in results.items():
        for k, modes in result["shots"].items():
            cells = [f"{100 * modes[m]['mean']:.1f} ± {100 * modes[m]['ci95']:.1f}" for m in methods]
            lines.append(f"| {regime} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--pseudo_classes", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--strategy", default="semi_hard", choices=["batch_hard", "semi_hard", "batch_all"])
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
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
