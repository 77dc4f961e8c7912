"""The transfer stage of pipeline.run: the candidates' features, the evidence that scores them, few-shot
episodes on the target with the baselines, and the saved, calibrated transfer predictor.

The candidates (triplet_keras.transfer.choice) come from three networks: the fine-tuned encoder, the same
network before fine-tuning (``initial``: the weights training started from) and the pixels. The
evidence never comes from classes the scored features trained on: for new classes a fold encoder is
trained like the main one without a fold of source classes (choice.held_out_fold), and every network's
candidates are scored on episodes with that fold as the new classes (the fine-tuned network by the fold
encoder's features, the others by their own), when the fold holds enough classes (MIN_EVIDENCE_WAYS;
else no evidence: choice's fallback); for a new domain the source validation split stands in for the
target. The rows of each K: every mode on the fine-tuned features the
evidence ranks best, the two baselines, ``auto`` (the search over every candidate that needs no
unlabelled images, per episode), ``semi_supervised`` (the search with each episode's queries as the
unlabelled pool too) and the ceiling.
"""
import os
from collections import Counter
from dataclasses import dataclass, replace

import keras
import numpy as np

from triplet_keras.core.export import write_json
from triplet_keras.core.per_class import class_counts, shuffled_rows_per_class
from triplet_keras.core.vocabulary import TRANSFER_FEATURES
from triplet_keras.data.pseudo_classes import N_VARIANTS, with_pseudo_classes
from triplet_keras.models.networks import embed_images, feature_encoder, joined_features, pixel_features
from triplet_keras.pipeline import plots
from triplet_keras.pipeline.prepared_data import relabel, select_classes
from triplet_keras.pipeline.source_evaluation import calibration_report, image_ids
from triplet_keras.pipeline.stages import stage
from triplet_keras.pipeline.training import build_training_model, train
from triplet_keras.serving.predict import Predictor
from triplet_keras.transfer import TransferClassifier
from triplet_keras.transfer.choice import (
    SEARCHED_MODES,
    SHRINKAGES,
    EpisodeEvidence,
    TransferSearch,
    candidates,
    default_candidate,
    halve_per_class,
    held_out_fold,
)
from triplet_keras.transfer.evaluation import EstimatorMethod, evaluate_few_shot, support_centered

# The widest transfer features "auto" tries, but for the pixels, which are always a candidate.
MAX_AUTO_WIDTH = 2048
# Held-out-class evidence needs episodes of this many ways (or the target's, when fewer): the usual
# 5-way episode; a 2-class fold's 2-way episodes ranked the candidates against the target's order.
MIN_EVIDENCE_WAYS = 5


def transfer_feature_models(transfer, encoder, new_classes=False):
    """{kind: model} of the transfer features to choose from: ``transfer_features``, or with "auto" every
    kind of vocabulary.TRANSFER_FEATURES whose vectors are at most MAX_AUTO_WIDTH wide, but for
    ``new_classes`` not the embedding: its head is trained to separate exactly the source classes."""
    kinds = TRANSFER_FEATURES if transfer.transfer_features == "auto" else (transfer.transfer_features,)
    if transfer.transfer_features == "auto" and new_classes:
        kinds = tuple(kind for kind in kinds if kind != "embedding")
    models = {kind: feature_encoder(encoder, kind, transfer.transfer_shift_average) for kind in kinds}
    return {kind: model for kind, model in models.items()
            if transfer.transfer_features != "auto" or model.output_shape[-1] <= MAX_AUTO_WIDTH}


def initial_encoder(config, image_shape):
    """The encoder before fine-tuning: built as the training stage builds it, right after seeding Keras
    with the run's seed as training does, so with the weights training started from."""
    keras.utils.set_random_seed(config.seed)
    return build_training_model(config.model, config.training, config.seed, image_shape)[1]


def initial_kind(kinds):
    """The one kind of features the initial network enters the choice with, and its baseline uses:
    ``backbone`` (the pooled features a practitioner keeps), else the first of ``kinds``."""
    return "backbone" if "backbone" in kinds else next(iter(kinds))


