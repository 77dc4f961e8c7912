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
import contextlib
import copy
import os
from dataclasses import dataclass

import keras
import numpy as np

from triplet_keras import domain_shift, metrics, plots, selection
from triplet_keras.callbacks import (
    CollapseMonitor,
    EpochTensorBoard,
    NaNGuard,
    RemineCallback,
    TrainingState,
    ValidationRetrieval,
)
from triplet_keras.checkpoints import (
    RESUMABLE_KEYS,
    check_model_dir,
    load_checkpoint,
    read_state,
    remove_temporary_files,
    training_fingerprint,
    write_state_copies,
)
from triplet_keras.datasets import DatasetError, load_dataset
from triplet_keras.distribution import GlobalBatchLoss, data_parallel, replica_count
from triplet_keras.evaluation import BASELINES, evaluate_few_shot
from triplet_keras.export import export_embeddings, write_json
from triplet_keras.generators import PKBatchGenerator, TripletGenerator
from triplet_keras.losses import OnlineTripletLoss, TripletMarginLoss
from triplet_keras.mining import mine_triplets
from triplet_keras.pseudo_classes import with_pseudo_classes
from triplet_keras.models import (
    build_augmentation,
    build_encoder,
    build_merge_model,
    build_online_model,
    check_shift_average,
    embed_images,
    feature_encoder,
    TRANSFER_FEATURES,
)
from triplet_keras.params import ONLINE_STRATEGIES
from triplet_keras.predict import Predictor
from triplet_keras.stages import PipelineError, stage, start_clock
from triplet_keras.transfer import NearestMeanClassifier, fit_transfer

# What tests, benchmarks and docs import from here, including names that now live in stages, checkpoints
# and callbacks.
__all__ = ["PipelineError", "RESUMABLE_KEYS", "TrainingState", "calibration_report", "embed_splits", "load_checkpoint",
           "prepare_data", "read_state", "remove_temporary_files", "run", "train", "training_fingerprint",
           "transfer_split", "write_state_copies"]

# The widest transfer features "auto" tries: whitening them takes a d x d float64 matrix (32 MB).
MAX_AUTO_WIDTH = 2048


# ----------------------------------------------------------------------------------------------- data
def class_indices(class_names, chosen):
    """Indices of ``chosen`` classes given by name or by index; PipelineError for unknown ones."""
    indices = []
    for item in chosen:
        if str(item) in class_names:
            indices.append(class_names.index(str(item)))
        elif isinstance(item, int) and 0 <= item < len(class_names):
            indices.append(item)
        else:
            raise PipelineError(f"source class {item!r} is not one of {class_names}")
    return sorted(set(indices))


def select_classes(split, classes):
    """The rows of ``split`` whose label is in ``classes``."""
    return split.subset(np.flatnonzero(np.isin(split.labels, classes)))


def relabel(split, labels):
    """A shallow copy of ``split`` with other labels (same images)."""
    relabelled = copy.copy(split)
    relabelled.labels = np.asarray(labels, np.int64)
    return relabelled


def classes_with_pairs(split):
    """Number of classes in ``split`` with at least two images."""
    return int(np.sum(np.bincount(split.labels) >= 2)) if len(split) else 0


def has_pairs(split):
    """Whether ``split`` can give triplets: two classes with at least two images each."""
    return classes_with_pairs(split) >= 2


def check_trainable(split, name):
    """PipelineError unless ``split`` can give triplets."""
    if not has_pairs(split):
        raise PipelineError(f"the {name} split has {classes_with_pairs(split)} classes with two or more images; "
                            "triplets need at least two such classes")


