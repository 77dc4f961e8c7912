"""The transfer stage of pipeline.run: the transfer features and mode chosen by episodes on the source,
then on each support by leave-one-out, few-shot episodes on the target with the baselines, and the
saved, calibrated transfer predictor."""
import os
from collections import Counter
from dataclasses import dataclass, replace
from functools import partial

import keras
import numpy as np

from triplet_keras import plots, selection
from triplet_keras.evaluation import evaluate_few_shot, method_shrinkage, whitened_spaces
from triplet_keras.export import write_json
from triplet_keras.models import TRANSFER_FEATURES, embed_images, feature_encoder
from triplet_keras.predict import Predictor
from triplet_keras.source_evaluation import calibration_report, embed_splits, image_ids
from triplet_keras.stages import stage
from triplet_keras.prepared_data import select_classes
from triplet_keras.training import build_training_model, train
from triplet_keras.transfer import fit_transfer


# The widest transfer features "auto" tries: whitening them takes a d x d float64 matrix (32 MB).
MAX_AUTO_WIDTH = 2048


def transfer_feature_models(params, encoder, new_classes=False):
    """{kind: model} of the transfer features to choose from: ``transfer_features``, or with "auto" every
    kind of models.TRANSFER_FEATURES whose vectors are at most MAX_AUTO_WIDTH wide (a d x d whitening),
    but for ``new_classes`` not the embedding: its head is trained to separate exactly the source
    classes, so episodes on them always favour it, while on classes it never saw it did worst."""
    kinds = TRANSFER_FEATURES if params["transfer_features"] == "auto" else (params["transfer_features"],)
    if params["transfer_features"] == "auto" and new_classes:
        kinds = tuple(kind for kind in kinds if kind != "embedding")
    models = {kind: feature_encoder(encoder, kind, params["transfer_shift_average"]) for kind in kinds}
    return {kind: model for kind, model in models.items()
            if params["transfer_features"] != "auto" or model.output_shape[-1] <= MAX_AUTO_WIDTH}


@dataclass
class TransferVectors:
    """One kind of transfer features of the source (train rows and held-out rows, see selection.py)
    and of the target."""
    model: keras.Model
    train: np.ndarray
    held_out: np.ndarray
    target: np.ndarray


def embed_for_transfer(params, encoder, data, encoder_vectors):
    """({kind: TransferVectors}, train labels, held-out labels, target labels, the train rows held out
    or None) for ``data`` (PreparedData) and its target. The held-out rows are
    the source validation split, or half of each train class when there is none (selection.halve_per_class);
    the train rows are every train image either way (the selection uses the rest when halving).
    ``encoder_vectors``: (train, target) as ``encoder`` itself embeds them, reused for the "embedding" kind."""
    train_labels, target_labels, target_splits = data.train.labels, data.target.labels, data.target.splits
    halved = None if len(data.validation) else selection.halve_per_class(train_labels, params["seed"])
    held_out_labels = train_labels[halved] if halved is not None else data.validation.labels
    vectors = {}
    for kind, model in transfer_feature_models(params, encoder, data.target.new_classes).items():
        if model is encoder:
            train, target = encoder_vectors
        else:
            train = embed_images(model, data.train, description=f"{kind} features of train")
            target = embed_splits(model, target_splits)[0]
        held_out = train[halved] if halved is not None else embed_images(
            model, data.validation, description=f"{kind} features of validation")
        vectors[kind] = TransferVectors(model, train, held_out, target)
    return vectors, train_labels, held_out_labels, target_labels, halved


def choose_transfer(params, vectors, train_labels, held_out_labels, halved, new_classes, n_way, k_shot):
    """selection.TransferChoice for K = ``k_shot``, from episodes on the source rows not held out;
    candidates limited by transfer_mode / transfer_whiten when they are not "auto"."""
    rows = np.arange(len(train_labels)) if halved is None else np.flatnonzero(~halved)
    features = {kind: (v.train[rows], v.held_out) for kind, v in vectors.items()}
    return selection.choose_transfer(features, train_labels[rows], held_out_labels, new_classes, n_way, k_shot,
                                     params["transfer_mode"], params["transfer_whiten"], params["episodes"],
                                     params["seed"])


