"""Encoder, merge model and online model: shapes, freezing, weight sharing, save/load, a real fit."""
import os

import keras
import numpy as np
import pytest

from triplet_keras.core import downloads
from triplet_keras.core.losses import OnlineTripletLoss, TripletMarginLoss, triplet_margin_loss
from triplet_keras.models import networks
from triplet_keras.models.networks import (
    WeightsUnavailableError,
    build_augmentation,
    build_encoder,
    build_merge_model,
    build_online_model,
    embed_images,
    feature_encoder,
    load_model,
    save_model,
)

SHAPE = (8, 8, 3)


@pytest.fixture
def encoder():
    return build_encoder("small_cnn", weights=None, input_shape=SHAPE, embedding_dim=16, freeze_layers=2)


def images(n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n,) + SHAPE).astype(np.uint8)


def test_encoder_outputs_unit_vectors_from_raw_pixels(encoder):
    emb = encoder.predict(images(5), verbose=0)
    assert emb.shape == (5, 16) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, rtol=1e-5)


def test_first_layers_frozen(encoder):
    backbone = encoder.get_layer("small_cnn")
    assert [layer.trainable for layer in backbone.layers[:2]] == [False, False]
    assert all(layer.trainable for layer in backbone.layers[2:])


def test_pretrained_weights_freeze_batchnorm(tmp_path, encoder):
    path = str(tmp_path / "backbone.weights.h5")
    encoder.get_layer("small_cnn").save_weights(path)
    pretrained = build_encoder("small_cnn", weights=path, input_shape=SHAPE, embedding_dim=16, freeze_layers=0)
    batchnorms = [layer for layer in pretrained.get_layer("small_cnn").layers
                  if isinstance(layer, keras.layers.BatchNormalization)]
    assert batchnorms and not any(layer.trainable for layer in batchnorms)
    for got, want in zip(pretrained.get_layer("small_cnn").weights, encoder.get_layer("small_cnn").weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))


def test_bad_arguments_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="backbone must be one of"):
        build_encoder("vgg", weights=None)
    with pytest.raises(FileNotFoundError, match="weights file not found"):
        build_encoder("small_cnn", weights=str(tmp_path / "missing.h5"), input_shape=SHAPE)
    with pytest.raises(ValueError, match="input_shape"):
        build_encoder("small_cnn", weights=None, input_shape=(8, 8))
    with pytest.raises(ValueError, match="no ImageNet weights"):
        build_encoder("small_cnn", weights="imagenet", input_shape=SHAPE)
    for bad in (0, -8, (8, 8, 3), "16"):
        with pytest.raises(ValueError, match="backbone_size must be a positive int"):
            build_encoder("small_cnn", weights=None, input_shape=SHAPE, backbone_size=bad)


def test_backbone_size_may_be_one_int_for_a_square():
    square = build_encoder("small_cnn", weights=None, input_shape=SHAPE, embedding_dim=4, backbone_size=16)
    assert square.get_layer("resize").output.shape[1:3] == (16, 16)
    assert square.predict(images(2), verbose=0).shape == (2, 4)


def test_imagenet_offline_fails_fast_with_instructions(monkeypatch, tmp_path):
    """Offline: one connection attempt, bounded by a short timeout, then the error; no download, no model."""
    attempts = []

    def unreachable(host, timeout=None):
        attempts.append((host, timeout))
        raise OSError("network is unreachable")

    def forbidden(*args, **kwargs):
        raise AssertionError("must fail before downloading or building")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(downloads.socket, "create_connection", unreachable)
    monkeypatch.setattr(keras.utils, "get_file", forbidden)
    monkeypatch.setattr(keras.applications, "ResNet50", forbidden)
    with pytest.raises(WeightsUnavailableError, match="weights=None"):
        build_encoder("resnet50", weights="imagenet", input_shape=(32, 32, 3))
    assert len(attempts) == 1 and attempts[0][0] == networks.IMAGENET_HOST and 0 < attempts[0][1] <= 3


