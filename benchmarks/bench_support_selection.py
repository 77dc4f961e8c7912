"""Exploration: choose the transfer candidate on each episode's own support (leave-one-out) instead of
once on source episodes, for one init.py run.

    python benchmarks/bench_support_selection.py --experiment fashion_mnist --params '{"seed": 0}' \
        --model_dir /tmp/fashion_s0

Trains into ``--model_dir`` with init.py's pipeline unless it holds a finished run, then for each K >= 2
of ``shots`` draws the run's own target episodes (same seed and count as metrics.json) and scores every
candidate of ``auto`` (selection.candidates() on each kind of transfer features auto tries, of the
trained and of the untrained encoder) two ways: on the episode's queries, and by leave-one-out on its
support (K folds, each leaving one shot per class out). Prints, per K: ``auto`` as the run chose it on
the source, the candidate the support picks per episode (among the trained encoder's candidates, then
among all), and the best single candidate in hindsight. Results: benchmarks/RESULTS.md (2026-11-30).
"""
import argparse
import json
import os

from triplet_keras.backend_choice import choose_backend

choose_backend()

import numpy as np  # noqa: E402

from triplet_keras.evaluation import method_shrinkage, sample_episodes, whitened_spaces  # noqa: E402
from triplet_keras.models import embed_images, load_model  # noqa: E402
from triplet_keras.params import load_params  # noqa: E402
from triplet_keras.pipeline import run  # noqa: E402
from triplet_keras.prepared_data import prepare_data  # noqa: E402
from triplet_keras.selection import SHRINKAGES, candidates  # noqa: E402
from triplet_keras.source_evaluation import embed_splits  # noqa: E402
from triplet_keras.transfer import fit_transfer  # noqa: E402
from triplet_keras.transfer_evaluation import initial_encoder, transfer_feature_models  # noqa: E402

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")


def feature_spaces(params, encoders, data):
    """{(encoder name, kind, shrinkage): (source vectors, target vectors)} for every kind of transfer
    features ``auto`` would try (transfer_feature_models), whitened once per shrinkage."""
    spaces = {}
    for name, encoder in encoders.items():
        for kind, model in transfer_feature_models(params, encoder, data.target.new_classes).items():
            source = np.asarray(embed_images(model, data.train, progress=False), np.float64)
            target = np.asarray(embed_splits(model, data.target.splits)[0], np.float64)
            for shrinkage, space in whitened_spaces(source, data.train.labels, target, SHRINKAGES).items():
                spaces[name, kind, shrinkage] = space
    return spaces


def accuracy(space, source_labels, target_labels, kwargs, support, query):
    """Share of ``query`` right; fitting in the whitened space is fitting with whiten (evaluate_few_shot)."""
    source, target = space
    model = fit_transfer(source, source_labels, target[support], target_labels[support], **{**kwargs, "whiten": None})
    return float(np.mean(model.predict(target[query]) == target_labels[query]))


def score_candidates(spaces, source_labels, target_labels, episodes, k):
    """(candidate names, query accuracy and support leave-one-out accuracy: (episodes, candidates) each)."""
    methods = candidates()
    names = [(encoder, kind, method) for encoder, kind, shrinkage in spaces if shrinkage is None for method in methods]
    on_queries, on_support = np.zeros((len(episodes), len(names))), np.zeros((len(episodes), len(names)))
    for e, (support, query) in enumerate(episodes):
        shots = support.reshape(-1, k)  # sample_episodes lists the support class after class
        for j, (encoder, kind, method) in enumerate(names):
            kwargs = methods[method]
            space = spaces[encoder, kind, method_shrinkage(kwargs)]
            on_queries[e, j] = accuracy(space, source_labels, target_labels, kwargs, support, query)
            on_support[e, j] = np.mean([accuracy(space, source_labels, target_labels, kwargs,
                                                 np.delete(shots, i, axis=1).ravel(), shots[:, i]) for i in range(k)])
    return names, on_queries, on_support


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fashion_mnist")
    parser.add_argument("--params", default={}, type=json.loads, help="JSON {key: value} on top of params.json")
    parser.add_argument("--model_dir", required=True)
    args = parser.parse_args()
    params = load_params(os.path.join(EXPERIMENTS, args.experiment), {**args.params, "plot_method": "pca"})
    if not os.path.exists(os.path.join(args.model_dir, "metrics.json")):
        run(args.model_dir, params)
    with open(os.path.join(args.model_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    data = prepare_data(params)
    if data.target is None:
        parser.error("the run needs a transfer target (source_classes, target_dataset or target_transform)")
    encoders = {"trained": load_model(os.path.join(args.model_dir, "best.keras")).get_layer("encoder"),
                "untrained": initial_encoder(params, data.train.image_shape)}
    spaces = feature_spaces(params, encoders, data)
    source_labels, target_labels = data.train.labels, data.target.labels
    n_way = len(np.unique(target_labels))
    smallest = int(np.min(np.bincount(target_labels)[np.unique(target_labels)]))
    for k in [k for k in params["shots"] if k >= 2]:
        episodes = sample_episodes(target_labels, n_way, k, min(15, smallest - k), params["episodes"], params["seed"])
        names, on_queries, on_support = score_candidates(spaces, source_labels, target_labels, episodes, k)
        rows = np.arange(len(episodes))
        trained = np.array([encoder == "trained" for encoder, _, _ in names])
        picked_trained = np.flatnonzero(trained)[on_support[:, trained].argmax(axis=1)]
        picked_any = on_support.argmax(axis=1)
        best = int(on_queries.mean(axis=0).argmax())
        row = metrics["transfer"][f"{k}-shot"]
        print(f"{k}-shot: pixels {100 * row['pixels']['mean']:.1f}, initial_encoder "
              f"{100 * row['initial_encoder']['mean']:.1f}, auto on source episodes {100 * row['auto']['mean']:.1f}; "
              f"support leave-one-out {100 * on_queries[rows, picked_trained].mean():.1f} (trained encoder), "
              f"{100 * on_queries[rows, picked_any].mean():.1f} (both encoders; untrained picked in "
              f"{100 * np.mean(~trained[picked_any]):.0f}% of episodes); best single candidate "
              f"{' '.join(names[best])} {100 * on_queries[:, best].mean():.1f}")


if __name__ == "__main__":
    main()
