"""The data stage of pipeline.run: the source splits and the transfer target, checked before training."""
import copy
from dataclasses import dataclass

import numpy as np

from triplet_keras.core.per_class import classes_with_at_least
from triplet_keras.data import domain_shift
from triplet_keras.data.datasets import DatasetError, load_dataset
from triplet_keras.models.networks import check_shift_average
from triplet_keras.pipeline.stages import PipelineError


@dataclass
class TargetSpec:
    """The transfer target: its ``regime`` ("new classes", "new domain", or "new domain (<transform>)")
    and its non-empty dataset ``splits``, labelled by indices into the source dataset's class names."""
    regime: str
    splits: list

    @property
    def new_classes(self):
        """Whether the target classes are other than the source classes."""
        return self.regime == "new classes"

    @property
    def labels(self):
        """The labels of every target image, split after split."""
        return np.concatenate([split.labels for split in self.splits])


@dataclass
class PreparedData:
    """What the data stage hands to the others: every class name of the dataset (``names``, which
    labels index), the ``source_classes`` and their train / validation / test splits, and the
    transfer ``target`` (None when the run has none)."""
    names: list
    source_classes: list
    train: object
    validation: object
    test: object
    target: TargetSpec = None


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
    return len(classes_with_at_least(split.labels, 2))


def has_pairs(split):
    """Whether ``split`` can give triplets: two classes with at least two images each."""
    return classes_with_pairs(split) >= 2


def check_trainable(split, name):
    """PipelineError unless ``split`` can give triplets."""
    if not has_pairs(split):
        raise PipelineError(f"the {name} split has {classes_with_pairs(split)} classes with two or more images; "
                            "triplets need at least two such classes")


def prepare_data(config, seed):
    """The data stage of the DataConfig ``config``: PreparedData, with every check of the data made
    before training (check_image_shape: those of the other sections against the images)."""
    try:
        data = load_dataset(config.dataset, image_size=config.image_size,
                            validation_fraction=config.validation_fraction, test_fraction=config.test_fraction,
                            seed=seed, archive=config.archive, cache_bytes=config.cache_mb * 2**20,
                            max_per_class=config.max_per_class)
    except (DatasetError, FileNotFoundError) as error:
        raise PipelineError(str(error)) from error
    names = list(data.class_names)
    source_classes, target = prepare_target(config, seed, data, names)
    train, validation, test = (select_classes(s, source_classes) for s in (data.train, data.validation, data.test))
    check_trainable(train, "training")
    if not len(test):
        raise PipelineError("the test split is empty: raise test_fraction (the run is scored on the test images)")
    return PreparedData(names, source_classes, train, validation, test, target)


def check_image_shape(image_shape, pseudo_classes, shift_average):
    """PipelineError unless images of ``image_shape`` allow ``pseudo_classes`` (TrainingConfig: square
    images) and ``shift_average`` (TransferConfig.transfer_shift_average: shorter than the image)."""
    try:
        check_shift_average(shift_average, image_shape)
    except ValueError as error:
        raise PipelineError(f"transfer_shift_average: {error}") from error
    if pseudo_classes and image_shape[0] != image_shape[1]:
        raise PipelineError(f"pseudo_classes need square images, got {image_shape[:2]}; "
                            "set image_size to a square such as [224, 224]")


def prepare_target(config, seed, data, names):
    """(source class indices, TargetSpec or None) of the loaded dataset ``data``: the classes outside
    ``source_classes``, another dataset with the same class names, or the test split restyled by
    ``target_transform``; the first of these that the DataConfig ``config`` sets."""
    source_classes = list(range(len(names)))
    if config.source_classes is not None:
        source_classes = class_indices(names, config.source_classes)
        target_classes = [c for c in range(len(names)) if c not in source_classes]
        if not target_classes:
            raise PipelineError("source_classes lists every class; leave some for the transfer target")
        splits = [select_classes(s, target_classes) for s in (data.train, data.validation, data.test)]
        return source_classes, TargetSpec("new classes", [s for s in splits if len(s)])
    if config.target_dataset is not None:
        try:
            other = load_dataset(config.target_dataset, image_size=data.train.image_shape[:2],
                                 validation_fraction=0.0, test_fraction=0.0, seed=seed,
                                 cache_bytes=config.cache_mb * 2**20)
        except (DatasetError, FileNotFoundError) as error:
            raise PipelineError(f"target dataset: {error}") from error
        unknown = sorted(set(other.class_names) - set(names))
        if unknown:
            raise PipelineError(f"target dataset classes {unknown} are not source classes {names}")
        remap = np.array([names.index(n) for n in other.class_names])
        splits = [relabel(s, remap[s.labels]) for s in (other.train, other.validation, other.test) if len(s)]
        return source_classes, TargetSpec("new domain", splits)
    if config.target_transform is not None:
        styled = domain_shift.apply_to_split(config.target_transform, data.test, seed=seed)
        return source_classes, TargetSpec(f"new domain ({config.target_transform})", [styled])
    return source_classes, None
