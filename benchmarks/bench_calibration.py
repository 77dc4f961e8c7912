"""Calibration and "unknown" answers of the two saved predictors of an init.py run (new classes).

For a run folder (--model_dir, trained by init.py; older predictors load uncalibrated) or a fresh one
(the experiments/digits parameters, with --dataset, --source_classes, --epochs and --backbone_size
overriding them, trained into a temporary folder), recalibrates both predictors exactly as init.py
does (pipeline.calibration_report) and prints, for each:

* the fitted temperature and the thresholds of the default score (accept rate --accept_rate on the
  calibration images);
* ECE (15 bins) before and after, on held-out images of its own classes it was not calibrated on
  (source predictor: calibrated on the validation split, scored on the test split; transfer
  predictor: calibrated and scored on two halves of the target images outside the support);
* the share of those images accepted (not "unknown") and the accuracy among them;
* for the source predictor, the share of images of the target classes (never seen by it) answered
  "unknown";
* then the same for every score option of Predictor.calibrate and for --target_precision, each
  chosen on the calibration images and scored on the report images; and two upper bounds, chosen on
  the report images themselves and so not reachable in use: for each single score, the AUROC of
  known (report) against never-seen images and the share of never-seen images above a threshold that
  accepts 90% of the report images; the best accuracy any rule can have among 90% accepted
  (accuracy / 0.9).

    python benchmarks/bench_calibration.py [--model_dir DIR] [--dataset digits] [--source_classes 0 1 2 3 4]
"""
import argparse
import json
import os
import platform
import tempfile

import numpy as np
from sklearn.metrics import roc_auc_score

from triplet_keras.backend_choice import choose_backend

choose_backend()  # before keras is imported, as in init.py
from triplet_keras.pipeline.config import load_config  # noqa: E402
from triplet_keras.models.networks import embed_images  # noqa: E402
from triplet_keras.pipeline.end_to_end import (  # noqa: E402
    calibration_report, embed_splits, prepare_data, run, transfer_split)
from triplet_keras.serving.predict import Predictor  # noqa: E402

EXPERIMENT = os.path.join(os.path.dirname(__file__), os.pardir, "experiments", "digits")
OPTIONS = ("distance", "probability", "neighbours", "distance+probability", "neighbours+probability")
COLUMNS = ("temperature", "ece_before", "ece_after", "accepted_share", "accepted_accuracy",
           "unseen_unknown_share")


def train_run(args):
    """A fresh init.py run of the digits experiment with the given overrides; returns its folder."""
    model_dir = tempfile.mkdtemp(prefix="bench_calibration_")
    config = load_config(EXPERIMENT, {"dataset": args.dataset, "source_classes": args.source_classes,
                                      "plot_method": "pca",
                                      **{key: value for key, value in (("epochs", args.epochs),
                                                                       ("backbone_size", args.backbone_size))
                                         if value is not None}})
    with open(os.path.join(model_dir, "params.json"), "w", encoding="utf-8") as handle:
        json.dump(config.to_dict(), handle)
    run(model_dir, config)
    return model_dir


def score_rows(predictor, names, calibration, report, unseen, accept_rate, target_precision):
    """For each score option (and the target precision): the report images' accepted share and accuracy
    among the accepted, and the never-seen images' unknown share; the upper bounds of the docstring."""
    (calibration_emb, calibration_labels), (report_emb, report_labels) = calibration, report
    rows = {}
    for score, precision in [(score, None) for score in OPTIONS] + [("probability", target_precision),
                                                                     ("neighbours+probability", target_precision)]:
        try:
            fitted = predictor.calibrate_embeddings(calibration_emb, np.asarray(names)[calibration_labels],
                                                    accept_rate, score, precision)
        except ValueError as error:
            rows[f"{score} precision {precision}"] = {"error": str(error)}
            continue
        accepted = ~predictor.unknown_embeddings(report_emb)
        right = np.array(predictor.predict_embeddings(report_emb)) == np.asarray(names)[report_labels]
        row = {"accepted_share": accepted.mean(), "thresholds": fitted.thresholds,
               "accepted_accuracy": right[accepted].mean() if accepted.any() else np.nan}
        if unseen is not None:
            row["unseen_unknown_share"] = predictor.unknown_embeddings(unseen).mean()
        if unseen is not None and "+" not in score:  # upper bounds: thresholds chosen on the report images
            known, new = (predictor.acceptance_scores(emb, [score], fitted.temperature)[:, 0]
                          for emb in (report_emb, unseen))
            row["auroc_upper_bound"] = roc_auc_score(np.r_[np.zeros(len(known)), np.ones(len(new))], np.r_[known, new])
            row["unknown_upper_bound"] = np.mean(new > np.quantile(known, 0.9))
        rows[score if precision is None else f"{score} precision {precision}"] = row
    accuracy = np.mean(np.array(predictor.predict_embeddings(report_emb, reject_unknown=False))
                       == np.asarray(names)[report_labels])
    rows["best possible among 90% accepted"] = {"accepted_share": 0.9, "accepted_accuracy": min(1.0, accuracy / 0.9)}
    return rows


