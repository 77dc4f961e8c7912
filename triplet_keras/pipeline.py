"""What init.py runs: data -> train -> evaluate -> transfer -> predictors -> report, in one model folder.

Files left in ``model_dir`` (each written atomically, so a kill leaves no corrupt file):
``best.keras`` and ``last.keras`` (the training model with its optimizer and, inside the same zip,
its training state: epoch, best validation loss, history, the parameters it was trained with),
``state.json`` (a readable copy of last.keras's state), ``history.csv``, ``logs/``
(TensorBoard), ``embeddings/`` (vectors, metadata.tsv, npz; shown by TensorBoard's projector),
``plots/`` (2-D maps before/after the transfer, loss curves, confusion matrix, reliability diagrams),
``predictor/`` (source classes; the train split as its gallery) and ``predictor_transfer/`` (target
classes; the support as its gallery), both calibrated (calibration_report), and ``metrics.json``.
Re-running into the same folder resumes from ``last.keras`` unless ``restart`` is set; only the
parameters in RESUMABLE_KEYS may differ from those it was trained with.
"""
import os

import keras
import numpy as np

from triplet_keras import plots
from triplet_keras.callbacks import TrainingState
from triplet_keras.checkpoints import (
    RESUMABLE_KEYS,
    check_model_dir,
    load_checkpoint,
    read_state,
    remove_temporary_files,
    training_fingerprint,
    write_state_copies,
)
from triplet_keras.evaluation import BASELINES
from triplet_keras.export import export_embeddings, write_json
from triplet_keras.models import embed_images
from triplet_keras.predict import Predictor
from triplet_keras.prepared_data import prepare_data
from triplet_keras.source_evaluation import calibration_report, embed_splits, evaluate_source, image_ids
from triplet_keras.stages import PipelineError, stage, start_clock
from triplet_keras.training import train
from triplet_keras.transfer_evaluation import run_transfer, transfer_split

# What tests, benchmarks and docs import from here, including names that now live in stages, checkpoints
# and callbacks.
__all__ = ["PipelineError", "RESUMABLE_KEYS", "TrainingState", "calibration_report", "embed_splits", "load_checkpoint",
           "prepare_data", "read_state", "remove_temporary_files", "run", "train", "training_fingerprint",
           "transfer_split", "write_state_copies"]


def fine_tuning_verdict(transfer):
    """One line per K: whether ``auto`` beat both baselines."""
    lines = []
    for shots, rows in transfer.items():
        auto, best = rows["auto"]["mean"], max(BASELINES, key=lambda name: rows[name]["mean"])
        verdict = "beat both baselines" if auto > rows[best]["mean"] else f"did NOT beat the {best} baseline"
        lines.append(f"{shots}: fine-tuning + transfer {verdict} ({auto:.3f} vs pixels {rows['pixels']['mean']:.3f}, "
                     f"initial_encoder {rows['initial_encoder']['mean']:.3f})")
    return lines


def summary_table(scores, transfer):
    """Markdown table of the headline figures."""
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {key} | {value:.4f} |" for key, value in scores.items() if isinstance(value, float)]
    for shots, modes in transfer.items():
        for mode, result in modes.items():
            lines.append(f"| transfer {shots} {mode} | {result['mean']:.4f} ± {result['ci95']:.4f} |")
    return "\n".join(lines)


def run(model_dir, params, restart=False):
    """The whole run; returns the metrics dict also written to ``model_dir/metrics.json``."""
    start_clock()
    check_model_dir(model_dir)
    remove_temporary_files(model_dir)
    keras.config.set_dtype_policy(params["precision"])
    stage(f"loading {params['dataset']}")
    data = prepare_data(params)
    names = data["names"]
    stage(f"{len(data['source_classes'])} source classes of {len(names)}; train {len(data['train'])}, "
          f"validation {len(data['validation'])}, test {len(data['test'])} images")
    encoder, history = train(params, data, model_dir, restart)

    stage("evaluating on the test split (nearest class mean)")
    scores, classifier, train_emb, test_emb, predicted = evaluate_source(encoder, data)
    source_names = [names[c] for c in classifier.classes_]
    plot_dir = os.path.join(model_dir, "plots")
    target = data["target"]
    target_in_source = None if target is None else embed_splits(encoder, target["splits"])[0]
    stage("calibrating the predictors (source: on the validation split)")
    source_predictor = Predictor(encoder, source_names, classifier)
    source_predictor.add_gallery_embeddings(train_emb, [names[c] for c in data["train"].labels],
                                            image_ids([data["train"]]))
    validation_emb = embed_images(encoder, data["validation"], progress=False) if len(data["validation"]) else []
    calibration = {"source": calibration_report(
        source_predictor, names, (validation_emb, data["validation"].labels), (test_emb, data["test"].labels),
        os.path.join(plot_dir, "reliability_source.png"),
        target_in_source if target is not None and target["regime"] == "new classes" else None)}
    source_predictor.save(os.path.join(model_dir, "predictor"))
    plots.plot_loss_curves(os.path.join(plot_dir, "loss_curves.png"), history)
    plots.plot_confusion_matrix(os.path.join(plot_dir, "confusion_matrix.png"),
                                [names[c] for c in data["test"].labels], [names[c] for c in predicted], source_names)
    export = {"label": [names[c] for c in data["test"].labels], "split": ["test"] * len(test_emb),
              "domain": ["source"] * len(test_emb)}
    vectors = [test_emb]

    transfer, choices = {}, {}
    if target is not None:
        stage(f"transfer to the target ({target['regime']})")
        transfer, choices, scores["transfer_accuracy"], calibration["transfer"], target_labels, support = run_transfer(
            params, encoder, data, model_dir, names, (train_emb, target_in_source))
        vectors.append(target_in_source)  # the projector shows every split in one space: the embedding's
        export["label"] += [names[c] for c in target_labels]
        in_support = np.isin(np.arange(len(target_labels)), support)
        export["split"] += ["support" if chosen else "target" for chosen in in_support]
        export["domain"] += ["target"] * len(target_labels)
    export_embeddings(os.path.join(model_dir, "embeddings"), np.concatenate(vectors), export,
                      log_dir=os.path.join(model_dir, "logs"))

    verdict = fine_tuning_verdict(transfer)
    result = {"params": params, "scores": scores, "transfer": transfer, "transfer_choice": choices,
              "fine_tuning_verdict": verdict, "calibration": calibration, "epochs_trained": len(history.get("loss", []))}
    write_json(os.path.join(model_dir, "metrics.json"), result)
    stage("summary")
    print(summary_table(scores, transfer))
    for line in verdict:
        print(line)
    return result