def network_models(config, encoder, data):
    """{(network, kind): model} of every candidate space: the fine-tuned ``encoder`` with every kind of
    transfer_feature_models, the initial one with initial_kind, and the pixels."""
    new_classes, image_shape = data.target.new_classes, data.train.image_shape
    fine_tuned = transfer_feature_models(config.transfer, encoder, new_classes)
    models = {("fine_tuned", kind): model for kind, model in fine_tuned.items()}
    initial = transfer_feature_models(config.transfer, initial_encoder(config, image_shape), new_classes)
    kind = initial_kind(initial)
    models[("initial", kind)] = initial[kind]
    models[("pixels", "pixels")] = pixel_features(image_shape)
    return models


@dataclass
class SpaceVectors:
    """One candidate space: its ``model`` and the vectors of the source's ``train`` and ``validation``
    splits and of the ``target`` images."""
    model: keras.Model
    train: np.ndarray
    validation: np.ndarray
    target: np.ndarray


def candidate_vectors(spaces, candidate):
    """The SpaceVectors ``candidate`` classifies: its space's, or for a Mixture its members' side by side
    under one model (joined_features)."""
    parts = [spaces[part.space] for _, part in candidate.weighted_parts]
    if len(parts) == 1:
        return parts[0]
    names = ["_".join(part.space) for _, part in candidate.weighted_parts]
    return SpaceVectors(joined_features([v.model for v in parts], names),
                        *(np.hstack([getattr(v, split) for v in parts]) for split in ("train", "validation", "target")))


def embed_all(model, splits, name):
    """Concatenated vectors of ``splits`` (empty ones allowed) by ``model``."""
    parts = [embed_images(model, split, description=f"{name} of {len(split)} images") for split in splits if len(split)]
    return np.concatenate(parts) if parts else np.zeros((0, model.output_shape[-1]), np.float32)


def embed_spaces(models, data, encoder, encoder_vectors):
    """{(network, kind): SpaceVectors}; ``encoder_vectors``: (train, target) as ``encoder`` embeds them."""
    spaces = {}
    for key, model in models.items():
        name = f"{key[0]} {key[1]} features"
        if model is encoder:
            train, target = encoder_vectors
        else:
            train, target = embed_all(model, [data.train], name), embed_all(model, data.target.splits, name)
        spaces[key] = SpaceVectors(model, train, embed_all(model, [data.validation], name), target)
    return spaces


