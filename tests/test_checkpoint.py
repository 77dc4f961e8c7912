"""One atomic checkpoint: a kill at any file operation of an epoch's checkpoint resumes from a whole
epoch, and a resumed run ends with the weights of an uninterrupted one; the resume fingerprint."""
import json
import os
import zipfile

import numpy as np
import pytest

from triplet_keras.pipeline import end_to_end
from triplet_keras.models.networks import load_model, read_model_state, save_model
from triplet_keras.pipeline.config import Config, load_config

LOSSES = [3.0, 2.0, 2.5, 1.0]  # epoch 2 does not improve: best.keras stays at epoch 1


class Killed(BaseException):
    """A kill: nothing catches it, as nothing survives a SIGKILL."""


def kill_at(monkeypatch, point):
    """Raise Killed at an os.replace. ``point`` is an int, the count of the rename (0-based) doubled:
    2i is "before rename i", 2i + 1 "after rename i"; or (file name, its occurrence, "before" or
    "after"). Returns the list of renamed names."""
    replace = os.replace
    done = []

    def killing_replace(source, target):
        name = os.path.basename(target)
        if isinstance(point, int):
            before, after = 2 * len(done) == point, 2 * len(done) + 1 == point
        else:
            reached = point[0] == name and point[1] == done.count(name)
            before, after = reached and point[2] == "before", reached and point[2] == "after"
        if before:
            raise Killed
        replace(source, target)
        done.append(name)
        if after:
            raise Killed

    monkeypatch.setattr(os, "replace", killing_replace)
    return done


def tiny_model(value):
    import keras

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2, name="dense")(inputs))
    model.compile("adam", "mse")
    model.set_weights([np.full(w.shape, value, np.float32) for w in model.get_weights()])
    return model


def checkpoint_epochs(model_dir, config, start_state, first, last):
    """TrainingState over epochs first..last; the weights after epoch e are all e + 1."""
    callback = end_to_end.TrainingState(str(model_dir), config, "loss", start_state)
    for epoch in range(first, last + 1):
        callback.set_model(tiny_model(epoch + 1))
        callback.on_epoch_end(epoch, {"loss": LOSSES[epoch]})


def weight_value(path):
    values = np.unique(np.concatenate([np.ravel(w) for w in load_model(path).get_weights()]))
    assert len(values) == 1
    return float(values[0])


@pytest.fixture(scope="module")
def config():
    return load_config("/nonexistent-folder")


def test_a_kill_at_any_write_resumes_from_a_consistent_epoch(tmp_path, monkeypatch, config):
    reference = tmp_path / "reference"
    checkpoint_epochs(reference, config, None, 0, 3)
    expected = json.loads((reference / "state.json").read_text())
    point, points = 0, 0
    while True:
        model_dir = tmp_path / f"killed{point}"
        checkpoint_epochs(model_dir, config, None, 0, 0)  # epoch 0 is on disk
        renamed = kill_at(monkeypatch, point)
        try:
            checkpoint_epochs(model_dir, config, end_to_end.read_state(str(model_dir), config, False), 1, 3)
            break  # every rename of epochs 1-3 passed without reaching the kill
        except Killed:
            points += 1
        finally:
            monkeypatch.undo()
        state = end_to_end.read_state(str(model_dir), config, False)
        epoch = state["epoch"]
        assert 0 <= epoch <= 3 and state["history"]["loss"] == LOSSES[:epoch + 1], (point, renamed)
        assert weight_value(model_dir / "last.keras") == epoch + 1  # the weights of the state's epoch
        best = read_model_state(model_dir / "best.keras")
        assert weight_value(model_dir / "best.keras") == best["epoch"] + 1 and best["best"] == LOSSES[best["epoch"]]
        assert best["epoch"] <= epoch + 1  # at most the epoch being written, never a lost one
        end_to_end.write_state_copies(str(model_dir), state)  # the resumed run, as end_to_end.train does it
        checkpoint_epochs(model_dir, config, state, epoch + 1, 3)
        assert json.loads((model_dir / "state.json").read_text()) == expected, (point, renamed)
        assert weight_value(model_dir / "last.keras") == 4 and weight_value(model_dir / "best.keras") == 4
        assert (model_dir / "history.csv").read_text() == (reference / "history.csv").read_text()
        point += 1
    assert points == 2 * 11  # best, last, history, state in epochs 1 and 3; last, history, state in epoch 2


TRAINING = {"dataset": "digits", "backbone": "small_cnn", "weights": "none", "embedding_dim": 8,
            "freeze_layers": 0, "strategy": "batch_all", "batch_size": 32, "samples_per_class": 4, "epochs": 2,
            "learning_rate": 0.003, "validation_fraction": 0.0, "test_fraction": 0.6, "loader_workers": 1}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    config = load_config("/nonexistent-folder", TRAINING)
    data = end_to_end.prepare_data(config.data, config.seed)
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    end_to_end.train(config, data, str(model_dir), restart=False)
    return config, data, model_dir


def weights(path):
    return [np.asarray(w) for w in load_model(path).get_weights()]


