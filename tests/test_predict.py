"""Predictor round trips, inputs as arrays and files, bad model directories, and the command line."""
import json
import warnings

import cv2
import numpy as np
import pytest

from triplet_keras.__main__ import main
from triplet_keras.serving.predict import GalleryIndex, Predictor, PredictorFormatError, predict
from triplet_keras.transfer.choice import fit_transfer

SIZE = (12, 12)


@pytest.fixture(scope="module")
def images():
    """Three kinds of 12 x 12 images: dark, bright and striped, six each."""
    rng = np.random.default_rng(0)
    base = np.stack([np.full(SIZE + (3,), 30.0), np.full(SIZE + (3,), 220.0),
                     np.tile([[0.0], [255.0]], (6, 12))[..., None].repeat(3, axis=-1)])
    labels = np.repeat([0, 1, 2], 6)
    return np.clip(base[labels] + rng.normal(0, 10, (18,) + SIZE + (3,)), 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def predictor(images):
    from triplet_keras.models.networks import build_encoder, embed_images

    encoder = build_encoder("small_cnn", weights=None, input_shape=SIZE + (3,), embedding_dim=8)
    x, y = images
    classifier = fit_transfer(None, None, embed_images(encoder, x.astype(np.float32), progress=False), y)
    return Predictor(encoder, ["dark", "bright", "striped"], classifier, batch_size=4)


@pytest.fixture(scope="module")
def model_dir(predictor, tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    predictor.save(directory)
    return directory


@pytest.fixture(scope="module")
def image_files(images, tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in (0, 6, 12):
        paths.append(str(folder / f"image {i}.png"))
        cv2.imwrite(paths[-1], cv2.cvtColor(images[0][i], cv2.COLOR_RGB2BGR))
    return paths


def test_save_load_round_trip(predictor, model_dir, images):
    loaded = Predictor.load(model_dir)
    x = images[0]
    np.testing.assert_allclose(loaded.predict_proba(x), predictor.predict_proba(x), atol=1e-5)
    assert loaded.predict(x) == predictor.predict(x)
    assert loaded.class_names == ["dark", "bright", "striped"] and loaded.image_size == SIZE
    assert sorted(p.name for p in model_dir.iterdir()) == ["classifier.npz", "encoder.keras", "predictor.json"]
    assert predictor.predict_proba(x).shape == (18, 3)
    np.testing.assert_allclose(predictor.predict_proba(x).sum(axis=1), 1.0, atol=1e-6)


def test_inputs_single_image_resized_arrays_and_files(predictor, model_dir, images, image_files):
    x = images[0]
    expected = predictor.predict(x[[0, 6, 12]])
    assert predictor.predict(x[6]) == [expected[1]]
    big = np.stack([cv2.resize(image, (24, 24), interpolation=cv2.INTER_NEAREST) for image in x[[0, 6, 12]]])
    assert predictor.predict(big) == expected
    assert predictor.predict(image_files) == expected
    assert predictor.predict(image_files[1]) == [expected[1]]
    assert predict(image_files, str(model_dir)) == expected
    with pytest.raises(ValueError, match="shape"):
        predictor.predict(np.zeros((2, 12, 12)))


def test_image_size_may_be_one_int_for_a_square(predictor, images):
    square = Predictor(predictor.encoder, predictor.class_names, predictor.classifier, image_size=12)
    assert square.image_size == SIZE and square.predict(images[0]) == predictor.predict(images[0])
    for bad in (0, [12, 12, 12], "12"):
        with pytest.raises(ValueError, match="image_size must be a positive int"):
            Predictor(predictor.encoder, predictor.class_names, predictor.classifier, image_size=bad)


def test_unreadable_image_names_the_file(predictor, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        predictor.predict([str(bad)])


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "predictor.json").unlink(), "missing"),
    (lambda d: (d / "predictor.json").write_text("{not json"), "predictor.json"),
    (lambda d: edit_config(d, lambda c: c.pop("class_names")), "class_names"),
    (lambda d: edit_config(d, lambda c: c.update(image_size=[12, -1])), "image_size"),
    (lambda d: edit_config(d, lambda c: c.update(version=99)), "version"),
    (lambda d: edit_config(d, lambda c: c.update(class_names=["a"])), "class names"),
    (lambda d: edit_config(d, lambda c: c["classifier"].update(type="Pickle")), "classifier.npz"),
    (lambda d: np.savez(d / "classifier.npz", classes_=np.array([object()])), "classifier.npz"),
    (lambda d: (d / "encoder.keras").write_bytes(b"junk"), "encoder.keras"),
])
def test_bad_model_directory_names_the_file(predictor, tmp_path, damage, match):
    predictor.save(tmp_path)
    damage(tmp_path)
    with pytest.raises(PredictorFormatError, match=match):
        Predictor.load(tmp_path)


