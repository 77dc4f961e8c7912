"""The folder-to-gallery command: every image added once after a kill at any point, unreadable images
skipped with one warning, bad folders refused."""
import os
import warnings

import cv2
import numpy as np
import pytest

from triplet_keras.__main__ import main
from triplet_keras.serving import gallery_folder
from triplet_keras.serving.gallery_folder import PENDING_FOLDER, add_folder_to_gallery
from triplet_keras.serving.predict import Predictor
from triplet_keras.transfer import NearestMeanClassifier

SIZE = (12, 12)
CLASSES = ("dark", "bright", "striped")


class Killed(BaseException):
    """Stands for a kill: like KeyboardInterrupt, not an Exception, so no handler of the code catches it."""


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """folder/<class>/<i>.png: 7 noisy images of each class, one of them in a nested folder; and a predictor."""
    from triplet_keras.models.networks import build_encoder

    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("gallery images")
    bases = [np.full(SIZE + (3,), 30.0), np.full(SIZE + (3,), 220.0),
             np.tile([[0.0], [255.0]], (6, 12))[..., None].repeat(3, axis=-1)]
    for name, base in zip(CLASSES, bases):
        for i in range(7):
            path = folder / name / ("nested" if i == 6 else "") / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image = np.clip(base + rng.normal(0, 10, base.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(path), image)
    encoder = build_encoder("small_cnn", weights=None, input_shape=SIZE + (3,), embedding_dim=8)
    classifier = NearestMeanClassifier().fit(np.eye(3, 8), [0, 1, 2])
    return folder, Predictor(encoder, list(CLASSES), classifier, batch_size=4)


def folder_paths(folder):
    return sorted(os.path.realpath(os.path.join(directory, name)) for directory, _, names in os.walk(folder)
                  for name in names)


def check_gallery(model_dir, folder, predictor):
    """The saved gallery holds each image of the folder once, with its class and embedding."""
    gallery = Predictor.load(model_dir).gallery
    paths = folder_paths(folder)
    assert sorted(gallery.ids) == paths  # every image, none twice
    expected_labels = [os.path.relpath(i, os.path.realpath(folder)).split(os.sep)[0] for i in gallery.ids]
    assert gallery.labels.tolist() == expected_labels
    np.testing.assert_allclose(gallery.embeddings, predictor.embed(list(gallery.ids)), atol=1e-5)
    assert not os.path.exists(os.path.join(model_dir, PENDING_FOLDER))


def test_a_kill_while_embedding_loses_nothing_and_adds_nothing_twice(image_folder, tmp_path, monkeypatch):
    folder, predictor = image_folder
    predictor.save(tmp_path)
    embed, calls = Predictor.embed, []

    def killed_at_the_third_chunk(self, images, batch_size=None):
        calls.append(len(images))
        if len(calls) == 3:
            raise Killed
        return embed(self, images, batch_size)

    monkeypatch.setattr(Predictor, "embed", killed_at_the_third_chunk)
    with pytest.raises(Killed):
        add_folder_to_gallery(tmp_path, folder, chunk_size=4, progress=False)
    assert sorted(os.listdir(tmp_path / PENDING_FOLDER)) == ["chunk-0.npz", "chunk-1.npz"]
    assert Predictor.load(tmp_path).gallery is None  # nothing merged yet
    assert add_folder_to_gallery(tmp_path, folder, chunk_size=4, progress=False) == (21, 21)
    assert calls[3:] == [4, 4, 4, 1]  # only the 13 images not in a pending chunk were embedded
    monkeypatch.undo()
    check_gallery(tmp_path, folder, predictor)
    assert add_folder_to_gallery(tmp_path, folder, chunk_size=4, progress=False) == (0, 21)


def test_a_kill_after_saving_before_clearing_adds_nothing_twice(image_folder, tmp_path, monkeypatch):
    folder, predictor = image_folder
    with_gallery = Predictor(predictor.encoder, predictor.class_names, predictor.classifier, batch_size=4)
    with_gallery.add_gallery_embeddings(np.eye(2, 8), ["dark", "bright"], ids=["old-0", "old-1"])
    with_gallery.save(tmp_path)

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(gallery_folder, "rmtree", killed)
    with pytest.raises(Killed):
        add_folder_to_gallery(tmp_path, folder, chunk_size=8, progress=False)
    assert len(Predictor.load(tmp_path).gallery.ids) == 23 and os.listdir(tmp_path / PENDING_FOLDER)
    monkeypatch.undo()
    assert add_folder_to_gallery(tmp_path, folder, chunk_size=8, progress=False) == (0, 23)
    gallery = Predictor.load(tmp_path).gallery
    assert gallery.ids[:2].tolist() == ["old-0", "old-1"] and sorted(gallery.ids[2:]) == folder_paths(folder)
    assert not os.path.exists(tmp_path / PENDING_FOLDER)


def test_command_skips_an_unreadable_image_with_one_warning(image_folder, tmp_path, capsys):
    folder, predictor = image_folder
    model_dir = tmp_path / "model"
    predictor.save(model_dir)
    broken = folder / "dark" / "broken.png"
    broken.write_bytes(b"not an image")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert main(["gallery-add", "--model_dir", str(model_dir), "--chunk_size", "5", str(folder)]) == 0
    finally:
        broken.unlink()
    messages = [str(warning.message) for warning in caught if "unreadable" in str(warning.message)]
    assert len(messages) == 1 and "1 unreadable image" in messages[0] and "broken.png" in messages[0]
    out, err = capsys.readouterr()
    assert out.strip() == f"added 21 images to the gallery of {model_dir}, which holds 21"
    assert "adding to the gallery" in err  # the progress bar
    check_gallery(model_dir, folder, predictor)


def test_command_refuses_unknown_classes_and_missing_folders(image_folder, tmp_path, capsys):
    folder, predictor = image_folder
    predictor.save(tmp_path / "model")
    (tmp_path / "images" / "purple").mkdir(parents=True)
    (tmp_path / "empty" / "dark").mkdir(parents=True)
    for target, message in [(tmp_path / "images", "class folders ['purple']"),
                            (tmp_path / "empty", "no images in class subfolders"),
                            (tmp_path / "missing", "missing")]:
        assert main(["gallery-add", "--model_dir", str(tmp_path / "model"), str(target)]) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        add_folder_to_gallery(tmp_path / "model", folder, chunk_size=0)
