"""params.json loading, command-line overrides and validation."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from triplet_keras.pipeline.config import load_config
from triplet_keras.pipeline.params import SCHEMA, ParamsError, check_value

pytestmark = pytest.mark.backend_free  # numpy / scikit-learn / OpenCV only: run once, not per backend
ROOT = Path(__file__).resolve().parents[1]  # where init.py is, whatever the working directory


def write(folder, params):
    (folder / "params.json").write_text(json.dumps(params), encoding="utf-8")


def test_defaults_file_and_overrides_stack(tmp_path):
    write(tmp_path, {"epochs": 3, "margin": 1})
    config = load_config(str(tmp_path), {"epochs": 5})
    assert config.training.epochs == 5 and config.training.margin == 1.0 and isinstance(config.training.margin, float)
    assert config.data.dataset == SCHEMA["dataset"][0]
    assert set(config.to_dict()) == set(SCHEMA)


def test_missing_file_gives_defaults(tmp_path):
    assert load_config(str(tmp_path)).model.backbone == "resnet50"


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "ten", "epochs must be of type int"),
    ("epochs", True, "epochs must be of type int"),
    ("squared", 1, "squared must be of type bool"),
    ("strategy", "hardest", "strategy must be one of"),
    ("backbone", "vgg16", "backbone must be one of"),
    ("epochs", None, "epochs must be of type int"),
    ("epochs", 0, "epochs must be at least 1"),
    ("transfer_shift_average", -1, "transfer_shift_average must be at least 0"),
    ("samples_per_class", 1, "samples_per_class must be at least 2"),
    ("shots", None, "shots must be of type list"),
    ("shots", [], r"shots must be a list of one or more ints >= 1, got \[\]"),
    ("shots", [1, 0], "shots must be a list of one or more ints >= 1"),
    ("shots", [1, "5"], "shots must be a list of one or more ints >= 1"),
    ("shots", [True], "shots must be a list of one or more ints >= 1"),
    ("image_size", [8], "image_size must be a positive int"),
    ("image_size", [8, 8.5], "image_size must be a positive int"),
    ("backbone_size", [0, 32], "backbone_size must be a positive int"),
    ("source_classes", ["cat", 1.5], "source_classes must be a list of one or more str or ints"),
    ("source_classes", [[0]], "source_classes must be a list of one or more str or ints"),
    ("source_classes", [], "source_classes must be a list of one or more"),
    ("validation_fraction", 1.0, "validation_fraction must be at least 0 and below 1"),
    ("test_fraction", -0.1, "test_fraction must be at least 0 and below 1"),
])
def test_wrong_types_are_errors(tmp_path, key, value, message):
    write(tmp_path, {key: value})
    with pytest.raises(ParamsError, match=message):
        load_config(str(tmp_path))


def test_unknown_key_lists_the_valid_keys(tmp_path):
    write(tmp_path, {"epoch": 3})
    with pytest.raises(ParamsError, match="unknown parameter 'epoch'.*valid keys: .*epochs"):
        load_config(str(tmp_path))


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", "\xff\xfe"])
def test_malformed_file_is_an_error(tmp_path, text):
    (tmp_path / "params.json").write_text(text, encoding="latin-1")
    with pytest.raises(ParamsError, match="params.json"):
        load_config(str(tmp_path))


def test_nullable_keys_accept_null():
    assert check_value("source_classes", None) is None
    assert check_value("image_size", None) is None
    assert check_value("transfer_whiten", None) is None
    assert check_value("transfer_whiten", 1) == 1.0
    assert check_value("transfer_whiten", "auto") == "auto" and check_value("transfer_features", "auto") == "auto"
    with pytest.raises(ParamsError, match="transfer_whiten"):
        check_value("transfer_whiten", "sometimes")


def test_good_lists_pass_unchanged():
    assert check_value("shots", [1, 5, 10]) == [1, 5, 10]
    assert check_value("image_size", [8, 6]) == [8, 6]
    assert check_value("source_classes", ["cat", 3]) == ["cat", 3]
    assert check_value("validation_fraction", 0) == 0.0


def test_fractions_must_leave_training_images(tmp_path):
    write(tmp_path, {"validation_fraction": 0.6})
    with pytest.raises(ParamsError, match=r"validation_fraction \+ test_fraction must be below 1.*0.6 \+ 0.5"):
        load_config(str(tmp_path), {"test_fraction": 0.5})
    assert load_config(str(tmp_path), {"test_fraction": 0.3}).data.test_fraction == 0.3


@pytest.mark.parametrize("flags, message", [
    (["--shots", "null"], "error: shots must be of type list"),
    (["--validation_fraction", "0.6", "--test_fraction", "0.5"], "error: validation_fraction + test_fraction"),
    (["--image_size", '[8, "x"]'], "error: image_size must be a positive int (a square) or two positive ints"),
])
def test_init_reports_bad_lists_and_fractions_in_one_line(tmp_path, flags, message):
    import init

    with pytest.raises(SystemExit) as raised:
        init.main(["--model_dir", str(tmp_path), *flags])
    assert str(raised.value.code).startswith(message) and "\n" not in str(raised.value.code)
    assert not (tmp_path / "last.keras").exists()


def test_whole_number_minimums_are_inclusive():
    assert check_value("transfer_shift_average", 0) == 0 and check_value("epochs", 1) == 1


def test_init_help_lists_every_parameter():
    out = subprocess.run([sys.executable, "init.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    for key in SCHEMA:
        assert f"--{key}" in out
    assert "--model_dir" in out and "--restart" in out and "--data_dir" in out


def test_init_rejects_bad_flag_value_before_training(tmp_path):
    result = subprocess.run([sys.executable, "init.py", "--model_dir", str(tmp_path), "--epochs", "many"],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "epochs must be of type int" in result.stderr
    assert not (tmp_path / "state.json").exists()


@pytest.mark.parametrize("key", ["image_size", "backbone_size"])
def test_sizes_are_one_int_for_a_square_or_two_ints(tmp_path, key):
    assert check_value(key, 224) == [224, 224] and check_value(key, [32, 48]) == [32, 48]
    write(tmp_path, {key: 64})
    assert load_config(str(tmp_path)).to_dict()[key] == [64, 64]
    for bad in (0, -5, [1, 2, 3], "224", [32, 0], [1.5, 2], True):
        with pytest.raises(ParamsError, match=f"{key} must be a positive int"):
            check_value(key, bad)


def test_max_per_class_is_null_or_at_least_one():
    assert SCHEMA["max_per_class"][0] is None and check_value("max_per_class", None) is None
    assert check_value("max_per_class", 300) == 300
    with pytest.raises(ParamsError, match="max_per_class must be at least 1"):
        check_value("max_per_class", 0)
    with pytest.raises(ParamsError, match="max_per_class must be of type int"):
        check_value("max_per_class", "300")