def edit_config(directory, change):
    config = json.loads((directory / "predictor.json").read_text())
    change(config)
    (directory / "predictor.json").write_text(json.dumps(config))


def test_command_line(model_dir, image_files, predictor, images, capsys, tmp_path):
    assert main(["predict", "--model_dir", str(model_dir), "--proba", "--batch_size", "2"] + image_files) == 0
    lines = capsys.readouterr().out.splitlines()
    probabilities = predictor.predict_proba(images[0][[0, 6, 12]])
    for line, path, name, row in zip(lines, image_files, predictor.predict(image_files), probabilities):
        assert line.split("\t") == [path, name, f"{row.max():.4f}"]
    assert len(lines) == 3

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    for argv, match in ([[str(tmp_path / "absent.jpg")], "absent.jpg"], [[str(broken)], "broken.png"]):
        assert main(["predict", "--model_dir", str(model_dir)] + argv) == 2
        error = capsys.readouterr().err
        assert error.startswith("error:") and match in error and "Traceback" not in error
    assert main(["predict", "--model_dir", str(tmp_path)] + image_files) == 2
    assert "predictor.json" in capsys.readouterr().err


# ------------------------------------------------------------------- calibration, unknown, lookup
def clusters(n, rng, noise=0.6):
    """n 8-d embeddings of three overlapping classes around the first three axes, and their labels."""
    labels = rng.integers(0, 3, n)
    return np.eye(8)[labels] + rng.normal(0, noise, (n, 8)), labels


@pytest.fixture()
def synthetic(predictor):
    """A fresh Predictor over the test encoder whose classifier was fitted on clusters(); names a, b, c."""
    from triplet_keras.transfer import NearestMeanClassifier

    x, y = clusters(300, np.random.default_rng(1))
    return Predictor(predictor.encoder, ["a", "b", "c"], NearestMeanClassifier().fit(x, y), batch_size=100)


def nll(probabilities, labels):
    return -np.mean(np.log(probabilities[np.arange(len(labels)), labels]))


def test_calibration_lowers_held_out_nll_and_accepts_the_requested_share(synthetic):
    rng = np.random.default_rng(2)
    (x, y), (held_x, held_y) = clusters(4000, rng), clusters(20000, rng)
    names = np.array(["a", "b", "c"])
    before = nll(synthetic.predict_proba_embeddings(held_x), held_y)
    calibration = synthetic.calibrate_embeddings(x, names[y], accept_rate=0.9, score="distance")
    after = nll(synthetic.predict_proba_embeddings(held_x), held_y)
    assert after < before - 0.05
    # the fitted temperature is the NLL minimum on the calibration data
    scores = synthetic.classifier.class_scores(x)
    fit_nll = [nll(softmax_rows(scores / (calibration.temperature * f)), y) for f in (1 / 1.1, 1.0, 1.1)]
    assert fit_nll[1] < min(fit_nll[0], fit_nll[2])
    np.testing.assert_allclose(synthetic.predict_proba_embeddings(x), softmax_rows(scores / calibration.temperature))
    # the threshold is the smallest nearest-prototype distance accepting 90% of the calibration images,
    # and it accepts 90% +- 1% of a large held-out sample
    nearest = np.sort(synthetic.classifier.prototype_distances(x).min(axis=1))
    assert calibration.thresholds == {"distance": nearest[3599]} and calibration.accept_rate == 0.9
    answers = np.array(synthetic.predict_embeddings(held_x))
    assert abs(np.mean(answers != Predictor.UNKNOWN) - 0.9) < 0.01
    assert set(answers) == {"a", "b", "c", Predictor.UNKNOWN}


def reference_scores(predictor, x, temperature, k):
    """Acceptance scores by hand: cosine distances to the class means and to every gallery embedding."""
    def cosine(a, b):
        a, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (a, b))
        return 1 - a @ b.T

    to_means = cosine(x, predictor.classifier.means_)
    return {"distance": to_means.min(axis=1),
            "probability": 1 - softmax_rows(-to_means / temperature).max(axis=1),
            "neighbours": np.sort(cosine(x, predictor.gallery.embeddings), axis=1)[:, k - 1]}


