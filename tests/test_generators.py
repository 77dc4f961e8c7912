import math

import keras
import numpy as np
import pytest

from triplet_keras.core.mining import mine_triplets
from triplet_keras.data.datasets import ArraySplit, load_dataset
from triplet_keras.data.generators import PKBatchGenerator, TripletGenerator
from triplet_keras.pipeline.callbacks import RemineCallback


def _numbered_split(count=20, classes=4):
    """Image i is filled with the value i, so a batch shows which rows it holds."""
    images = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None], (count, 2, 2, 3)).copy()
    return ArraySplit(images, np.arange(count) % classes)


def _rows_of(images):
    return images[:, 0, 0, 0].astype(int).tolist()


def test_triplet_batches_hold_the_triplet_images_and_zero_targets():
    split = _numbered_split()
    triplets = np.array([[0, 4, 1], [5, 9, 2], [2, 6, 3], [7, 3, 0], [8, 0, 9]])
    generator = TripletGenerator(split, triplets, batch_size=2, shuffle=False)
    assert len(generator) == 3
    seen = []
    for index in range(len(generator)):
        (anchors, positives, negatives), targets = generator[index]
        assert anchors.dtype == np.uint8 and anchors.shape == (2, 2, 2, 3)  # the last batch is full too
        assert targets.dtype == np.float32 and (targets == 0).all() and len(targets) == len(anchors)
        seen += list(zip(_rows_of(anchors), _rows_of(positives), _rows_of(negatives)))
    assert seen == [tuple(row) for row in triplets.tolist() + triplets[:1].tolist()]  # topped up from the start
    (anchors, _, _), _ = TripletGenerator(split, triplets[:2], batch_size=5, shuffle=False)[0]
    assert _rows_of(anchors) == [0, 5, 0, 5, 0]


def test_each_image_is_loaded_once_per_batch():
    split = _numbered_split()
    loaded = []
    original = split.load
    split.load = lambda indices: loaded.append(list(indices)) or original(indices)
    TripletGenerator(split, [[0, 4, 1], [4, 0, 1]], batch_size=2, shuffle=False)[0]
    assert loaded == [[0, 1, 4]]


def test_shuffle_is_a_seeded_permutation_per_epoch():
    split = _numbered_split()
    triplets = np.stack([np.arange(20), (np.arange(20) + 4) % 20, (np.arange(20) + 1) % 20], 1)

    def epoch_anchors(generator):
        return sum((_rows_of(generator[i][0][0]) for i in range(len(generator))), [])

    generator = TripletGenerator(split, triplets, batch_size=5, seed=1)
    first = epoch_anchors(generator)
    assert sorted(first) == list(range(20)) and first != list(range(20))
    assert epoch_anchors(TripletGenerator(split, triplets, batch_size=5, seed=1)) == first
    generator.on_epoch_end()
    second = epoch_anchors(generator)
    assert sorted(second) == list(range(20)) and second != first
    assert epoch_anchors(TripletGenerator(split, triplets, batch_size=5, seed=1, initial_epoch=1)) == second


@pytest.mark.parametrize("triplets", [np.zeros((0, 3)), np.zeros((4, 2)), [[0, 1, 20]], [[-1, 0, 1]]])
def test_bad_triplets_are_rejected(triplets):
    with pytest.raises(ValueError):
        TripletGenerator(_numbered_split(), triplets)