def choose_on_held_out_classes(params, data, model_dir, restart, n_way):
    """{K: selection.TransferChoice} for new classes from a selection encoder: trained like the main one
    (into ``model_dir``/selection_encoder, resumable) without the source classes of
    selection.held_out_fold, and scored on episodes with that fold as the new classes. None when the
    source has too few classes for a fold."""
    classes = np.unique(data.train.labels)
    fold = selection.held_out_fold(classes, n_way, params["seed"])
    if not len(fold):
        stage("too few source classes for a held-out fold: choosing on the source classes")
        return None
    kept = np.setdiff1d(classes, fold)
    stage(f"training a selection encoder without the source classes {[data.names[c] for c in fold]}")
    fold_data = replace(data, train=select_classes(data.train, kept), validation=select_classes(data.validation, kept),
                        test=select_classes(data.test, kept), target=None)
    encoder = train(params, fold_data, os.path.join(model_dir, "selection_encoder"), restart).encoder
    unseen = [split for split in (select_classes(s, fold) for s in (data.train, data.validation)) if len(split)]
    features, unseen_labels = {}, None
    for kind, model in transfer_feature_models(params, encoder, new_classes=True).items():
        vectors, unseen_labels = embed_splits(model, unseen)
        features[kind] = (embed_images(model, fold_data.train, description=f"{kind} features of train"), vectors)
    choices = {}
    for k in params["shots"]:
        tasks = selection.held_out_class_tasks(fold_data.train.labels, unseen_labels, n_way, k)
        choices[k] = selection.choose_transfer(features, fold_data.train.labels, unseen_labels, True, n_way, k,
                                               params["transfer_mode"], params["transfer_whiten"], params["episodes"],
                                               params["seed"], tasks)
        choices[k].episodes = "held_out_classes"
    return choices


def initial_encoder(params, image_shape):
    """The encoder before fine-tuning: built as the training stage builds it, right after seeding Keras
    with the run's seed as training does, so with the weights training started from."""
    keras.utils.set_random_seed(params["seed"])
    return build_training_model(params, image_shape)[1]


def baseline_vectors(params, data, choice_features):
    """(target images flattened as uint8: the pixels baseline, {kind: target features of the encoder
    before fine-tuning}: the initial_encoder baseline)."""
    target_splits = data.target.splits
    pixels = np.concatenate([s.load(np.arange(len(s))).reshape(len(s), -1) for s in target_splits])
    initial_models = transfer_feature_models(params, initial_encoder(params, data.train.image_shape))
    features = {kind: embed_splits(initial_models[kind], target_splits)[0] for kind in set(choice_features)}
    return pixels, features


def choose_on_supports(params, vectors, train_labels, target_labels, choice, supports):
    """[selection.TransferChoice] for each support (target rows): ``choice`` re-decided by leave-one-out
    on that support over every kind of ``vectors`` and the candidates transfer_mode / transfer_whiten
    leave open (selection.support_scores, selection.support_choice); ``choice`` itself for a support
    with one shot of a class. One kind's whitened vectors are in memory at a time."""
    methods = selection.open_candidates(params["transfer_mode"], params["transfer_whiten"])
    n_folds = [len(selection.leave_one_out_folds(target_labels[support])) for support in supports]
    scores = [{} for _ in supports]
    shrinkages = {method_shrinkage(kwargs) for kwargs in methods.values()}
    for kind, v in (vectors.items() if any(n_folds) else ()):
        spaces = whitened_spaces(v.train, train_labels, v.target, shrinkages)
        for found, new in zip(scores, selection.support_scores(kind, spaces, train_labels, target_labels, supports,
                                                               methods, progress=len(supports) > 1)):
            found.update(new)
    return [selection.support_choice(choice, found, methods, n) for found, n in zip(scores, n_folds)]