@pytest.mark.parametrize("score, neighbours", [("distance", 2), ("probability", 2), ("neighbours", 1),
                                               ("neighbours", 5), ("neighbours+probability", 2),
                                               ("distance+probability+neighbours", 3)])
def test_each_score_matches_numpy_and_accepts_the_requested_share(synthetic, score, neighbours):
    rng = np.random.default_rng(5)
    (gallery, gallery_y), (x, y), (held_x, _) = clusters(300, rng), clusters(4000, rng), clusters(20000, rng)
    names = np.array(["a", "b", "c"])
    synthetic.add_gallery_embeddings(gallery, names[gallery_y])
    calibration = synthetic.calibrate_embeddings(x, names[y], accept_rate=0.8, score=score, neighbours=neighbours)
    assert list(calibration.thresholds) == score.split("+") and calibration.neighbours == neighbours
    for data in (x, held_x[:500]):
        expected = reference_scores(synthetic, data, calibration.temperature, neighbours)
        got = synthetic.acceptance_scores(data, score.split("+"), calibration.temperature, neighbours)
        np.testing.assert_allclose(got, np.stack([expected[name] for name in score.split("+")], axis=1), atol=1e-5)
    accepted = lambda data: np.array(synthetic.predict_embeddings(data)) != Predictor.UNKNOWN  # noqa: E731
    assert 0.8 <= accepted(x).mean() <= 0.805  # one rank more can accept several images at once
    assert abs(accepted(held_x).mean() - 0.8) < 0.015


def reference_thresholds(scores, accept_rate, correct=None, target_precision=None):
    """acceptance_thresholds by trying every common rank m."""
    ordered = np.sort(scores, axis=0)
    rows = []
    for m in range(1, len(scores) + 1):
        accepted = np.all(scores <= ordered[m - 1], axis=1)
        rows.append((m, accepted.mean(), correct[accepted].mean() if correct is not None and accepted.any() else -1))
    if target_precision is None:
        m, share, _ = min(row for row in rows if row[1] >= accept_rate)
    else:
        m, share, _ = max(row for row in rows if row[2] >= target_precision)
    return ordered[m - 1], share


@pytest.mark.parametrize("columns", [1, 2, 3])
def test_acceptance_thresholds_match_trying_every_rank(columns):
    from triplet_keras.serving.predict import acceptance_thresholds

    rng = np.random.default_rng(columns)
    for trial in range(20):
        n = int(rng.integers(1, 60))
        scores = rng.integers(0, 8, (n, columns)).astype(float)  # many ties
        correct = rng.random(n) < 0.7
        rate = float(rng.uniform(0.05, 1.0))
        thresholds, share = acceptance_thresholds(scores, rate)
        expected = reference_thresholds(scores, rate)
        np.testing.assert_array_equal(thresholds, expected[0])
        assert share == expected[1] >= rate
        precision = 0.5
        if correct.any():
            thresholds, share = acceptance_thresholds(scores, rate, correct, precision)
            expected = reference_thresholds(scores, rate, correct, precision)
            np.testing.assert_array_equal(thresholds, expected[0])
            assert share == expected[1]


def test_target_precision_is_reached_on_held_out_data(synthetic):
    rng = np.random.default_rng(6)
    (x, y), (held_x, held_y) = clusters(8000, rng, noise=0.8), clusters(20000, rng, noise=0.8)
    names = np.array(["a", "b", "c"])
    right_before = np.mean(np.array(synthetic.predict_embeddings(held_x)) == names[held_y])
    calibration = synthetic.calibrate_embeddings(x, names[y], score="probability", target_precision=0.9)
    answers = np.array(synthetic.predict_embeddings(held_x))
    accepted = answers != Predictor.UNKNOWN
    assert right_before < 0.85 and calibration.target_precision == 0.9
    assert abs(np.mean(answers[accepted] == names[held_y][accepted]) - 0.9) < 0.015
    assert abs(accepted.mean() - calibration.accept_rate) < 0.02 and 0.2 < calibration.accept_rate < 0.9
    with pytest.raises(ValueError, match="no threshold reaches precision 1.0"):
        synthetic.calibrate_embeddings(x, names[(y + 1) % 3], score="probability", target_precision=1.0)