def test_resnet50_smoke_small_input():
    # One ResNet50 build: 8x8 digits are resized inside the model to the 32x32 minimum.
    encoder = build_encoder("resnet50", weights=None, input_shape=SHAPE, embedding_dim=8)
    assert encoder.get_layer("resize").get_config()["height"] == 32
    emb = encoder.predict(images(2), verbose=0)
    assert emb.shape == (2, 8) and np.all(np.isfinite(emb))
    frozen = [layer.trainable for layer in encoder.get_layer("resnet50").layers[:16]]
    assert frozen == [False] * 15 + [True]


def test_merge_model_shares_one_encoder(encoder):
    merge = build_merge_model(encoder)
    assert len(merge.trainable_weights) == len(encoder.trainable_weights)
    assert len(merge.weights) == len(encoder.weights)
    a, p, n = images(4, 1), images(4, 2), images(4, 3)
    out = merge.predict([a, p, n], verbose=0)
    assert out.shape == (4, 3, 16)
    for branch, x in enumerate((a, p, n)):
        np.testing.assert_allclose(out[:, branch], encoder.predict(x, verbose=0), atol=1e-5)


def test_merge_model_fit_lowers_the_triplet_loss(encoder):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 16)
    base = rng.integers(0, 256, size=(4,) + SHAPE)
    data = np.clip(base[labels] + rng.normal(0, 40, size=(64,) + SHAPE), 0, 255).astype(np.uint8)
    positive = np.array([rng.choice(np.flatnonzero(labels == y)) for y in labels])
    negative = np.array([rng.choice(np.flatnonzero(labels != y)) for y in labels])
    merge = build_merge_model(encoder)
    merge.compile(optimizer=keras.optimizers.Adam(3e-3), loss=TripletMarginLoss(margin=0.2))
    x = [data, data[positive], data[negative]]

    def mean_loss():
        out = merge.predict(x, verbose=0)
        return float(np.mean(keras.ops.convert_to_numpy(triplet_margin_loss(out[:, 0], out[:, 1], out[:, 2]))))

    before = mean_loss()
    merge.fit(x, np.zeros(64), batch_size=16, epochs=8, verbose=0)
    assert mean_loss() < 0.8 * before


def test_online_model_with_augmentation_trains(encoder):
    labels = np.repeat(np.arange(4), 8)
    model = build_online_model(encoder, build_augmentation(flip=True, crop_padding=1))
    model.compile(optimizer="adam", loss=OnlineTripletLoss("batch_hard"))
    history = model.fit(images(32), labels, batch_size=16, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # Augmentation is inactive at inference: the online model embeds exactly like the encoder.
    np.testing.assert_allclose(model.predict(images(3), verbose=0), encoder.predict(images(3), verbose=0), atol=1e-5)


def test_save_load_round_trip_gives_identical_embeddings(tmp_path, encoder):
    path = tmp_path / "encoder.keras"
    save_model(encoder, path)
    assert sorted(os.listdir(tmp_path)) == ["encoder.keras"]  # no temporary file left behind
    restored = load_model(path)
    x = images(6)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), encoder.predict(x, verbose=0))
    merge_path = tmp_path / "merge.keras"
    merge = build_merge_model(encoder)
    merge.compile(optimizer="adam", loss=TripletMarginLoss(margin=0.3))
    save_model(merge, merge_path)
    reloaded = load_model(merge_path, compile=True)
    assert reloaded.loss.get_config()["margin"] == 0.3
    np.testing.assert_allclose(reloaded.predict([x, x, x], verbose=0), merge.predict([x, x, x], verbose=0))


def test_backbone_features_are_the_normalised_input_of_the_projection(tmp_path, encoder):
    assert feature_encoder(encoder, "embedding") is encoder
    features = feature_encoder(encoder, "backbone")
    x = images(5)
    pooled = encoder.get_layer("small_cnn").predict(x.astype("float32") / 255.0, verbose=0)  # "unit" preprocessing
    expected = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    np.testing.assert_allclose(features.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)
    assert features.get_layer("small_cnn") is encoder.get_layer("small_cnn")  # shared weights, no copy
    save_model(features, tmp_path / "features.keras")
    np.testing.assert_allclose(load_model(tmp_path / "features.keras").predict(x, verbose=0), expected,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="features must be one of"):
        feature_encoder(encoder, "logits")
    plain = keras.Sequential([keras.Input(SHAPE), keras.layers.Flatten(), keras.layers.Dense(4)])
    with pytest.raises(ValueError, match="use features='embedding'"):
        feature_encoder(plain, "backbone")