def test_pk_batches_are_class_balanced_and_seeded():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 6 + [3] * 1 + [4] * 5)
    images = np.broadcast_to(np.arange(len(labels), dtype=np.uint8)[:, None, None, None], (len(labels), 2, 2, 3))
    split = ArraySplit(images.copy(), labels)
    generator = PKBatchGenerator(split, classes_per_batch=3, samples_per_class=4, seed=2)
    assert len(generator) == len(labels) // 12
    for index in range(3):
        images, batch_labels = generator[index]
        assert batch_labels.dtype == np.int32 and len(batch_labels) == 12
        np.testing.assert_array_equal(labels[_rows_of(images)], batch_labels)
        groups = batch_labels.reshape(3, 4)
        assert (groups == groups[:, :1]).all() and len(set(groups[:, 0])) == 3 and 3 not in batch_labels
        for group, rows in zip(groups[:, 0], np.array(_rows_of(images)).reshape(3, 4)):
            if group != 1:  # class 1 has 3 images, fewer than K: drawn with replacement
                assert len(set(rows)) == 4
    np.testing.assert_array_equal(PKBatchGenerator(split, 3, 4, seed=2)[1][1], generator[1][1])
    generator.on_epoch_end()
    assert PKBatchGenerator(split, 3, 4, seed=2)[0][0].tolist() != generator[0][0].tolist()
    resumed = PKBatchGenerator(split, 3, 4, seed=2, initial_epoch=1)
    assert [resumed[i][0].tolist() for i in range(2)] == [generator[i][0].tolist() for i in range(2)]
    everything = PKBatchGenerator(split, classes_per_batch=50, samples_per_class=2, steps_per_epoch=7)
    assert len(everything) == 7 and len(everything[0][1]) == 4 * 2
    with pytest.raises(ValueError):
        PKBatchGenerator(ArraySplit(images[:11].copy(), labels[:11]))


@pytest.fixture(scope="module")
def digits_split():
    data = load_dataset("digits", validation_fraction=0.0, test_fraction=0.0)
    return data.train.subset(np.arange(0, len(data.train), 9))  # 200 images, all ten classes


# approximate: the candidate search of large sets (a few candidates per block), forced on 200 images
@pytest.mark.parametrize("mining", [{}, {"max_exact": 0, "candidates": 40, "block_size": 32}],
                         ids=["exact", "approximate"])
def test_merge_model_fits_from_the_generator_and_remines_with_the_current_encoder(digits_split, mining):
    from triplet_keras.core.losses import TripletMarginLoss
    from triplet_keras.models.networks import build_encoder, build_merge_model, embed_images

    encoder = build_encoder(backbone="small_cnn", weights=None, input_shape=(8, 8, 3), embedding_dim=16)
    model = build_merge_model(encoder)
    model.compile(optimizer="adam", loss=TripletMarginLoss(margin=0.2))
    embeddings = embed_images(encoder, digits_split, progress=False)
    triplets = mine_triplets(embeddings, digits_split.labels, "semi_hard", progress=False)
    generator = TripletGenerator(digits_split, triplets, batch_size=50)  # 4 equal steps: one compile
    remine = RemineCallback(generator, encoder, every=1, seed=3, progress=False, **mining)
    history = model.fit(generator, epochs=2, callbacks=[remine], verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    # the last re-mining (after epoch index 1, seed 3 + 2) used the trained encoder
    embeddings = embed_images(encoder, digits_split, progress=False)
    expected = mine_triplets(embeddings, digits_split.labels, "semi_hard", seed=5, progress=False, **mining)
    np.testing.assert_array_equal(generator.triplets, expected)
    anchors, positives, negatives = (embeddings[expected[:, column]] for column in range(3))
    active = np.sum((anchors - positives) ** 2, axis=1) + 0.2 > np.sum((anchors - negatives) ** 2, axis=1)
    assert history.history["remined_active_fraction"][-1] == pytest.approx(np.mean(active), abs=1e-6)
    assert not np.array_equal(generator.triplets, triplets)


def test_online_model_fits_from_pk_batches(digits_split):
    from triplet_keras.core.losses import OnlineTripletLoss
    from triplet_keras.models.networks import build_encoder, build_online_model

    encoder = build_encoder(backbone="small_cnn", weights=None, input_shape=(8, 8, 3), embedding_dim=16)
    model = build_online_model(encoder)
    model.compile(optimizer="adam", loss=OnlineTripletLoss("batch_hard", margin=0.2))
    generator = PKBatchGenerator(digits_split, classes_per_batch=5, samples_per_class=4, steps_per_epoch=3)
    history = model.fit(generator, epochs=2, verbose=0)
    assert all(math.isfinite(loss) for loss in history.history["loss"])
