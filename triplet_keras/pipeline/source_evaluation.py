"""The evaluation stage of pipeline.run on the source: nearest-mean classification of the test split,
retrieval and clustering scores, and the saved source predictor with its calibration report."""
import os
from dataclasses import dataclass

import numpy as np

from triplet_keras.models.networks import embed_images
from triplet_keras.pipeline import plots
from triplet_keras.serving.predict import Predictor
from triplet_keras.transfer import metrics
from triplet_keras.transfer import NearestMeanClassifier


def image_ids(splits):
    """Ids of the images of ``splits`` in order: their file paths when every split has them (folders),
    else row numbers."""
    if all(hasattr(split, "paths") for split in splits):
        return np.array([path for split in splits for path in split.paths])
    return np.arange(sum(len(split) for split in splits))


def embed_splits(encoder, splits):
    """Concatenated embeddings and labels of several splits."""
    embeddings = [embed_images(encoder, s, description=f"embedding {len(s)} images") for s in splits]
    return np.concatenate(embeddings), np.concatenate([s.labels for s in splits])


@dataclass
class SourceEvaluation:
    """What the evaluation stage hands on: the test ``scores``, the nearest-mean ``classifier`` fitted on
    the train embeddings, the ``train`` and ``test`` embeddings, the ``predicted`` test labels, and the
    ``target`` images as the encoder embeds them (None when the run has no target)."""
    scores: dict
    classifier: NearestMeanClassifier
    train: np.ndarray
    test: np.ndarray
    predicted: np.ndarray
    target: np.ndarray = None


def evaluate_source(encoder, data):
    """The evaluation stage on ``data`` (PreparedData): nearest-mean classification of the test split,
    retrieval and clustering scores; a SourceEvaluation."""
    train_emb = embed_images(encoder, data.train, description="embedding train")
    test_emb = embed_images(encoder, data.test, description="embedding test")
    classifier = NearestMeanClassifier().fit(train_emb, data.train.labels)
    predicted = classifier.predict(test_emb)
    scores = {"test_accuracy": metrics.accuracy(data.test.labels, predicted)}
    scores.update({f"test_{k}": v for k, v in metrics.retrieval_scores(test_emb, data.test.labels).items()})
    scores.update({f"test_{k}": v for k, v in metrics.clustering_scores(test_emb, data.test.labels).items()})
    target = None if data.target is None else embed_splits(encoder, data.target.splits)[0]
    return SourceEvaluation(scores, classifier, train_emb, test_emb, predicted, target)


def save_source_predictor(encoder, data, evaluation, model_dir):
    """The source predictor (the train split as its gallery) calibrated on the validation split, saved
    in ``model_dir/predictor``; returns its calibration_report on the test split (with new target
    classes, also the share of their images it answers "unknown")."""
    names = data.names
    predictor = Predictor(encoder, [names[c] for c in evaluation.classifier.classes_], evaluation.classifier)
    predictor.add_gallery_embeddings(evaluation.train, [names[c] for c in data.train.labels], image_ids([data.train]))
    validation_emb = embed_images(encoder, data.validation, progress=False) if len(data.validation) else []
    report = calibration_report(
        predictor, names, (validation_emb, data.validation.labels), (evaluation.test, data.test.labels),
        os.path.join(model_dir, "plots", "reliability_source.png"),
        evaluation.target if data.target is not None and data.target.new_classes else None)
    predictor.save(os.path.join(model_dir, "predictor"))
    return report


def calibration_report(predictor, names, calibration, report, plot_path, unseen=None, accept_rate=0.95):
    """Calibrate ``predictor`` on ``calibration`` = (embeddings, labels indexing ``names``) and score it
    on another held-out ``report`` pair: ECE (15 bins) before and after, the share of report images accepted (not
    "unknown") and the accuracy among them, and with ``unseen`` (embeddings of classes the predictor
    never saw) the share of those answered "unknown". Draws the reliability diagram at ``plot_path``."""
    (calibration_emb, calibration_names), (report_emb, report_names) = ((emb, np.asarray(names)[labels])
                                                                          for emb, labels in (calibration, report))
    if not len(calibration_names) or not len(report_names):
        return {"skipped": "no held-out images to calibrate on or to report on"}
    labels = np.array([predictor.class_names.index(name) for name in report_names])
    before = predictor.classifier.predict_proba(report_emb)
    fitted = predictor.calibrate_embeddings(calibration_emb, calibration_names, accept_rate)
    after = predictor.predict_proba_embeddings(report_emb)
    answers = np.array(predictor.predict_embeddings(report_emb))
    accepted = answers != predictor.UNKNOWN
    result = {**fitted._asdict(), "n_calibration": len(calibration_names), "n_report": len(report_names),
              "ece_before": metrics.expected_calibration_error(before, labels),
              "ece_after": metrics.expected_calibration_error(after, labels),
              "accepted_share": float(accepted.mean()),
              "accepted_accuracy": metrics.accuracy(report_names[accepted], answers[accepted])
              if accepted.any() else float("nan")}
    if unseen is not None and len(unseen):
        result["unseen_unknown_share"] = float(np.mean(np.array(predictor.predict_embeddings(unseen)) == predictor.UNKNOWN))
    plots.plot_reliability_diagram(plot_path, {"before calibration": (before, labels), "after calibration": (after, labels)})
    return result