def prepare_data(params):
    """Source splits, class names, and the transfer target (or None), all checked before training."""
    whiten = params["transfer_whiten"]
    if whiten not in (None, "auto") and not 0.0 <= whiten <= 1.0:
        raise PipelineError(f"transfer_whiten must be null, \"auto\" or a shrinkage between 0 and 1, got {whiten}")
    try:
        data = load_dataset(params["dataset"], image_size=params["image_size"],
                            validation_fraction=params["validation_fraction"],
                            test_fraction=params["test_fraction"], seed=params["seed"], archive=params["archive"],
                            cache_bytes=params["cache_mb"] * 2**20, max_per_class=params["max_per_class"])
    except (DatasetError, FileNotFoundError) as error:
        raise PipelineError(str(error)) from error
    try:
        check_shift_average(params["transfer_shift_average"], data.train.image_shape)
    except ValueError as error:
        raise PipelineError(f"transfer_shift_average: {error}") from error
    names = list(data.class_names)
    source_classes = list(range(len(names)))
    target = None
    if params["source_classes"] is not None:
        source_classes = class_indices(names, params["source_classes"])
        target_classes = [c for c in range(len(names)) if c not in source_classes]
        if not target_classes:
            raise PipelineError("source_classes lists every class; leave some for the transfer target")
        splits = [select_classes(s, target_classes) for s in (data.train, data.validation, data.test)]
        target = {"regime": "new classes", "splits": [s for s in splits if len(s)], "mapping": None}
    elif params["target_dataset"] is not None:
        try:
            other = load_dataset(params["target_dataset"], image_size=data.train.image_shape[:2],
                                 validation_fraction=0.0, test_fraction=0.0, seed=params["seed"],
                                 cache_bytes=params["cache_mb"] * 2**20)
        except (DatasetError, FileNotFoundError) as error:
            raise PipelineError(f"target dataset: {error}") from error
        unknown = sorted(set(other.class_names) - set(names))
        if unknown:
            raise PipelineError(f"target dataset classes {unknown} are not source classes {names}")
        remap = np.array([names.index(n) for n in other.class_names])
        splits = [relabel(s, remap[s.labels]) for s in (other.train, other.validation, other.test) if len(s)]
        target = {"regime": "new domain", "splits": splits, "mapping": None}
    elif params["target_transform"] is not None:
        styled = domain_shift.apply_to_split(params["target_transform"], data.test, seed=params["seed"])
        target = {"regime": f"new domain ({params['target_transform']})", "splits": [styled], "mapping": None}
    train, validation, test = (select_classes(s, source_classes) for s in (data.train, data.validation, data.test))
    check_trainable(train, "training")
    if not len(test):
        raise PipelineError("the test split is empty: raise test_fraction (the run is scored on the test images)")
    if params["pseudo_classes"] and train.image_shape[0] != train.image_shape[1]:
        raise PipelineError(f"pseudo_classes need square images, got {train.image_shape[:2]}; "
                            "set image_size to a square such as [224, 224]")
    return {"names": names, "source_classes": source_classes, "train": train, "validation": validation,
            "test": test, "target": target}


# ------------------------------------------------------------------------------------------- training

def build_training_model(params, image_shape):
    """(training model, encoder), compiled for the configured strategy."""
    weights = None if str(params["weights"]).lower() == "none" else params["weights"]
    encoder = build_encoder(params["backbone"], weights, image_shape, params["embedding_dim"],
                            params["freeze_layers"], params["backbone_size"])
    augmentation = None
    if params["augment_flip"] or params["augment_crop"]:
        augmentation = build_augmentation(params["augment_flip"], params["augment_crop"], seed=params["seed"])
    optimizer = keras.optimizers.Adam(params["learning_rate"])
    if params["strategy"] in ONLINE_STRATEGIES:
        model = build_online_model(encoder, augmentation)
        loss = OnlineTripletLoss(params["strategy"], params["margin"], params["squared"])
        if params["distribute"]:
            loss = GlobalBatchLoss(loss)  # mines over the global batch under tf.distribute too
    else:
        model = build_merge_model(encoder, augmentation)
        loss = TripletMarginLoss(params["margin"], params["squared"])
    model.compile(optimizer=optimizer, loss=loss)
    return model, encoder