def test_default_score_uses_the_gallery_and_warns_when_it_changes(synthetic):
    rng = np.random.default_rng(7)
    x, y = clusters(600, rng)
    names = np.array(["a", "b", "c"])[y]
    assert list(synthetic.calibrate_embeddings(x, names).thresholds) == ["distance", "probability"]
    synthetic.add_gallery_embeddings(x[:300], names[:300])
    assert list(synthetic.calibrate_embeddings(x[300:], names[300:]).thresholds) == ["neighbours", "probability"]
    with pytest.warns(UserWarning, match="call calibrate again"):
        synthetic.add_gallery_embeddings(x[:3], names[:3])


def softmax_rows(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_unknown_for_far_inputs_and_reject_unknown_off(synthetic):
    rng = np.random.default_rng(3)
    x, y = clusters(500, rng, noise=0.2)
    synthetic.calibrate_embeddings(x, np.array(["a", "b", "c"])[y], accept_rate=1.0)
    far = np.eye(8)[rng.integers(4, 8, 20)] + rng.normal(0, 0.05, (20, 8))  # other axes: cosine distance ~1
    assert synthetic.predict_embeddings(far) == [Predictor.UNKNOWN] * 20
    assert Predictor.UNKNOWN not in synthetic.predict_embeddings(far, reject_unknown=False)
    assert Predictor.UNKNOWN not in synthetic.predict_embeddings(x)  # accept_rate 1: the farthest is the threshold


def test_calibrate_images_with_class_names_and_bad_arguments(predictor, images):
    fresh = Predictor(predictor.encoder, predictor.class_names, predictor.classifier, batch_size=4)
    x, y = images
    names = np.array(fresh.class_names)[y]
    uncalibrated = fresh.predict(x)
    with pytest.raises(ValueError, match="not calibrated"):
        fresh.unknown_embeddings(fresh.embed(x[:1]))
    calibration = fresh.calibrate(x, names, accept_rate=1.0)
    assert calibration.temperature > 0 and calibration.accept_rate == 1.0
    assert fresh.predict(x) == uncalibrated == fresh.predict(x, reject_unknown=False)
    for labels, rate, match in [(names, 0.0, "accept_rate"), (names, 1.5, "accept_rate"), ([], 0.9, "no labels"),
                                (["dark"] * 17 + ["purple"], 0.9, "purple"), (names[:5], 0.9, "18 images but 5")]:
        with pytest.raises(ValueError, match=match):
            fresh.calibrate(x, labels, rate)
    for options, match in [({"score": "margin"}, "score must be one or more of distance, probability, neighbours"),
                           ({"score": "distance+distance"}, "score must be"), ({"score": ""}, "score must be"),
                           ({"score": "neighbours"}, "needs a gallery"),
                           ({"target_precision": 0.0}, "target_precision"),
                           ({"target_precision": 1.5}, "target_precision"), ({"neighbours": 0}, "neighbours"),
                           ({"neighbours": 2.0}, "neighbours")]:
        with pytest.raises(ValueError, match=match):
            fresh.calibrate(x, names, **options)


def test_lookup_matches_brute_force(synthetic):
    from triplet_keras.transfer import distances

    rng = np.random.default_rng(4)
    gallery, labels = clusters(200, rng)
    queries = rng.normal(size=(30, 8))
    names = np.array(["a", "b", "c"])[labels]
    synthetic.add_gallery_embeddings(gallery[:150], names[:150])
    synthetic.add_gallery_embeddings(gallery[150:], names[150:])  # appended; ids continue 150, 151, ...
    found = synthetic.lookup_embeddings(queries, k=7)
    d = distances(queries, gallery, "cosine")
    order = np.argsort(d, axis=1)[:, :7]
    np.testing.assert_array_equal(found.ids, order.astype(str))
    np.testing.assert_array_equal(found.labels, names[order])
    np.testing.assert_allclose(found.distances, np.take_along_axis(d, order, axis=1), atol=1e-5)
    assert found.ids.shape == found.labels.shape == found.distances.shape == (30, 7)
    assert np.all(np.diff(found.distances, axis=1) >= 0)


def test_approximate_index_grows_serves_the_neighbours_score_and_round_trips(synthetic, tmp_path):
    from triplet_keras.transfer import distances

    rng = np.random.default_rng(6)
    gallery, labels = clusters(2000, rng)
    (queries, query_labels), names = clusters(60, rng), np.array(["a", "b", "c"])
    synthetic.gallery_index = GalleryIndex(8, exact_limit=500)
    synthetic.add_gallery_embeddings(gallery[:1000], names[labels[:1000]])
    synthetic.lookup_embeddings(queries, k=3)  # the cells are trained on these 1,000 items
    synthetic.add_gallery_embeddings(gallery[1000:], names[labels[1000:]])
    found = synthetic.lookup_embeddings(queries, k=10)
    assert synthetic.gallery_index.size == 2000 and not synthetic.gallery_index.exact
    expected = np.argsort(distances(queries, gallery, "cosine"), axis=1)[:, :10].astype(str)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found.ids, expected)]) >= 0.9
    synthetic.calibrate_embeddings(queries, names[query_labels], accept_rate=0.5, score="neighbours", neighbours=5)
    synthetic.save(tmp_path)
    with np.load(tmp_path / "gallery.npz", allow_pickle=False) as stored:
        assert stored["index_cells"].shape == (2000,)
    loaded = Predictor.load(tmp_path)
    assert not loaded.gallery_index.exact and loaded.calibration == synthetic.calibration
    for got, want in zip(loaded.lookup_embeddings(queries, k=10), found):
        np.testing.assert_array_equal(got, want)
    unknown = loaded.unknown_embeddings(queries)
    np.testing.assert_array_equal(unknown, synthetic.unknown_embeddings(queries))
    assert 0 < unknown.sum() < len(queries)
    with np.load(tmp_path / "gallery.npz", allow_pickle=False) as stored:  # an index of another size
        np.savez(tmp_path / "gallery.npz", **{**stored, "embeddings": stored["embeddings"][:-1],
                                              "labels": stored["labels"][:-1], "ids": stored["ids"][:-1]})
    with pytest.raises(PredictorFormatError, match=r"gallery.npz.*must be 1999 ints in \[0, 50\)"):
        Predictor.load(tmp_path)


