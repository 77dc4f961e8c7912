"""The data stage of pipeline.run: the source splits and the transfer target, checked before training."""
import copy

import numpy as np

from triplet_keras import domain_shift
from triplet_keras.datasets import DatasetError, load_dataset
from triplet_keras.models import check_shift_average
from triplet_keras.stages import PipelineError


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