def choice_accuracies(vectors, train_labels, target_labels, choices, episodes):
    """Share of each episode's queries right with that episode's choice (fitted on its support)."""
    accuracies = np.zeros(len(episodes))
    for kind in {choice.features for choice in choices}:
        v = vectors[kind]
        spaces = whitened_spaces(v.train, train_labels, v.target,
                                 {method_shrinkage(choice.kwargs) for choice in choices if choice.features == kind})
        for e, ((support, query), choice) in enumerate(zip(episodes, choices)):
            if choice.features == kind:  # fitting in the whitened space is fitting with whiten
                source, target = spaces[method_shrinkage(choice.kwargs)]
                model = fit_transfer(source, train_labels, target[support], target_labels[support],
                                     **{**choice.kwargs, "whiten": None})
                accuracies[e] = np.mean(model.predict(target[query]) == target_labels[query])
    return accuracies


def auto_accuracies(params, vectors, train_labels, target_labels, choice, picks, episodes):
    """``auto``'s share right on each episode: ``choice`` re-decided on the episode's support
    (choose_on_supports), fitted on it and scored on its queries; counts each pick in ``picks``."""
    chosen = choose_on_supports(params, vectors, train_labels, target_labels, choice, [support for support, _ in episodes])
    picks.update(c.key for c in chosen)
    return choice_accuracies(vectors, train_labels, target_labels, chosen, episodes)


def evaluate_transfer(params, vectors, train_labels, target_labels, choices, baselines):
    """Few-shot episodes for each K: every mode on the chosen features and shrinkage, ``auto`` (the
    choice re-decided on each episode's support, choose_on_supports), the baselines and the ceiling,
    all on the same episodes. Returns (results, {K: {candidate key: episodes whose support chose it}})."""
    results, picks = {}, {}
    n_way = len(np.unique(target_labels))
    smallest = int(np.min(np.bincount(target_labels)[np.unique(target_labels)]))
    pixels, initial = baselines
    for k, choice in choices.items():
        n_query = min(15, smallest - k)
        if n_query < 1:
            print(f"skipping {k}-shot: a target class has only {smallest} images")
            continue
        methods = {mode: {"mode": mode, "whiten": choice.whiten} for mode in selection.MODES}
        chosen, picks[k] = vectors[choice.features], Counter()
        results[f"{k}-shot"] = evaluate_few_shot(
            chosen.train, train_labels, chosen.target, target_labels, n_way, k, methods, n_episodes=params["episodes"],
            n_query=n_query, seed=params["seed"], baselines={"pixels": pixels, "initial_encoder": initial[choice.features]},
            scorers={"auto": partial(auto_accuracies, params, vectors, train_labels, target_labels, choice, picks[k])})
    return results, picks