def test_lookup_images_and_bad_arguments(predictor, images):
    fresh = Predictor(predictor.encoder, predictor.class_names, predictor.classifier, batch_size=4)
    x, y = images
    with pytest.raises(ValueError, match="no gallery"):
        fresh.lookup(x[:2])
    paths = [f"image_{i}.png" for i in range(18)]
    fresh.add_gallery(x, np.array(fresh.class_names)[y], ids=paths)
    found = fresh.lookup(x[[0, 7]], k=1)
    assert found.ids[:, 0].tolist() == ["image_0.png", "image_7.png"] and found.labels[:, 0].tolist() == ["dark", "bright"]
    np.testing.assert_allclose(found.distances, 0.0, atol=1e-5)
    for k in (0, 19):
        with pytest.raises(ValueError, match="k must be between 1 and the gallery size 18"):
            fresh.lookup(x[:1], k=k)
    with pytest.raises(ValueError, match="purple"):
        fresh.add_gallery(x[:1], ["purple"])
    with pytest.raises(ValueError, match="1 gallery images, 1 labels and 2 ids"):
        fresh.add_gallery(x[:1], ["dark"], ids=["a", "b"])


@pytest.fixture(scope="module")
def calibrated_dir(predictor, images, tmp_path_factory):
    """A copy of the predictor calibrated on its images and with them as gallery, saved."""
    x, y = images
    names = np.array(predictor.class_names)[y]
    calibrated = Predictor(predictor.encoder, predictor.class_names, predictor.classifier, batch_size=4)
    calibrated.add_gallery(x, names)
    calibrated.calibrate(x[::2], names[::2], accept_rate=0.6, score="neighbours+probability+distance", neighbours=3)
    directory = tmp_path_factory.mktemp("calibrated")
    calibrated.save(directory)
    return calibrated, directory


def test_calibration_and_gallery_round_trip(calibrated_dir, images):
    calibrated, directory = calibrated_dir
    x = images[0]
    loaded = Predictor.load(directory)
    assert loaded.calibration == calibrated.calibration and len(loaded.calibration.thresholds) == 3
    assert loaded.predict(x, reject_unknown=False) == calibrated.predict(x, reject_unknown=False)
    # The thresholds are scores of these very images, and the reloaded encoder may differ in the last
    # float32 bit (TensorFlow): the saved calibration is compared on the same embeddings.
    embeddings = calibrated.embed(x)
    answers = loaded.predict_embeddings(embeddings)
    assert answers == calibrated.predict_embeddings(embeddings) and Predictor.UNKNOWN in answers
    np.testing.assert_allclose(loaded.predict_proba(x), calibrated.predict_proba(x), atol=1e-5)
    got, expected = loaded.lookup(x, k=3), calibrated.lookup(x, k=3)
    np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_array_equal(got.ids, expected.ids)
    # the reloaded encoder may differ in the last float32 bit (TensorFlow)
    np.testing.assert_allclose(got.distances, expected.distances, atol=1e-6)
    with np.load(directory / "gallery.npz", allow_pickle=False) as stored:
        assert stored["ids"].tolist() == [str(i) for i in range(18)] and stored["labels"].dtype.kind == "U"