def held_out_class_evidence(config, data, spaces, model_dir, restart, n_way):
    """EpisodeEvidence for new classes: a fold encoder trained like the main one (into
    ``model_dir``/selection_encoder, resumable) without the source classes of choice.held_out_fold, and
    episodes with that fold (train and validation images; with pseudo_classes each of their symmetries a
    class of its own) as the new classes, the other train images as the source; the fine-tuned
    network's candidates are scored on the fold encoder's features, the others on their own. None when
    the fold holds fewer stand-in classes than min(n_way, MIN_EVIDENCE_WAYS): on Fashion-MNIST's five
    source classes, 2-way evidence ranked the candidates against the target's order
    (benchmarks/RESULTS.md)."""
    classes = np.unique(data.train.labels)
    pseudo_classes = config.training.pseudo_classes
    fold = held_out_fold(classes, n_way, config.seed)
    stand_in_classes = len(fold) * (N_VARIANTS if pseudo_classes else 1)
    if stand_in_classes < min(n_way, MIN_EVIDENCE_WAYS):
        stage(f"too few source classes to hold out ({stand_in_classes} stand-in classes): no evidence")
        return None
    kept = np.setdiff1d(classes, fold)
    stage(f"training a fold encoder without the source classes {[data.names[c] for c in fold]} (evidence for the choice)")
    fold_data = replace(data, train=select_classes(data.train, kept), validation=select_classes(data.validation, kept),
                        test=select_classes(data.test, kept), target=None)
    fold_encoder = train(config, fold_data, os.path.join(model_dir, "selection_encoder"), restart).encoder
    unseen = [split for split in (select_classes(data.train, fold), select_classes(data.validation, fold)) if len(split)]
    if pseudo_classes:  # the fold's symmetries as classes of their own: more ways, as in training
        unseen = [relabel(with_pseudo_classes(split), np.concatenate(
            [split.labels + i * len(data.names) for i in range(N_VARIANTS)])) for split in unseen]
    fold_models = transfer_feature_models(config.transfer, fold_encoder, new_classes=True)
    source_rows, stand_ins = np.isin(data.train.labels, kept), {}
    for (network, kind), vectors in spaces.items():
        if network == "fine_tuned":
            model, name = fold_models[kind], f"fold encoder {kind} features"
            stand_ins[(network, kind)] = embed_all(model, [fold_data.train], name), embed_all(model, unseen, name)
        else:
            stand_ins[(network, kind)] = vectors.train[source_rows], embed_all(
                vectors.model, unseen, f"{network} {kind} features")
    unseen_labels = np.concatenate([split.labels for split in unseen])
    symmetries = " and their symmetries" if pseudo_classes else ""
    return EpisodeEvidence(stand_ins, data.train.labels[source_rows], unseen_labels, True, config.transfer.episodes,
                           config.seed, f"source classes {[data.names[c] for c in fold]}{symmetries}, "
                           "held out of training")


def validation_evidence(transfer, seed, data, spaces):
    """EpisodeEvidence for a new domain: the source validation split stands in for the target, the train
    split is the source (without a validation split, half of each train class stands in)."""
    if len(data.validation):
        stand_ins = {key: (v.train, v.validation) for key, v in spaces.items()}
        return EpisodeEvidence(stand_ins, data.train.labels, data.validation.labels, False, transfer.episodes,
                               seed, "the source validation split")
    halved = halve_per_class(data.train.labels, seed)
    stand_ins = {key: (v.train[~halved], v.train[halved]) for key, v in spaces.items()}
    return EpisodeEvidence(stand_ins, data.train.labels[~halved], data.train.labels[halved], False,
                           transfer.episodes, seed, "half of each train class (no validation split)")


def open_candidates(transfer, spaces, unlabeled=(False, True)):
    """choice.candidates over ``spaces``, with the modes and shrinkages the TransferConfig ``transfer``'s
    transfer_mode / transfer_whiten leave open."""
    modes = SEARCHED_MODES if transfer.transfer_mode == "auto" else (transfer.transfer_mode,)
    shrinkages = SHRINKAGES if transfer.transfer_whiten == "auto" else (transfer.transfer_whiten,)
    widths = {key: v.train.shape[1] for key, v in spaces.items()}
    return candidates(widths, modes, shrinkages, unlabeled)


class EpisodeSearches:
    """``auto`` and ``semi_supervised`` as episode methods: a TransferSearch fitted on each episode's
    support, over the candidates without a pool (auto) or over all of them with the episode's queries as
    the pool (semi_supervised); ``picks`` counts what each chose."""

    def __init__(self, search, labels):
        self.search, self.labels = search, labels
        self.picks = {"auto": Counter(), "semi_supervised": Counter()}

    def method(self, name):
        inductive = [c for c in self.search.candidates if not c.unlabeled]
        search = self.search.with_candidates(self.search.candidates if name == "semi_supervised" else inductive)

        def predict(support, query):
            search.fit(support, self.labels[support], unlabeled=query if name == "semi_supervised" else None)
            self.picks[name][search.best_candidate_.name] += 1
            return search.predict(query)

        return predict


