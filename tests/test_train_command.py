"""``triplet-keras train`` (and init.py, the same function): flags reach the pipeline's parameters,
bad parameters are one error line, and both entry points parse alike."""
import json
import subprocess
import sys

import pytest

import init
from triplet_keras.__main__ import main as command_main
from triplet_keras.pipeline import end_to_end


@pytest.fixture
def recorded_runs(monkeypatch):
    runs = []
    monkeypatch.setattr(end_to_end, "run", lambda model_dir, config, restart=False: runs.append(
        (model_dir, config, restart)))
    return runs


@pytest.mark.parametrize("entry", ["command", "init"])
def test_flags_override_params_json_through_either_entry_point(tmp_path, recorded_runs, entry):
    (tmp_path / "params.json").write_text(json.dumps({"dataset": "digits", "backbone": "small_cnn", "weights": "none"}))
    flags = ["--model_dir", str(tmp_path), "--epochs", "2", "--source_classes", '["0", "1", "2"]', "--restart"]
    status = command_main(["train", *flags]) if entry == "command" else init.main(flags)
    assert status == 0
    (model_dir, config, restart), = recorded_runs
    assert model_dir == str(tmp_path) and restart
    assert config.training.epochs == 2 and config.data.source_classes == ("0", "1", "2")
    assert config.model.backbone == "small_cnn"


def test_a_bad_parameter_is_one_error_line_and_nothing_runs(tmp_path, recorded_runs):
    (tmp_path / "params.json").write_text(json.dumps({"dataset": "digits", "epochs": 0}))
    with pytest.raises(SystemExit) as exit:
        command_main(["train", "--model_dir", str(tmp_path)])
    assert str(exit.value.code).startswith("error:") and "epochs" in str(exit.value.code)
    assert recorded_runs == []


def test_train_help_lists_the_run_flags_and_the_parameters():
    result = subprocess.run([sys.executable, "-m", "triplet_keras", "train", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--model_dir", "--data_dir", "--restart", "--epochs", "--transfer_mode"):
        assert flag in result.stdout