def reports(model_dir, accept_rate, target_precision):
    """{"source": ..., "transfer": ...} calibration_report of each saved predictor of ``model_dir``, each
    with its score_rows under "scores"."""
    config = load_config(model_dir)
    data = prepare_data(config.data, config.seed)
    if data.target is None or not data.target.new_classes:
        raise SystemExit("error: the run has no new target classes (set source_classes)")
    names = data.names
    plot_dir = tempfile.mkdtemp(prefix="reliability_")
    source = Predictor.load(os.path.join(model_dir, "predictor"))
    splits = data.target.splits
    labelled = lambda split: (embed_images(source.encoder, split, progress=False), split.labels)  # noqa: E731
    calibration, report = labelled(data.validation), labelled(data.test)
    unseen = embed_splits(source.encoder, splits)[0]
    result = {"source": calibration_report(source, names, calibration, report, os.path.join(plot_dir, "source.png"),
                                           unseen, accept_rate)}
    result["source"]["scores"] = score_rows(source, names, calibration, report, unseen, accept_rate, target_precision)
    transfer = Predictor.load(os.path.join(model_dir, "predictor_transfer"))
    target_emb, target_labels = embed_splits(transfer.encoder, splits)
    _, calibration, report = transfer_split(config.transfer, config.seed, target_labels)
    calibration, report = ((target_emb[rows], target_labels[rows]) for rows in (calibration, report))
    result["transfer"] = calibration_report(transfer, names, calibration, report,
                                            os.path.join(plot_dir, "transfer.png"), accept_rate=accept_rate)
    result["transfer"]["scores"] = score_rows(transfer, names, calibration, report, None, accept_rate, target_precision)
    print(f"reliability diagrams in {plot_dir}")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", help="a folder trained by init.py (default: train a fresh one)")
    parser.add_argument("--dataset", default="digits", help="passed to triplet_keras.load_dataset")
    parser.add_argument("--source_classes", nargs="+", default=["0", "1", "2", "3", "4"],
                        help="class names the encoder trains on; the others are the never-seen targets")
    parser.add_argument("--epochs", type=int, help="training epochs (default: the digits experiment's)")
    parser.add_argument("--backbone_size", type=int, nargs=2, help="small_cnn's internal image size")
    parser.add_argument("--accept_rate", type=float, default=0.95)
    parser.add_argument("--target_precision", type=float, default=0.95)
    args = parser.parse_args()
    model_dir = args.model_dir or train_run(args)
    result = reports(model_dir, args.accept_rate, args.target_precision)
    print(f"\nrun folder {model_dir}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print("| predictor | n calibration | n report | " + " | ".join(COLUMNS) + " |")
    print("|---|---|---|" + "---|" * len(COLUMNS))
    for name, row in result.items():
        cells = [f"{row[key]:.3f}" if key in row else "-" for key in COLUMNS]
        print(f"| {name} | {row['n_calibration']} | {row['n_report']} | " + " | ".join(cells) + " |")
    columns = ("accepted_share", "accepted_accuracy", "unseen_unknown_share", "auroc_upper_bound",
               "unknown_upper_bound")
    print("\n| predictor | score | " + " | ".join(columns) + " |\n|---|---|" + "---|" * len(columns))
    for name, row in result.items():
        for score, values in row["scores"].items():
            cells = [f"{values[key]:.3f}" if key in values else "-" for key in columns]
            print(f"| {name} | {score} | " + " | ".join(cells) + " |")
    print(json.dumps(result, default=float))


if __name__ == "__main__":
    main()