def training_data(params, data, encoder, initial_epoch=0):
    """(train PyDataset, validation PyDataset or None, extra callbacks) for the strategy; a run resumed
    at ``initial_epoch`` gets the batches and mining seed that epoch would have had."""
    train, validation = data["train"], data["validation"]
    # Keras prefetches batches on threads only for workers > 1; the queue is per epoch, so it starts
    # after RemineCallback has handed over the epoch's triplets.
    loader = {"workers": max(1, params["loader_workers"])}
    if params["pseudo_classes"]:
        train = with_pseudo_classes(train)
    if params["strategy"] in ONLINE_STRATEGIES:
        k = params["samples_per_class"]
        p = max(2, params["batch_size"] // k)
        validation_data = PKBatchGenerator(validation, p, k, seed=0, **loader) if has_pairs(validation) else None
        return (PKBatchGenerator(train, p, k, seed=params["seed"], initial_epoch=initial_epoch, **loader),
                validation_data, [])
    mine = lambda split, strategy, seed: mine_triplets(  # noqa: E731
        embed_images(encoder, split, description=f"embedding {len(split)} images"), split.labels, strategy,
        params["margin"], params["triplets_per_anchor"], seed=seed, squared=params["squared"])
    # RemineCallback mines with seed + epoch + 1 after each epoch: the same seed on resuming.
    generator = TripletGenerator(train, mine(train, params["strategy"], params["seed"] + initial_epoch),
                                 params["batch_size"], seed=params["seed"], initial_epoch=initial_epoch, **loader)
    remine = RemineCallback(generator, encoder, params["remine_every"], params["strategy"], params["margin"],
                            seed=params["seed"], triplets_per_anchor=params["triplets_per_anchor"],
                            squared=params["squared"])
    validation_data = None
    if has_pairs(validation):
        validation_data = TripletGenerator(validation, mine(validation, "random", params["seed"]),
                                           params["batch_size"], shuffle=False, **loader)
    return generator, validation_data, [remine]


def train(params, data, model_dir, restart):
    """Train (or resume) and return (best encoder, history dict)."""
    state = read_state(model_dir, params, restart)
    keras.utils.set_random_seed(params["seed"])
    with data_parallel() if params["distribute"] else contextlib.nullcontext():
        devices = replica_count()
        if params["distribute"]:
            stage(f"data-parallel training over {devices} devices")
        if state is None:
            model, encoder = build_training_model(params, data["train"].image_shape)
        else:
            stage(f"resuming from {os.path.join(model_dir, 'last.keras')} after epoch {state['epoch'] + 1}")
            model = load_checkpoint(os.path.join(model_dir, "last.keras"), compile=True)
            write_state_copies(model_dir, state)  # a kill may have left them an epoch behind
            encoder = model.get_layer("encoder")
    initial_epoch = 0 if state is None else state["epoch"] + 1
    if initial_epoch < params["epochs"]:
        stage(f"training {params['backbone']} with {params['strategy']} triplets, epochs "
              f"{initial_epoch + 1}..{params['epochs']}")
        train_data, validation_data, callbacks = training_data(params, data, encoder, initial_epoch)
        for batches in (train_data, validation_data):
            if batches is not None and batches.batch_size % devices:
                raise PipelineError(f"batches of {batches.batch_size} do not divide over {devices} devices: "
                                    f"make batch_size (P x K for the online losses) a multiple of {devices}")
        monitor = "val_loss" if validation_data is not None else "loss"
        if has_pairs(data["validation"]):
            callbacks.append(ValidationRetrieval(encoder, data["validation"]))
        callbacks += [
            NaNGuard(),  # before TrainingState: a diverged epoch is never saved
            CollapseMonitor(encoder, data["train"], params["margin"], params["squared"],
                            params["collapse_patience"], seed=params["seed"]),
            TrainingState(model_dir, params, monitor, state),
            EpochTensorBoard(os.path.join(model_dir, "logs")),
        ]
        # The generators order each epoch from (seed, epoch) themselves; Keras' own shuffle of the batch
        # order draws from the global RNG, which a resumed run would not continue where the killed one was.
        model.fit(train_data, validation_data=validation_data, epochs=params["epochs"], shuffle=False,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=2)
    best = load_checkpoint(os.path.join(model_dir, "best.keras"))
    return best.get_layer("encoder"), read_state(model_dir, params, restart=False)["history"]


# ----------------------------------------------------------------------------------------- evaluation
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


def evaluate_source(encoder, data):
    """Nearest-mean classification of the test split and retrieval/clustering scores."""
    train_emb = embed_images(encoder, data["train"], description="embedding train")
    test_emb = embed_images(encoder, data["test"], description="embedding test")
    classifier = NearestMeanClassifier().fit(train_emb, data["train"].labels)
    predicted = classifier.predict(test_emb)
    scores = {"test_accuracy": metrics.accuracy(data["test"].labels, predicted)}
    scores.update({f"test_{k}": v for k, v in metrics.retrieval_scores(test_emb, data["test"].labels).items()})
    scores.update({f"test_{k}": v for k, v in metrics.clustering_scores(test_emb, data["test"].labels).items()})
    return scores, classifier, train_emb, test_emb, predicted


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


def embed_for_transfer(params, encoder, data, target_splits, new_classes, encoder_vectors):
    """({kind: TransferVectors}, train labels, held-out labels, target labels). The held-out rows are
    the source validation split, or half of each train class when there is none (selection.halve_per_class);
    the train rows are every train image either way (the selection uses the rest when halving).
    ``encoder_vectors``: (train, target) as ``encoder`` itself embeds them, reused for the "embedding" kind."""
    train_labels = data["train"].labels
    target_labels = np.concatenate([split.labels for split in target_splits])
    halved = None if len(data["validation"]) else selection.halve_per_class(train_labels, params["seed"])
    held_out_labels = train_labels[halved] if halved is not None else data["validation"].labels
    vectors = {}
    for kind, model in transfer_feature_models(params, encoder, new_classes).items():
        if model is encoder:
            train, target = encoder_vectors
        else:
            train = embed_images(model, data["train"], description=f"{kind} features of train")
            target = embed_splits(model, target_splits)[0]
        held_out = train[halved] if halved is not None else embed_images(
            model, data["validation"], description=f"{kind} features of validation")
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


def baseline_vectors(params, data, target_splits, choice_features):
    """(target images flattened as uint8: the pixels baseline, {kind: target features of the encoder
    before fine-tuning}: the initial_encoder baseline), the weights training started from (same seed)."""
    pixels = np.concatenate([s.load(np.arange(len(s))).reshape(len(s), -1) for s in target_splits])
    keras.utils.set_random_seed(params["seed"])
    initial = build_training_model(params, data["train"].image_shape)[1]
    initial_models = transfer_feature_models(params, initial)
    features = {kind: embed_splits(initial_models[kind], target_splits)[0] for kind in set(choice_features)}
    return pixels, features


def evaluate_transfer(params, vectors, train_labels, target_labels, choices, baselines):
    """Few-shot episodes for each K: every mode on the chosen features and shrinkage, ``auto`` (the
    choice), the baselines and the ceiling, all on the same episodes."""
    results = {}
    n_way = len(np.unique(target_labels))
    smallest = int(np.min(np.bincount(target_labels)[np.unique(target_labels)]))
    pixels, initial = baselines
    for k, choice in choices.items():
        n_query = min(15, smallest - k)
        if n_query < 1:
            print(f"skipping {k}-shot: a target class has only {smallest} images")
            continue
        methods = {mode: {"mode": mode, "whiten": choice.whiten} for mode in selection.MODES}
        methods["auto"] = choice.kwargs
        chosen = vectors[choice.features]
        results[f"{k}-shot"] = evaluate_few_shot(
            chosen.train, train_labels, chosen.target, target_labels, n_way, k, methods, n_episodes=params["episodes"],
            n_query=n_query, seed=params["seed"],
            baselines={"pixels": pixels, "initial_encoder": initial[choice.features]})
    return results


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


def fit_saved_transfer(params, vectors, train_labels, target_labels, choice):
    """The transfer classifier saved with the predictor, fitted on the support of transfer_split with
    the choice for K = max(shots). Returns (classifier, accuracy on the report part, and the support,
    calibration and report indices)."""
    support, calibration, report = transfer_split(params, target_labels)
    classifier = fit_transfer(vectors.train, train_labels, vectors.target[support], target_labels[support],
                              **choice.kwargs)
    accuracy = classifier.score(vectors.target[report], target_labels[report]) if len(report) else float("nan")
    return classifier, accuracy, support, calibration, report


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


def fine_tuning_verdict(transfer):
    """One line per K: whether ``auto`` beat both baselines."""
    lines = []
    for shots, rows in transfer.items():
        auto, best = rows["auto"]["mean"], max(BASELINES, key=lambda name: rows[name]["mean"])
        verdict = "beat both baselines" if auto > rows[best]["mean"] else f"did NOT beat the {best} baseline"
        lines.append(f"{shots}: fine-tuning + transfer {verdict} ({auto:.3f} vs pixels {rows['pixels']['mean']:.3f}, "
                     f"initial_encoder {rows['initial_encoder']['mean']:.3f})")
    return lines


def run_transfer(params, encoder, data, model_dir, names, encoder_vectors):
    """The transfer stage: features and mode chosen on the source, episodes with baselines, the saved
    transfer predictor (calibrated on held-out target images) and its plot; ``encoder_vectors`` as in
    embed_for_transfer. Returns (transfer
    results, choices, saved accuracy, calibration report, target labels, support rows)."""
    target = data["target"]
    new_classes = target["regime"] == "new classes"
    vectors, train_labels, held_out_labels, target_labels, halved = embed_for_transfer(
        params, encoder, data, target["splits"], new_classes, encoder_vectors)
    n_way = len(np.unique(target_labels))
    choices = {}
    for k in params["shots"]:
        choices[k] = choose_transfer(params, vectors, train_labels, held_out_labels, halved, new_classes, n_way, k)
        how = "fallback rule: the source cannot form episodes" if choices[k].fallback else \
            f"best of {len(choices[k].scores)} candidates on {choices[k].n_episodes} source episodes"
        stage(f"{k}-shot transfer: {choices[k].features} features, {selection.candidate_name(choices[k].mode, choices[k].whiten)} ({how})")
    baselines = baseline_vectors(params, data, target["splits"], [c.features for c in choices.values()])
    transfer = evaluate_transfer(params, vectors, train_labels, target_labels, choices, baselines)
    saved_choice = choices[max(params["shots"])]
    chosen = vectors[saved_choice.features]
    classifier, accuracy, support, held, report = fit_saved_transfer(
        params, chosen, train_labels, target_labels, saved_choice)
    predictor = Predictor(chosen.model, [names[c] for c in classifier.classes_], classifier)
    predictor.add_gallery_embeddings(chosen.target[support], [names[c] for c in target_labels[support]],
                                     image_ids(target["splits"])[support])
    calibration = calibration_report(
        predictor, names, (chosen.target[held], target_labels[held]), (chosen.target[report], target_labels[report]),
        os.path.join(model_dir, "plots", "reliability_transfer.png"))
    folder = os.path.join(model_dir, "predictor_transfer")
    predictor.save(folder)
    write_json(os.path.join(folder, "selection.json"), saved_choice.as_dict())
    plots.plot_embedding_transfer(
        os.path.join(model_dir, "plots", "transfer_map.png"), (chosen.train, [names[c] for c in train_labels]),
        (chosen.target, [names[c] for c in target_labels]),
        (classifier.transform(chosen.target), [names[c] for c in target_labels]),
        source_after=classifier.transform_source(chosen.train), seed=params["seed"], method=params["plot_method"],
        max_points=1000)
    return (transfer, {f"{k}-shot": c.as_dict() for k, c in choices.items()}, accuracy, calibration, target_labels,
            support)


# --------------------------------------------------------------------------------------------- report
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