def mode_methods(best, search, target_labels, new_classes):
    """{mode: episode method} for the modes of choice.SEARCHED_MODES on ``best``'s fine-tuned space and shrinkage
    (the vectors whitened once, as the search has them)."""
    vectors = search.labelled_vectors(best.space, new_classes)
    methods = {}
    for mode in SEARCHED_MODES:
        source, source_labels, target = vectors.whitened(None if mode == "none" else best.whiten)[:3]
        methods[mode] = EstimatorMethod(TransferClassifier(mode=mode), target, target_labels,
                                        {"source_emb": source, "source_labels": source_labels})
    return methods


def best_fine_tuned(search, evidence_scores):
    """The fine-tuned candidate without a pool that ``evidence_scores`` rank first (without evidence, the
    one nearest choice's default form): whose features and shrinkage the mode rows use."""
    fine_tuned = [c for c in search.candidates if c.network == "fine_tuned" and not c.unlabeled]
    if not evidence_scores:
        return default_candidate(fine_tuned, pooled=False)
    return max(fine_tuned, key=lambda c: (evidence_scores.get(c, 0.0), -fine_tuned.index(c)))


def evaluate_transfer(transfer, seed, spaces, search, target_labels, new_classes):
    """Few-shot episodes for each K: the modes, the baselines, auto, semi_supervised and the ceiling, all
    on the same episodes. Returns (results, {K: what the evidence and the searches chose})."""
    results, choices = {}, {}
    n_way = len(np.unique(target_labels))
    smallest = int(class_counts(target_labels)[1].min())
    searches = EpisodeSearches(search, target_labels)
    for k in transfer.shots:
        n_query = min(15, smallest - k)
        if n_query < 1:
            print(f"skipping {k}-shot: a target class has only {smallest} images")
            continue
        scores = {} if search.evidence is None else search.evidence.scores(search.candidates, n_way, k)
        best = best_fine_tuned(search, scores)
        methods = mode_methods(best, search, target_labels, new_classes)
        methods["pixels"] = EstimatorMethod(support_centered(), spaces[("pixels", "pixels")].target, target_labels)
        initial = next(v for (network, _), v in spaces.items() if network == "initial")
        methods["initial_encoder"] = EstimatorMethod(support_centered(), initial.target, target_labels)
        methods["auto"] = searches.method("auto")
        methods["semi_supervised"] = searches.method("semi_supervised")
        for counter in searches.picks.values():
            counter.clear()
        stage(f"{k}-shot episodes: {len(methods)} methods on {transfer.episodes} episodes "
              f"(auto and semi_supervised search {len(search.candidates)} candidates on each)")
        results[f"{k}-shot"] = evaluate_few_shot(methods, target_labels, n_way, k, transfer.episodes, n_query,
                                                 seed, ceiling=spaces[best.space].target)
        ranked = sorted(scores, key=scores.get, reverse=True)
        choices[f"{k}-shot"] = {
            "evidence": None if search.evidence is None else search.evidence.description,
            "mode_rows_on": best.name, "best_by_evidence": ranked[0].name if ranked else None,
            "evidence_scores": {c.name: scores[c] for c in ranked},
            **{f"{name}_picks": dict(counter.most_common()) for name, counter in searches.picks.items()}}
    return results, choices


