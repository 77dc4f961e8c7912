"""What init.py runs: data -> train -> evaluate -> transfer -> predictors -> report, in one model folder.

``run`` takes a config.Config (params.json and the flags, read into frozen sections) and hands each
stage the sections it needs. It is the list of stages, each a function of its own module returning a
small dataclass:
prepared_data.prepare_data (PreparedData, with its TargetSpec), training.train (TrainedEncoder),
source_evaluation.evaluate_source (SourceEvaluation) and save_source_predictor,
transfer_evaluation.run_transfer (TransferResult), and the report here (metrics.json and the summary).

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
import platform

import keras
import numpy as np

from triplet_keras.core.export import export_embeddings, write_json
from triplet_keras.pipeline import plots
from triplet_keras.pipeline.callbacks import TrainingState
from triplet_keras.pipeline.checkpoints import (
    RESUMABLE_KEYS,
    check_model_dir,
    load_checkpoint,
    read_state,
    remove_temporary_files,
    training_fingerprint,
    write_state_copies,
)
from triplet_keras.pipeline.prepared_data import check_image_shape, prepare_data
from triplet_keras.pipeline.source_evaluation import (calibration_report, embed_splits, evaluate_source,
                                                      save_source_predictor)
from triplet_keras.pipeline.stages import PipelineError, elapsed_cpu_seconds, elapsed_seconds, stage, start_clock
from triplet_keras.pipeline.training import train
from triplet_keras.pipeline.transfer_evaluation import run_transfer, transfer_split
from triplet_keras.transfer.evaluation import BASELINES

# What tests, benchmarks and docs import from here, several of them defined in the stage modules.
__all__ = ["PipelineError", "RESUMABLE_KEYS", "TrainingState", "calibration_report", "embed_splits", "load_checkpoint",
           "prepare_data", "read_state", "remove_temporary_files", "run", "train", "training_fingerprint",
           "transfer_split", "write_state_copies"]


def fine_tuning_verdict(transfer):
    """One line per K and searched row (``auto``, ``semi_supervised``): whether it beat both baselines."""
    lines = []
    for shots, rows in transfer.items():
        best = max(BASELINES, key=lambda name: rows[name]["mean"])
        for row in ("auto", "semi_supervised"):
            chosen = rows[row]["mean"]
            verdict = "beat both baselines" if chosen > rows[best]["mean"] else f"did NOT beat the {best} baseline"
            lines.append(f"{shots} {row}: {verdict} ({chosen:.3f} vs pixels {rows['pixels']['mean']:.3f}, "
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


def plot_source(model_dir, data, evaluation, history):
    """The loss curves of ``history`` and the confusion matrix of the test split, under ``model_dir/plots``."""
    names, plot_dir = data.names, os.path.join(model_dir, "plots")
    plots.plot_loss_curves(os.path.join(plot_dir, "loss_curves.png"), history)
    plots.plot_confusion_matrix(os.path.join(plot_dir, "confusion_matrix.png"), [names[c] for c in data.test.labels],
                                [names[c] for c in evaluation.predicted],
                                [names[c] for c in evaluation.classifier.classes_])


def export_run_embeddings(model_dir, data, evaluation, transfer):
    """The test embeddings and, with a transfer, the target ones (the support marked), in one space:
    the fine-tuned embedding's, for TensorBoard's projector (export_embeddings)."""
    names = data.names
    vectors = [evaluation.test]
    export = {"label": [names[c] for c in data.test.labels], "split": ["test"] * len(evaluation.test),
              "domain": ["source"] * len(evaluation.test)}
    if transfer is not None:
        vectors.append(evaluation.target)
        export["label"] += [names[c] for c in transfer.target_labels]
        in_support = np.isin(np.arange(len(transfer.target_labels)), transfer.support)
        export["split"] += ["support" if chosen else "target" for chosen in in_support]
        export["domain"] += ["target"] * len(transfer.target_labels)
    export_embeddings(os.path.join(model_dir, "embeddings"), np.concatenate(vectors), export,
                      log_dir=os.path.join(model_dir, "logs"))


def machine():
    """The machine a run measured on: its CPU model, cores, Keras backend and versions, and the load
    average over the last 15 minutes (other work sharing the cores)."""
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "backend": keras.backend.backend(), "keras": keras.__version__,
            "python": platform.python_version(), "load_average": round(os.getloadavg()[2], 1)}


def report(model_dir, config, trained, evaluation, calibration, transfer):
    """The report stage: ``model_dir/metrics.json`` (``params``: the flat parameters of ``config``, as in
    params.json) and the printed summary; returns the metrics dict."""
    scores, episodes, choices, search = dict(evaluation.scores), {}, {}, None
    if transfer is not None:
        scores["transfer_accuracy"], episodes, choices = transfer.accuracy, transfer.episodes, transfer.choices
        search = transfer.search
    verdict = fine_tuning_verdict(episodes)
    result = {"params": config.to_dict(), "scores": scores, "transfer": episodes, "transfer_choice": choices,
              "saved_transfer_search": search,
              "fine_tuning_verdict": verdict, "calibration": calibration,
              "epochs_trained": len(trained.history.get("loss", [])), "machine": machine(),
              "seconds": round(elapsed_seconds()), "cpu_seconds": round(elapsed_cpu_seconds())}
    write_json(os.path.join(model_dir, "metrics.json"), result)
    stage("summary")
    print(summary_table(scores, episodes))
    for line in verdict:
        print(line)
    return result


def run(model_dir, config, restart=False):
    """The whole run of ``config`` (config.Config): data, train, evaluate, transfer, report; returns the
    metrics dict also written to ``model_dir/metrics.json``."""
    start_clock()
    check_model_dir(model_dir)
    remove_temporary_files(model_dir)
    keras.config.set_dtype_policy(config.model.precision)
    stage(f"loading {config.data.dataset}")
    data = prepare_data(config.data, config.seed)
    check_image_shape(data.train.image_shape, config.training.pseudo_classes, config.transfer.transfer_shift_average)
    stage(f"{len(data.source_classes)} source classes of {len(data.names)}; train {len(data.train)}, "
          f"validation {len(data.validation)}, test {len(data.test)} images")
    trained = train(config, data, model_dir, restart)
    stage("evaluating on the test split (nearest class mean)")
    evaluation = evaluate_source(trained.encoder, data)
    stage("calibrating the predictors (source: on the validation split)")
    calibration = {"source": save_source_predictor(trained.encoder, data, evaluation, model_dir)}
    plot_source(model_dir, data, evaluation, trained.history)
    transfer = None
    if data.target is not None:
        stage(f"transfer to the target ({data.target.regime})")
        transfer = run_transfer(config, trained.encoder, data, model_dir, (evaluation.train, evaluation.target),
                                restart)
        calibration["transfer"] = transfer.calibration
    export_run_embeddings(model_dir, data, evaluation, transfer)
    return report(model_dir, config, trained, evaluation, calibration, transfer)
