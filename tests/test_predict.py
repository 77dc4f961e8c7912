"""Predictor round trips, inputs as arrays and files, bad model directories, and the command line."""
import json

import cv2
import numpy as np
import pytest

from triplet_keras.__main__ import main
from triplet_keras.predict import Predictor, PredictorFormatError, predict
from triplet_keras.transfer import fit_transfer

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
    from triplet_keras.models import build_encoder, embed_images

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