def test_grid_features_are_the_normalised_last_map_pooled_to_two_by_two_cells(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, size=(4, 32, 32, 3)).astype(np.uint8)
    encoder = build_encoder("small_cnn", weights=None, input_shape=(32, 32, 3), embedding_dim=8, freeze_layers=0)
    cnn = encoder.get_layer("small_cnn")
    last_map = keras.Model(cnn.input, cnn.layers[-2].output).predict(x.astype("float32") / 255.0, verbose=0)
    assert last_map.shape == (4, 4, 4, 128)  # 32 -> 16 -> 8 -> 4 pixels
    cells = last_map.reshape(4, 2, 2, 2, 2, 128).mean(axis=(2, 4)).reshape(4, -1)  # 2 x 2 blocks, row-major
    expected = cells / np.linalg.norm(cells, axis=1, keepdims=True)
    grid = feature_encoder(encoder, "grid")
    np.testing.assert_allclose(grid.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)
    # The mean of the four cells is the global average pool: the backbone features up to scale.
    pooled = grid.predict(x, verbose=0).reshape(4, 4, 128).mean(axis=1)
    np.testing.assert_allclose(pooled / np.linalg.norm(pooled, axis=1, keepdims=True),
                               feature_encoder(encoder, "backbone").predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    save_model(grid, tmp_path / "grid.keras")
    np.testing.assert_allclose(load_model(tmp_path / "grid.keras").predict(x, verbose=0), expected,
                               rtol=1e-4, atol=1e-5)


def shifted(x, dy, dx):
    """numpy reference: x moved dy pixels down and dx right, zero-filled."""
    out = np.zeros_like(x)
    h, w = x.shape[1:3]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = x[:, max(-dy, 0):h - max(dy, 0),
                                                                       max(-dx, 0):w - max(dx, 0)]
    return out


def test_shifted_copies_follow_the_numpy_reference():
    x = images(3)
    copies = networks.ShiftedCopies(2)(x)
    expected = [shifted(x, dy, dx) for dy, dx in ((0, 0), (0, 2), (0, -2), (2, 0), (-2, 0))]
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(copies), np.concatenate(expected))
    assert expected[1][0, 3, 2].tolist() == x[0, 3, 0].tolist()  # "right" puts column 0 at column 2
    with pytest.raises(ValueError, match="shift must be"):
        networks.ShiftedCopies(0)


def test_shift_average_is_the_normalised_mean_over_shifted_copies(tmp_path, encoder):
    x = images(5)
    backbone = feature_encoder(encoder, "backbone")
    averaged = feature_encoder(encoder, "backbone", shift_average=1)
    per_copy = [backbone.predict(shifted(x, dy, dx), verbose=0) for dy, dx in ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0))]
    mean = np.mean(per_copy, axis=0)
    expected = mean / np.linalg.norm(mean, axis=1, keepdims=True)
    np.testing.assert_allclose(averaged.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-5)
    assert not np.allclose(expected, per_copy[0], atol=1e-3)  # the copies do change the vectors
    np.testing.assert_allclose(embed_images(averaged, x, batch_size=2, progress=False), expected, rtol=1e-4, atol=1e-5)
    save_model(averaged, tmp_path / "averaged.keras")
    np.testing.assert_allclose(load_model(tmp_path / "averaged.keras").predict(x, verbose=0), expected,
                               rtol=1e-4, atol=1e-5)
    embedding = feature_encoder(encoder, "embedding", shift_average=1)
    assert embedding.output_shape == (None, 16)
    for bad in (-1, 0.5, "1", 8):
        with pytest.raises((ValueError, TypeError), match="shift_average"):
            feature_encoder(encoder, "backbone", shift_average=bad)
    assert feature_encoder(encoder, "backbone", shift_average=7).output_shape == (None, 128)


def test_save_and_load_reject_bad_paths(tmp_path, encoder):
    with pytest.raises(ValueError, match=".keras"):
        save_model(encoder, tmp_path / "encoder.h5")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        load_model(tmp_path / "missing.keras")


