"""Few-shot accuracy of the whole pipeline (init.py) on real and toy data, with both baselines.

For each dataset, class split and training seed, init.py's own ``run`` trains the encoder with the
experiment's params.json and reports, on the same target episodes, ``pixels``, ``initial_encoder``, every
mode, ``auto`` (triplet_keras.transfer.choice: the search on evidence the features never trained on; in a new
domain then each support's leave-one-out), ``semi_supervised`` (the same with the episode's queries as
unlabelled pool, whose use the support's leave-one-out decides)
and the ceiling. Regimes:

* new classes: the encoder trains on one half of the classes (two splits: the first five and the
  last five, or the even and the odd classes), 5-way episodes on the other half;
* new domain (digits): the encoder trains on all ten digits, 10-way episodes on the test split
  redrawn in another writing style (``target_transform: style``);
* many classes (glyphs, rendered from the installed fonts by triplet_keras.data.glyphs): the encoder
  trains on the 36 digits and capital letters, 26-way episodes on the 26 small letters (the split
  of experiments/glyphs/params.json); skipped with a message when no fonts are installed.

Prints one Markdown table per regime and dataset (mean over seeds, [min-max] of the seed means, and
the choices ``auto`` made) and writes benchmarks/results/accuracy.json.

    python benchmarks/bench_accuracy.py [--datasets digits fashion_mnist glyphs] [--seeds 0 1 2] [--episodes 200]
"""
import argparse
import json
import os
import platform
import tempfile
import time

from triplet_keras.backend_choice import choose_backend

choose_backend()  # before keras is imported, as in init.py


from triplet_keras.pipeline.config import load_config  # noqa: E402
from triplet_keras.data.datasets import DatasetError, load_dataset  # noqa: E402
from triplet_keras.pipeline.end_to_end import machine, run  # noqa: E402

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "experiments")
COLUMNS = ("pixels", "initial_encoder", "none", "translate", "center", "auto", "semi_supervised", "ceiling")


def class_splits(names, kind):
    """{label: source classes}: the two halves of ``names`` by position ("halves") or parity ("parity")."""
    half = len(names) // 2
    if kind == "halves":
        return {"first half": names[:half], "second half": names[half:]}
    return {"even": names[::2], "odd": names[1::2]}


def settings(dataset, split_kind):
    """[(regime label, params overrides)] for one dataset; glyphs keep their experiment's split."""
    if dataset == "glyphs":
        return [("new classes, source = digits + capitals", {})]
    names = load_dataset(dataset, max_per_class=2).class_names
    cases = [(f"new classes, source = {label}", {"source_classes": chosen})
             for label, chosen in class_splits(names, split_kind).items()]
    if dataset == "digits":
        cases.append(("new domain (style)", {"source_classes": None, "target_transform": "style", "shots": [1, 5, 10]}))
    return cases


def run_case(dataset, overrides, seed, args):
    """metrics.json of one init.py run in a temporary folder, and its wall time in seconds."""
    config = load_config(os.path.join(EXPERIMENTS, dataset), {**args.params, **overrides, "seed": seed,
                                                               "episodes": args.episodes, "plot_method": "pca"})
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as model_dir:
        metrics = run(model_dir, config)
    return metrics, time.perf_counter() - started


def summarise(runs):
    """{K: {column: (mean, min, max) over seeds}}, {K: [each seed's most frequent auto pick]}."""
    table, choices = {}, {}
    for metrics in runs:
        for shots, rows in metrics["transfer"].items():
            for column in COLUMNS:
                table.setdefault(shots, {}).setdefault(column, []).append(rows[column]["mean"])
            picks = metrics["transfer_choice"][shots]["auto_picks"]
            top = max(picks, key=picks.get)
            choices.setdefault(shots, []).append(f"{top} ({100 * picks[top] / sum(picks.values()):.0f}%)")
    summary = {shots: {c: (sum(v) / len(v), min(v), max(v)) for c, v in columns.items()} for shots, columns in table.items()}
    return summary, choices


def markdown(title, summary, choices):
    lines = [f"**{title}**", "", "| K | " + " | ".join(COLUMNS) + " | auto's most frequent pick per seed |",
             "|---" * (len(COLUMNS) + 2) + "|"]
    for shots, columns in summary.items():
        cells = [f"{100 * m:.1f} [{100 * lo:.0f}-{100 * hi:.0f}]" for m, lo, hi in (columns[c] for c in COLUMNS)]
        lines.append(f"| {shots} | " + " | ".join(cells) + f" | {', '.join(choices[shots])} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["digits", "fashion_mnist", "glyphs"])
    parser.add_argument("--splits", default={"digits": "halves", "fashion_mnist": "halves"}, type=json.loads,
                        help='JSON {dataset: "halves" | "parity"}: how the classes are cut in two (not glyphs: '
                             "digits + capitals -> small letters)")
    parser.add_argument("--regime", default="", help="run only the regimes whose label contains this text")
    parser.add_argument("--params", default={}, type=json.loads,
                        help='JSON {key: value}: parameters set on top of each experiment\'s params.json')
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "accuracy.json"))
    args = parser.parse_args()
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    report = {"args": vars(args), "machine": {**machine(), "platform": platform.platform()}, "results": {}}
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(report, handle)
    tables = []
    for dataset in args.datasets:
        if dataset == "glyphs":
            try:
                load_dataset("glyphs", max_per_class=2)  # built from the installed fonts on first use
            except DatasetError as error:
                print(f"glyphs skipped: {error}", flush=True)
                continue
        for regime, overrides in settings(dataset, args.splits.get(dataset, "halves")):
            if args.regime not in regime:
                continue
            title = f"{dataset}, {regime}"
            runs, seconds = [], []
            for seed in args.seeds:
                metrics, wall = run_case(dataset, overrides, seed, args)
                runs.append(metrics)
                seconds.append(round(wall, 1))
                print(f"{dataset}, {regime}, seed {seed}: {wall:.0f} s", flush=True)
                report["results"][title] = {"seconds": seconds, "runs": [
                    {key: m[key] for key in ("transfer", "transfer_choice", "fine_tuning_verdict", "calibration", "scores",
                                             "machine")}
                    for m in runs]}
                with open(args.output, "w", encoding="utf-8") as handle:  # after every run: nothing lost
                    json.dump(report, handle, indent=2)
            summary, choices = summarise(runs)
            report["results"][title].update(summary=summary, choices=choices)
            tables.append(markdown(title, summary, choices))
    with open(args.output, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=2)
    print("\nAccuracy % on the target episodes: mean over seeds [min-max of the seed means]\n")
    print("\n\n".join(tables))
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