def test_old_format_folder_loads_uncalibrated(predictor, calibrated_dir, images, tmp_path):
    """A version 1 folder (before calibration and galleries): predictor.json without those keys."""
    calibrated, _ = calibrated_dir
    calibrated.save(tmp_path)
    (tmp_path / "gallery.npz").unlink()
    edit_config(tmp_path, lambda c: [c.pop("calibration"), c.pop("gallery"), c.update(version=1)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = Predictor.load(tmp_path)
    assert loaded.calibration is None and loaded.gallery is None
    np.testing.assert_allclose(loaded.predict_proba(images[0]), predictor.predict_proba(images[0]), atol=1e-5)


def test_version_2_folder_loads_with_its_distance_threshold(calibrated_dir, images, tmp_path):
    """A version 2 folder: one nearest-prototype distance threshold, UNKNOWN beyond it."""
    calibrated, _ = calibrated_dir
    calibrated.save(tmp_path)
    x = images[0]
    distance = calibrated.classifier.prototype_distances(calibrated.embed(x)).min(axis=1)
    threshold = float(np.median(distance))
    edit_config(tmp_path, lambda c: c.update(version=2, calibration={"temperature": 0.5, "threshold": threshold,
                                                                     "accept_rate": 0.5}))
    loaded = Predictor.load(tmp_path)
    assert loaded.calibration.thresholds == {"distance": threshold} and loaded.calibration.target_precision is None
    expected = np.where(distance > threshold, Predictor.UNKNOWN, loaded.predict(x, reject_unknown=False))
    assert loaded.predict(x) == expected.tolist() and Predictor.UNKNOWN in expected


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "gallery.npz").unlink(), "gallery.npz"),
    (lambda d: np.savez(d / "gallery.npz", embeddings=np.zeros((2, 3)), labels=np.array(["dark"] * 2),
                        ids=np.array(["0", "1"])), "gallery.npz"),
    (lambda d: edit_config(d, lambda c: c["calibration"].update(temperature=-1.0)), "temperature > 0"),
    (lambda d: edit_config(d, lambda c: c["calibration"].update(thresholds={"margin": 0.1})), "must name one or more"),
    (lambda d: edit_config(d, lambda c: c["calibration"].update(neighbours=0)), "neighbours must be an int"),
    (lambda d: edit_config(d, lambda c: c["calibration"].update(target_precision="high")), "finite numbers"),
    (lambda d: edit_config(d, lambda c: c.update(version=2)), "temperature, threshold, accept_rate"),
    (lambda d: [(d / "gallery.npz").unlink(), edit_config(d, lambda c: c.update(gallery=False))], "needs a gallery"),
    (lambda d: edit_config(d, lambda c: c.pop("calibration")), "calibration"),
    (lambda d: edit_config(d, lambda c: c.update(gallery="yes")), "gallery"),
])
def test_bad_calibration_or_gallery_names_the_problem(calibrated_dir, tmp_path, damage, match):
    calibrated_dir[0].save(tmp_path)
    damage(tmp_path)
    with pytest.raises(PredictorFormatError, match=match):
        Predictor.load(tmp_path)


def test_command_line_lookup_and_no_unknown(calibrated_dir, model_dir, image_files, capsys):
    calibrated, directory = calibrated_dir
    assert main(["predict", "--model_dir", str(directory), "--lookup", "2"] + image_files) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.splitlines()]
    found = calibrated.lookup(image_files, k=2)
    assert [line[1] for line in lines] == calibrated.predict(image_files)
    for line, labels, ids, distances in zip(lines, *found):
        assert line[2:] == [value for i, label, d in zip(ids, labels, distances) for value in (i, label, f"{d:.4f}")]
    assert main(["predict", "--model_dir", str(directory), "--no-unknown"] + image_files) == 0
    assert [line.split("\t")[1] for line in capsys.readouterr().out.splitlines()] == \
        calibrated.predict(image_files, reject_unknown=False)
    assert main(["predict", "--model_dir", str(model_dir), "--lookup", "1"] + image_files) == 2
    assert "no gallery" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["predict", "--model_dir", str(directory), "--lookup", "0"] + image_files)