# (where the kill lands, epochs the resumed run trains)
@pytest.mark.parametrize("point, retrained", [
    (("state.json", 0, "before"), 1),  # epoch 1 committed, its readable copy not yet: the old two-rename gap
    (("last.keras", 1, "before"), 1),  # epoch 2 not committed (best.keras may be): trained again
    (("last.keras", 1, "after"), 0),  # epoch 2 committed: nothing left to train
])
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, monkeypatch, uninterrupted,
                                                                     point, retrained, capsys):
    config, data, reference = uninterrupted
    kill_at(monkeypatch, point)
    with pytest.raises(Killed):
        end_to_end.train(config, data, str(tmp_path), restart=False)
    monkeypatch.undo()
    end_to_end.remove_temporary_files(str(tmp_path))
    capsys.readouterr()
    end_to_end.train(config, data, str(tmp_path), restart=False)
    output = capsys.readouterr().out
    assert output.count("Epoch ") == retrained, output
    for name in ("last.keras", "best.keras"):
        for ours, theirs in zip(weights(tmp_path / name), weights(reference / name)):
            np.testing.assert_allclose(ours, theirs, atol=1e-5)
    ours, theirs = (json.loads((d / "state.json").read_text()) for d in (tmp_path, reference))
    assert ours["epoch"] == theirs["epoch"] == 1
    np.testing.assert_allclose(ours["history"]["loss"], theirs["history"]["loss"], atol=1e-5)


def test_changed_parameters_stop_before_loading_and_name_each_change(tmp_path, config):
    checkpoint_epochs(tmp_path, config, None, 0, 0)
    changes = {"margin": 0.3, "learning_rate": 0.01, "pseudo_classes": True, "epochs": 50, "shots": [1, 10],
               "transfer_mode": "center"}
    changed = Config.from_dict({**config.to_dict(), **changes})
    with pytest.raises(end_to_end.PipelineError) as raised:
        end_to_end.read_state(str(tmp_path), changed, restart=False)
    message = str(raised.value)
    assert "learning_rate 0.001 -> 0.01; margin 0.2 -> 0.3; pseudo_classes false -> true." in message
    assert "--restart" in message and "epochs, episodes, shots" in message and "\n" not in message
    assert "shots [" not in message and "transfer_mode" not in message.split(".")[0]
    resumable = Config.from_dict({**config.to_dict(), **{key: changes[key] for key in end_to_end.RESUMABLE_KEYS
                                                         if key in changes}})
    assert end_to_end.read_state(str(tmp_path), resumable, restart=False)["epoch"] == 0
    assert end_to_end.read_state(str(tmp_path), changed, restart=True) is None


def test_every_parameter_outside_the_resumable_list_is_recorded(config):
    recorded = end_to_end.training_fingerprint(config)
    assert set(recorded) | set(end_to_end.RESUMABLE_KEYS) == set(config.to_dict())
    for key in ("margin", "learning_rate", "augment_flip", "augment_crop", "pseudo_classes", "batch_size",
                "squared", "validation_fraction", "dataset", "source_classes", "precision"):
        assert key in recorded


def test_a_folder_of_the_previous_layout_resumes_from_its_state_json(tmp_path, config):
    save_model(tiny_model(1), tmp_path / "last.keras")  # no state inside
    legacy = {"epoch": 0, "best": 3.0, "history": {"loss": [3.0]}, "params": {"seed": 0, "backbone": "resnet50"}}
    (tmp_path / "state.json").write_text(json.dumps(legacy))
    assert end_to_end.read_state(str(tmp_path), config, restart=False) == legacy
    with pytest.raises(end_to_end.PipelineError, match=r"seed 0 -> 1\. Pass --restart"):
        end_to_end.read_state(str(tmp_path), Config.from_dict({**config.to_dict(), "seed": 1}), restart=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "no state", "bad state"])
def test_a_damaged_checkpoint_is_one_line_naming_the_file_and_the_cure(tmp_path, config, damage):
    checkpoint_epochs(tmp_path, config, None, 0, 0)
    path = tmp_path / "last.keras"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    elif damage == "garbage":
        path.write_bytes(b"not a zip at all")
    elif damage == "no state":  # an old layout whose state.json is gone
        save_model(tiny_model(1), path)
        (tmp_path / "state.json").unlink()
    else:
        with zipfile.ZipFile(path, "a") as archive:
            archive.writestr("training_state.json", "[1, 2]")
    with pytest.raises(end_to_end.PipelineError) as raised:
        end_to_end.read_state(str(tmp_path), config, restart=False)
    message = str(raised.value)
    assert "cannot resume from" in message and "--restart" in message and "\n" not in message
    assert "last.keras" in message or "state.json" in message


def test_a_damaged_model_inside_an_intact_zip_is_a_pipeline_error(tmp_path):
    path = tmp_path / "best.keras"
    save_model(tiny_model(1), path)
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp_path / "bad.keras", "w") as target:
        for item in source.namelist():
            target.writestr(item, b"\x00" * 16 if item.endswith(".h5") else source.read(item))
    with pytest.raises(end_to_end.PipelineError, match="cannot load .*bad.keras.*--restart"):
        end_to_end.load_checkpoint(str(tmp_path / "bad.keras"))


def test_init_reports_a_model_folder_it_cannot_make_in_one_line(tmp_path):
    import init

    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as raised:
        init.main(["--model_dir", str(tmp_path / "a_file" / "run")])
    message = str(raised.value.code)
    assert message.startswith("error: cannot write to the model folder") and "a_file" in message
    assert "\n" not in message