def test_embed_images_matches_predict_for_arrays_and_loaders(encoder):
    x = images(10)

    class Loader:
        def __len__(self):
            return len(x)

        def load(self, indices):
            return x[indices]

    expected = encoder.predict(x, verbose=0)
    np.testing.assert_allclose(embed_images(encoder, x, batch_size=4, progress=False), expected, atol=1e-5)
    np.testing.assert_allclose(embed_images(encoder, Loader(), batch_size=3, progress=False), expected, atol=1e-5)
    batches = networks.PredictBatches(Loader().load, len(x), 4, x.shape[1:])
    assert len(batches) == 3
    # uint8 reaches the model (no float copy on the host: the model casts); the last batch is padded
    # with zeros to one compiled shape
    assert [(b.dtype, len(b)) for b in (batches[i] for i in range(3))] == [(np.uint8, 4)] * 3
    np.testing.assert_array_equal(batches[2][:2], x[8:])
    assert not batches[2][2:].any()
    over_four = networks.PredictBatches(Loader().load, 3, 6, x.shape[1:], replicas=4)  # a data-parallel split
    assert over_four.batch_size == 8 and len(over_four[0]) == 4 and not over_four[0][3:].any()
    # a single batch: to the next power of two, at most batch_size (a few compiled shapes for all counts)
    single = [len(networks.PredictBatches(Loader().load, n, 8, x.shape[1:])[0]) for n in (1, 2, 3, 5, 8)]
    assert single == [1, 2, 4, 8, 8]
    assert len(networks.PredictBatches(Loader().load, 5, 6, x.shape[1:])[0]) == 6


def test_embed_images_raises_a_loading_error_and_leaves_the_encoder_usable(encoder):
    x = images(10)

    class Failing:
        def __len__(self):
            return len(x)

        def load(self, indices):
            if indices[0] >= 4:
                raise ValueError("cannot read image 4")
            return x[indices]

    expected = encoder.predict(x, verbose=0)
    with pytest.raises(ValueError, match="cannot read image 4"):
        embed_images(encoder, Failing(), batch_size=2, progress=False)
    np.testing.assert_allclose(embed_images(encoder, x, batch_size=4, progress=False), expected, atol=1e-5)
    assert len(encoder.get_weights()) == len(encoder.weights)
    assert embed_images(encoder, x[:0], progress=False).shape == (0, 16)


def test_random_pad_crop_takes_windows_of_the_padded_image():
    crop = networks.RandomPadCrop(2, seed=3)
    x = np.arange(4 * 6 * 5 * 1, dtype=np.float32).reshape(4, 6, 5, 1) + 1
    out = keras.ops.convert_to_numpy(crop(x, training=True))
    padded = np.pad(x, [(0, 0), (2, 2), (2, 2), (0, 0)])
    for image, source in zip(out, padded):
        windows = [source[dy:dy + 6, dx:dx + 5] for dy in range(5) for dx in range(5)]
        assert any(np.array_equal(image, window) for window in windows)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(crop(x)), x)
    assert networks.RandomPadCrop.from_config(crop.get_config()).padding == 2


def test_l2_normalize_is_exact_and_has_a_finite_gradient_at_zero():
    from test_losses import _gradient
    from triplet_keras.models.networks import L2Normalize

    x = np.array([[3.0, 4.0], [0.0, 0.0]], np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(L2Normalize()(x)), [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    weights = np.array([[1.0, 2.0]] * 2, np.float32)
    grad = _gradient(lambda w, e: keras.ops.sum(L2Normalize()(e) * keras.ops.convert_to_tensor(w)), x, weights)
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad[0], [-0.064, 0.048], atol=1e-6)  # (w - u (u.w)) / |x|, u = x / |x|


def test_safe_mode_refuses_a_lambda_layer(tmp_path):
    """A .keras file with a Lambda layer (arbitrary code) is refused when loaded, as Predictor files are."""
    from triplet_keras.models.networks import load_model, save_model

    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    save_model(model, tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="safe_mode"):
        load_model(tmp_path / "lambda.keras")