def transfer_split(params, target_labels):
    """(support, calibration, report) indices into the target images: K = max(shots) labelled images
    per target class for the support, and the rest cut at random (seed) into halves: one to calibrate
    the saved predictor, the other to report on (never both)."""
    rng = np.random.default_rng(params["seed"])
    k = max(params["shots"])
    support = np.concatenate([rng.permutation(np.flatnonzero(target_labels == c))[:k]
                              for c in np.unique(target_labels)])
    held_out = rng.permutation(np.setdiff1d(np.arange(len(target_labels)), support))
    return support, np.sort(held_out[:len(held_out) // 2]), np.sort(held_out[len(held_out) // 2:])


def fit_saved_transfer(vectors, train_labels, target_labels, choice, split):
    """The transfer classifier saved with the predictor, fitted with ``choice`` on the support of
    ``split`` (transfer_split). Returns (classifier, accuracy on the report part)."""
    support, _, report = split
    classifier = fit_transfer(vectors.train, train_labels, vectors.target[support], target_labels[support],
                              **choice.kwargs)
    accuracy = classifier.score(vectors.target[report], target_labels[report]) if len(report) else float("nan")
    return classifier, accuracy


def choice_line(choice):
    """The stage line of a selection.TransferChoice: its features, mode and shrinkage, and how it was chosen."""
    how = "fallback rule: the source cannot form episodes" if choice.fallback else \
        f"best of {len(choice.scores)} candidates on {choice.n_episodes} {choice.episodes.replace('_', '-')} episodes"
    if choice.support_folds:
        how += f", then of {len(choice.support_scores)} by leave-one-out on the support ({choice.support_folds} folds)"
    return f"{choice.features} features, {selection.candidate_name(choice.mode, choice.whiten)} ({how})"


def save_transfer_predictor(params, data, chosen, train_labels, target_labels, choice, split, model_dir):
    """The transfer predictor of fit_saved_transfer (the support as its gallery), calibrated on the
    calibration part of ``split`` (transfer_split) and saved with ``choice`` in
    ``model_dir/predictor_transfer``; draws the transfer map. ``chosen``: the TransferVectors of the
    choice. Returns (accuracy, calibration report on the report part)."""
    names = data.names
    support, held, report = split
    classifier, accuracy = fit_saved_transfer(chosen, train_labels, target_labels, choice, split)
    predictor = Predictor(chosen.model, [names[c] for c in classifier.classes_], classifier)
    predictor.add_gallery_embeddings(chosen.target[support], [names[c] for c in target_labels[support]],
                                     image_ids(data.target.splits)[support])
    calibration = calibration_report(
        predictor, names, (chosen.target[held], target_labels[held]), (chosen.target[report], target_labels[report]),
        os.path.join(model_dir, "plots", "reliability_transfer.png"))
    folder = os.path.join(model_dir, "predictor_transfer")
    predictor.save(folder)
    write_json(os.path.join(folder, "selection.json"), choice.as_dict())
    plots.plot_embedding_transfer(
        os.path.join(model_dir, "plots", "transfer_map.png"), (chosen.train, [names[c] for c in train_labels]),
        (chosen.target, [names[c] for c in target_labels]),
        (classifier.transform(chosen.target), [names[c] for c in target_labels]),
        source_after=classifier.transform_source(chosen.train), seed=params["seed"], method=params["plot_method"],
        max_points=1000)
    return accuracy, calibration


@dataclass
class TransferResult:
    """What the transfer stage hands on: the few-shot ``episodes`` ({"K-shot": {method: summary}}), the
    ``choices`` ({"K-shot": the source-episode selection.TransferChoice.as_dict() with "support_picks":
    {candidate: episodes whose support chose it}}), the saved predictor's ``accuracy`` on
    the report part of the target and its ``calibration`` report, the ``target_labels``, and the
    ``support`` rows (indices into the target images) the saved predictor was fitted on."""
    episodes: dict
    choices: dict
    accuracy: float
    calibration: dict
    target_labels: np.ndarray
    support: np.ndarray


def run_transfer(params, encoder, data, model_dir, encoder_vectors, restart=False):
    """The transfer stage on ``data`` (PreparedData with a target): features and mode chosen on the
    source (or on held-out source classes, see choose_on_held_out_classes) and re-decided on each
    support (choose_on_supports), episodes with baselines, the saved transfer predictor;
    ``encoder_vectors`` as in embed_for_transfer. Returns a TransferResult."""
    vectors, train_labels, held_out_labels, target_labels, halved = embed_for_transfer(
        params, encoder, data, encoder_vectors)
    n_way = len(np.unique(target_labels))
    choices = None
    if data.target.new_classes and params["transfer_selection"] == "held_out_classes":
        choices = choose_on_held_out_classes(params, data, model_dir, restart, n_way)
    if choices is None:
        choices = {k: choose_transfer(params, vectors, train_labels, held_out_labels, halved,
                                      data.target.new_classes, n_way, k) for k in params["shots"]}
    for k, choice in choices.items():
        stage(f"{k}-shot transfer: {choice_line(choice)}")
    baselines = baseline_vectors(params, data, [c.features for c in choices.values()])
    episodes, picks = evaluate_transfer(params, vectors, train_labels, target_labels, choices, baselines)
    split = transfer_split(params, target_labels)
    saved_choice = choose_on_supports(params, vectors, train_labels, target_labels, choices[max(params["shots"])],
                                      [split[0]])[0]
    stage(f"saved transfer predictor: {choice_line(saved_choice)}")
    accuracy, calibration = save_transfer_predictor(
        params, data, vectors[saved_choice.features], train_labels, target_labels, saved_choice, split, model_dir)
    described = {f"{k}-shot": {**c.as_dict(), "support_picks": dict(picks.get(k, Counter()).most_common())}
                 for k, c in choices.items()}
    return TransferResult(episodes, described, accuracy, calibration, target_labels, split[0])
