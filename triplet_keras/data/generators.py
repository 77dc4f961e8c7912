"""Keras data pipelines for triplet training.

- :class:`TripletGenerator` feeds the three-input merge model with offline-mined triplets:
  batches ``((anchor_images, positive_images, negative_images), zeros)``.
  :class:`triplet_keras.pipeline.callbacks.RemineCallback` hands it freshly mined triplets every few epochs.
- :class:`PKBatchGenerator` feeds the online losses: each batch holds P classes x K images.

Images come from a dataset split (see :mod:`triplet_keras.data.datasets`) as RGB uint8; the model
casts, augments and preprocesses them. All randomness derives from ``seed`` and the epoch number,
so a run is reproducible whatever the number of data workers.
"""
import keras
import numpy as np

from triplet_keras.core.per_class import classes_with_at_least


class TripletGenerator(keras.utils.PyDataset):
    """Batches of ``batch_size`` triplets (rows of (anchor, positive, negative) indices into
    ``split``), reshuffled every epoch when ``shuffle``; ``initial_epoch`` starts the epoch count
    later (a resumed run sees the order it would have seen). ``pydataset_kwargs`` (workers,
    use_multiprocessing, max_queue_size) go to ``keras.utils.PyDataset``.

    Every batch is full: the last one is topped up from the start of the epoch's order (a triplet
    count that is not a multiple of ``batch_size`` repeats a few triplets). One batch shape means one
    compiled train step, and a batch that always divides over the devices of a data-parallel run.
    Each image appearing in a batch is decoded once, however many triplets use it.
    """

    def __init__(self, split, triplets, batch_size=32, shuffle=True, seed=0, initial_epoch=0, **pydataset_kwargs):
        super().__init__(**pydataset_kwargs)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = initial_epoch
        self.set_triplets(triplets)

    def set_triplets(self, triplets):
        """Use new triplets from the next batch on. Keep their count constant during ``fit``
        (mining the same split does), because Keras fixes the number of steps per epoch."""
        triplets = np.asarray(triplets, np.int64)
        if triplets.ndim != 2 or triplets.shape[1] != 3 or len(triplets) == 0:
            raise ValueError(f"triplets must be a non-empty (n, 3) array, got shape {triplets.shape}")
        if triplets.min() < 0 or triplets.max() >= len(self.split):
            raise ValueError(f"triplet indices must lie in [0, {len(self.split)})")
        self.triplets = triplets
        self._reorder()

    def _reorder(self):
        count = len(self.triplets)
        self.order = np.random.default_rng([self.seed, self.epoch]).permutation(count) if self.shuffle else np.arange(count)

    def __len__(self):
        return -(-len(self.triplets) // self.batch_size)

    def __getitem__(self, index):
        positions = np.arange(index * self.batch_size, (index + 1) * self.batch_size) % len(self.order)
        rows = self.triplets[self.order[positions]]
        unique, inverse = np.unique(rows, return_inverse=True)
        images = self.split.load(unique)[inverse.reshape(rows.shape)]
        return (images[:, 0], images[:, 1], images[:, 2]), np.zeros(len(rows), np.float32)

    def on_epoch_end(self):
        self.epoch += 1
        self._reorder()


class PKBatchGenerator(keras.utils.PyDataset):
    """Class-balanced batches ``(images, int32 labels)`` for the online losses: P =
    ``classes_per_batch`` distinct classes (at most the number of classes with two or more
    images) times K = ``samples_per_class`` images each, drawn without replacement from classes
    with at least K images and with replacement from smaller ones. Classes with a single image
    are never drawn (they give no positive). An epoch has ``steps_per_epoch`` batches, by default
    about one pass over the split: len(split) // (P * K), at least 1. Batches depend on (``seed``,
    epoch, index); ``initial_epoch`` starts the epoch count later, for a resumed run.
    """

    def __init__(self, split, classes_per_batch=8, samples_per_class=4, steps_per_epoch=None, seed=0,
                 initial_epoch=0, **pydataset_kwargs):
        super().__init__(**pydataset_kwargs)
        self.members = [np.flatnonzero(split.labels == label) for label in classes_with_at_least(split.labels, 2)]
        if len(self.members) < 2 or min(classes_per_batch, samples_per_class) < 1:
            raise ValueError("need at least two classes with two or more images, and P, K >= 1")
        self.split = split
        self.classes_per_batch = min(classes_per_batch, len(self.members))
        self.samples_per_class = samples_per_class
        self.steps_per_epoch = steps_per_epoch or max(1, len(split) // (self.classes_per_batch * samples_per_class))
        self.seed = seed
        self.epoch = initial_epoch

    @property
    def batch_size(self):
        """Images per batch: P x K."""
        return self.classes_per_batch * self.samples_per_class

    def __len__(self):
        return self.steps_per_epoch

    def __getitem__(self, index):
        rng = np.random.default_rng([self.seed, self.epoch, index])
        chosen = rng.choice(len(self.members), self.classes_per_batch, replace=False)
        rows = np.concatenate([
            rng.choice(self.members[c], self.samples_per_class, replace=len(self.members[c]) < self.samples_per_class)
            for c in chosen
        ])
        return self.split.load(rows), self.split.labels[rows].astype(np.int32)

    def on_epoch_end(self):
        self.epoch += 1