def transfer_split(transfer, seed, target_labels):
    """(support, calibration, report) indices into the target images: K = max(shots) labelled images
    per target class for the support, and the rest cut at random (seed) into halves: one to calibrate
    the saved predictor (and its unlabelled pool), the other to report on (never both)."""
    rng = np.random.default_rng(seed)
    k = max(transfer.shots)
    support = np.concatenate([rows[:k] for rows in shuffled_rows_per_class(target_labels, rng)])
    held_out = rng.permutation(np.setdiff1d(np.arange(len(target_labels)), support))
    return support, np.sort(held_out[:len(held_out) // 2]), np.sort(held_out[len(held_out) // 2:])


def save_transfer_predictor(transfer, seed, data, spaces, search, target_labels, split, model_dir):
    """The search fitted on the support of ``split`` (transfer_split) with its calibration part as the
    unlabelled pool; its best candidate's predictor (the support as its gallery), calibrated on the
    calibration part and saved with the search's record in ``model_dir/predictor_transfer``
    (selection.json); draws the transfer map. Returns (accuracy and calibration report on the report
    part, the search's summary)."""
    names, train_labels = data.names, data.train.labels
    support, held, report = split
    search.fit(support, target_labels[support], unlabeled=held)
    best, classifier = search.best_candidate_, search.best_estimator_
    stage(f"saved transfer predictor: {best.name} (decided by {search.decided_by})")
    vectors = candidate_vectors(spaces, best)
    accuracy = classifier.score(vectors.target[report], target_labels[report]) if len(report) else float("nan")
    predictor = Predictor(vectors.model, [names[c] for c in classifier.classes_], classifier, features_from=best.name)
    predictor.add_gallery_embeddings(vectors.target[support], [names[c] for c in target_labels[support]],
                                     image_ids(data.target.splits)[support])
    calibration = calibration_report(
        predictor, names, (vectors.target[held], target_labels[held]), (vectors.target[report], target_labels[report]),
        os.path.join(model_dir, "plots", "reliability_transfer.png"))
    folder = os.path.join(model_dir, "predictor_transfer")
    predictor.save(folder)
    summary = search.summary()
    write_json(os.path.join(folder, "selection.json"), summary)
    plots.plot_embedding_transfer(
        os.path.join(model_dir, "plots", "transfer_map.png"), (vectors.train, [names[c] for c in train_labels]),
        (vectors.target, [names[c] for c in target_labels]),
        (classifier.transform(vectors.target), [names[c] for c in target_labels]),
        source_after=classifier.transform_source(vectors.train), seed=seed, method=transfer.plot_method,
        max_points=1000)
    return accuracy, calibration, summary


@dataclass
class TransferResult:
    """What the transfer stage hands on: the few-shot ``episodes`` ({"K-shot": {method: summary}}), the
    ``choices`` ({"K-shot": evidence scores and what the searches picked}), the saved predictor's
    ``accuracy`` on the report part of the target, its ``calibration`` report and its ``search``
    (TransferSearch.summary), the ``target_labels``, and the ``support`` rows (indices into the target
    images) the saved predictor was fitted on."""
    episodes: dict
    choices: dict
    accuracy: float
    calibration: dict
    search: dict
    target_labels: np.ndarray
    support: np.ndarray


def run_transfer(config, encoder, data, model_dir, encoder_vectors, restart=False):
    """The transfer stage on ``data`` (PreparedData with a target) with the transfer section and seed of
    ``config`` (config.Config: its model and training sections build the initial encoder and train the
    fold encoder); ``encoder_vectors``: (train, target) as ``encoder`` embeds them. Returns a
    TransferResult."""
    transfer, seed = config.transfer, config.seed
    new_classes, train_labels, target_labels = data.target.new_classes, data.train.labels, data.target.labels
    spaces = embed_spaces(network_models(config, encoder, data), data, encoder, encoder_vectors)
    n_way = len(np.unique(target_labels))
    evidence = (held_out_class_evidence(config, data, spaces, model_dir, restart, n_way) if new_classes
                else validation_evidence(transfer, seed, data, spaces))
    search = TransferSearch({key: (v.train, v.target) for key, v in spaces.items()}, train_labels,
                            open_candidates(transfer, spaces), evidence)
    mixed = ", its scores mixed with the starting network's" if new_classes else ""
    stage(f"choosing among {len(search.candidates)} candidates by "
          + (evidence.description if evidence else f"no evidence: the default form{mixed}")
          + " and, with 2 shots a class or more, leave-one-out on the support"
          + (" for the use of the pool" if new_classes else ""))
    episodes, choices = evaluate_transfer(transfer, seed, spaces, search, target_labels, new_classes)
    split = transfer_split(transfer, seed, target_labels)
    accuracy, calibration, summary = save_transfer_predictor(transfer, seed, data, spaces, search, target_labels,
                                                             split, model_dir)
    return TransferResult(episodes, choices, accuracy, calibration, summary, target_labels, split[0])

