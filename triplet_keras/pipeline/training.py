"""The training stage of pipeline.run: build (or resume) the training model and fit it, checkpointing
each epoch into the model folder (see checkpoints.py); the callbacks are in callbacks.py."""
import contextlib
import os
from dataclasses import dataclass

import keras

from triplet_keras.core.losses import OnlineTripletLoss, TripletMarginLoss
from triplet_keras.core.mining import mine_triplets
from triplet_keras.data.generators import PKBatchGenerator, TripletGenerator
from triplet_keras.data.pseudo_classes import with_pseudo_classes
from triplet_keras.models.distribution import GlobalBatchLoss, data_parallel, replica_count
from triplet_keras.models.networks import (
    build_augmentation,
    build_encoder,
    build_merge_model,
    build_online_model,
    embed_images,
)
from triplet_keras.pipeline.callbacks import (
    CollapseMonitor,
    EpochTensorBoard,
    NaNGuard,
    RemineCallback,
    TrainingState,
    ValidationRetrieval,
)
from triplet_keras.pipeline.checkpoints import load_checkpoint, read_state, write_state_copies
from triplet_keras.pipeline.params import ONLINE_STRATEGIES
from triplet_keras.pipeline.prepared_data import has_pairs
from triplet_keras.pipeline.stages import PipelineError, stage


@dataclass
class TrainedEncoder:
    """What the training stage hands on: the ``encoder`` of best.keras and the per-epoch ``history``
    (keras-style lists by metric name) of every epoch trained into the model folder, resumed ones included."""
    encoder: keras.Model
    history: dict


def build_training_model(model_config, training, seed, image_shape):
    """(training model, encoder): the encoder of the ModelConfig ``model_config`` in the training model
    of the TrainingConfig ``training``, compiled for its strategy."""
    weights = None if str(model_config.weights).lower() == "none" else model_config.weights
    encoder = build_encoder(model_config.backbone, weights, image_shape, model_config.embedding_dim,
                            model_config.freeze_layers, model_config.backbone_size)
    augmentation = None
    if training.augment_flip or training.augment_crop:
        augmentation = build_augmentation(training.augment_flip, training.augment_crop, seed=seed)
    optimizer = keras.optimizers.Adam(training.learning_rate)
    if training.strategy in ONLINE_STRATEGIES:
        model = build_online_model(encoder, augmentation)
        loss = OnlineTripletLoss(training.strategy, training.margin, training.squared)
        if training.distribute:
            loss = GlobalBatchLoss(loss)  # mines over the global batch under tf.distribute too
    else:
        model = build_merge_model(encoder, augmentation)
        loss = TripletMarginLoss(training.margin, training.squared)
    model.compile(optimizer=optimizer, loss=loss)
    return model, encoder


def training_data(training, seed, data, encoder, initial_epoch=0):
    """(train PyDataset, validation PyDataset or None, extra callbacks) for the TrainingConfig
    ``training``'s strategy; a run resumed at ``initial_epoch`` gets the batches and mining seed that
    epoch would have had."""
    train, validation = data.train, data.validation
    # Keras prefetches batches on threads only for workers > 1; the queue is per epoch, so it starts
    # after RemineCallback has handed over the epoch's triplets.
    loader = {"workers": max(1, training.loader_workers)}
    if training.pseudo_classes:
        train = with_pseudo_classes(train)
    if training.strategy in ONLINE_STRATEGIES:
        k = training.samples_per_class
        p = max(2, training.batch_size // k)
        validation_data = PKBatchGenerator(validation, p, k, seed=0, **loader) if has_pairs(validation) else None
        return (PKBatchGenerator(train, p, k, seed=seed, initial_epoch=initial_epoch, **loader),
                validation_data, [])
    mine = lambda split, strategy, mining_seed: mine_triplets(  # noqa: E731
        embed_images(encoder, split, description=f"embedding {len(split)} images"), split.labels, strategy,
        training.margin, training.triplets_per_anchor, seed=mining_seed, squared=training.squared)
    # RemineCallback mines with seed + epoch + 1 after each epoch: the same seed on resuming.
    generator = TripletGenerator(train, mine(train, training.strategy, seed + initial_epoch),
                                 training.batch_size, seed=seed, initial_epoch=initial_epoch, **loader)
    remine = RemineCallback(generator, encoder, training.remine_every, training.strategy, training.margin,
                            seed=seed, triplets_per_anchor=training.triplets_per_anchor, squared=training.squared)
    validation_data = None
    if has_pairs(validation):
        validation_data = TripletGenerator(validation, mine(validation, "random", seed),
                                           training.batch_size, shuffle=False, **loader)
    return generator, validation_data, [remine]


def train(config, data, model_dir, restart):
    """The training stage: train (or resume) on ``data`` (PreparedData) with the model and training
    sections and seed of ``config`` (config.Config, whose checkpoint fingerprint decides whether a run
    may resume) and return a TrainedEncoder."""
    training = config.training
    state = read_state(model_dir, config, restart)
    keras.utils.set_random_seed(config.seed)
    with data_parallel() if training.distribute else contextlib.nullcontext():
        devices = replica_count()
        if training.distribute:
            stage(f"data-parallel training over {devices} devices")
        if state is None:
            model, encoder = build_training_model(config.model, training, config.seed, data.train.image_shape)
        else:
            stage(f"resuming from {os.path.join(model_dir, 'last.keras')} after epoch {state['epoch'] + 1}")
            model = load_checkpoint(os.path.join(model_dir, "last.keras"), compile=True)
            write_state_copies(model_dir, state)  # a kill may have left them an epoch behind
            encoder = model.get_layer("encoder")
    initial_epoch = 0 if state is None else state["epoch"] + 1
    if initial_epoch < training.epochs:
        stage(f"training {config.model.backbone} with {training.strategy} triplets, epochs "
              f"{initial_epoch + 1}..{training.epochs}")
        train_data, validation_data, callbacks = training_data(training, config.seed, data, encoder, initial_epoch)
        for batches in (train_data, validation_data):
            if batches is not None and batches.batch_size % devices:
                raise PipelineError(f"batches of {batches.batch_size} do not divide over {devices} devices: "
                                    f"make batch_size (P x K for the online losses) a multiple of {devices}")
        monitor = "val_loss" if validation_data is not None else "loss"
        if has_pairs(data.validation):
            callbacks.append(ValidationRetrieval(encoder, data.validation))
        callbacks += [
            NaNGuard(),  # before TrainingState: a diverged epoch is never saved
            CollapseMonitor(encoder, data.train, training.margin, training.squared, training.collapse_patience,
                            seed=config.seed),
            TrainingState(model_dir, config, monitor, state),
            EpochTensorBoard(os.path.join(model_dir, "logs")),
        ]
        # The generators order each epoch from (seed, epoch) themselves; Keras' own shuffle of the batch
        # order draws from the global RNG, which a resumed run would not continue where the killed one was.
        model.fit(train_data, validation_data=validation_data, epochs=training.epochs, shuffle=False,
                  initial_epoch=initial_epoch, callbacks=callbacks, verbose=2)
    best = load_checkpoint(os.path.join(model_dir, "best.keras"))
    return TrainedEncoder(best.get_layer("encoder"), read_state(model_dir, config, restart=False)["history"])
