"""The typed configuration: params.json and flags read into frozen sections, the flat form kept for
params.json, metrics.json and the resume fingerprint."""
import dataclasses
import json
from pathlib import Path

import pytest

from triplet_keras.pipeline.checkpoints import RESUMABLE_KEYS, training_fingerprint
from triplet_keras.pipeline.config import SECTIONS, Config, DataConfig, TransferConfig, load_config
from triplet_keras.pipeline.params import SCHEMA, ParamsError, check_value

pytestmark = pytest.mark.backend_free  # no Keras model: run once, not per backend
DIGITS = Path(__file__).resolve().parents[1] / "experiments" / "digits"
OVERRIDES = [{}, {"epochs": 2, "margin": 0.3}, {"image_size": 12, "shots": [1, 10], "transfer_whiten": None},
             {"source_classes": ["0", 3], "seed": 7, "transfer_whiten": 0.5, "backbone_size": 32}]


def flat_params(model_dir, overrides):
    """The flat dict main's load_params gave: SCHEMA's defaults, updated by params.json, then by the
    overrides, each value through check_value."""
    params = {key: spec[0] for key, spec in SCHEMA.items()}
    loaded = json.loads((Path(model_dir) / "params.json").read_text(encoding="utf-8"))
    params.update({key: check_value(key, value) for key, value in {**loaded, **overrides}.items()})
    return params


def fingerprint_of_flat(params):
    """The resume fingerprint as main's checkpoints.training_fingerprint computed it from the flat dict."""
    return json.loads(json.dumps({key: value for key, value in params.items() if key not in RESUMABLE_KEYS}))


@pytest.mark.parametrize("overrides", OVERRIDES)
def test_flat_form_and_fingerprint_are_those_of_the_flat_dict(overrides):
    flat = flat_params(DIGITS, overrides)
    config = load_config(str(DIGITS), overrides)
    assert config.to_dict() == flat and list(config.to_dict()) == list(SCHEMA)  # same values, SCHEMA's order
    assert json.dumps(config.to_dict()) == json.dumps(flat)  # params.json and metrics.json: the same text
    assert training_fingerprint(config) == fingerprint_of_flat(flat)
    assert json.dumps(training_fingerprint(config)) == json.dumps(fingerprint_of_flat(flat))


def test_a_changed_model_parameter_changes_the_fingerprint_and_a_resumable_one_does_not():
    config = load_config(str(DIGITS))
    assert training_fingerprint(load_config(str(DIGITS), {"episodes": 3, "shots": [2]})) == training_fingerprint(config)
    changed = training_fingerprint(load_config(str(DIGITS), {"embedding_dim": 8}))
    assert changed["embedding_dim"] == 8 and changed != training_fingerprint(config)


@pytest.mark.parametrize("overrides", OVERRIDES)
def test_flat_dict_round_trips_through_the_sections(overrides):
    config = load_config(str(DIGITS), overrides)
    assert Config.from_dict(config.to_dict()) == config
    assert Config.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # through params.json's text


def test_the_digits_experiment_reads_into_its_sections():
    config = load_config(str(DIGITS))
    assert config.data.dataset == "digits" and config.data.source_classes == ("0", "1", "2", "3", "4")
    assert config.model.backbone == "small_cnn" and config.model.backbone_size == (16, 16)
    assert config.training.strategy == "batch_semi_hard" and config.training.pseudo_classes is True
    assert config.transfer.shots == (1, 5) and config.transfer.plot_method == "pca" and config.seed == 0
    assert config.training.collapse_patience == SCHEMA["collapse_patience"][0]  # not in the file: the default


def test_each_key_is_in_exactly_one_section_and_each_section_has_only_its_keys():
    keys = [key for section in SECTIONS.values() for key in section.keys()] + ["seed"]
    assert sorted(keys) == sorted(SCHEMA) and len(keys) == len(set(keys))
    assert set(DataConfig.keys()) == {"dataset", "archive", "image_size", "max_per_class", "cache_mb",
                                      "validation_fraction", "test_fraction", "source_classes", "target_dataset",
                                      "target_transform"}
    assert all(key.startswith("transfer_") or key in ("shots", "episodes", "plot_method")
               for key in TransferConfig.keys())
    assert set(SECTIONS) == {field.name for field in dataclasses.fields(Config)} - {"seed"}


def test_sections_are_frozen_and_hashable():
    config = load_config(str(DIGITS))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.training.epochs = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3
    assert isinstance(config.transfer.shots, tuple) and isinstance(config.data.source_classes, tuple)
    assert hash(config) == hash(load_config(str(DIGITS)))


def test_replace_makes_a_checked_copy():
    config = load_config(str(DIGITS))
    longer = dataclasses.replace(config, training=dataclasses.replace(config.training, epochs=9))
    written = json.loads((DIGITS / "params.json").read_text())["epochs"]
    assert longer.training.epochs == 9 and config.training.epochs == written != 9 and longer.data is config.data
    assert dataclasses.replace(config.training, margin=1).margin == 1.0  # an int becomes a float, as in params.json
    with pytest.raises(ParamsError, match="epochs must be at least 1"):
        dataclasses.replace(config.training, epochs=0)
    with pytest.raises(ParamsError, match=r"validation_fraction \+ test_fraction must be below 1.*0.5 \+ 0.6"):
        dataclasses.replace(config.data, validation_fraction=0.5, test_fraction=0.6)
    with pytest.raises(ParamsError, match="shots must be a list of one or more ints >= 1"):
        dataclasses.replace(config.transfer, shots=(1, 0))
    with pytest.raises(TypeError, match="Config.model must be a ModelConfig"):
        dataclasses.replace(config, model=config.training)


@pytest.mark.parametrize("flat, message", [
    ({"epoch": 3}, "unknown parameter 'epoch'.*valid keys: .*epochs"),
    ({"seed": "zero"}, "seed must be of type int"),
    ({"transfer_whiten": 1.5}, "transfer_whiten must be null, \"auto\" or a shrinkage between 0 and 1, got 1.5"),
    ({"transfer_whiten": -0.1}, "a shrinkage between 0 and 1"),
    ({"precision": "float64"}, "precision must be one of"),
])
def test_from_dict_gives_the_params_errors(flat, message):
    with pytest.raises(ParamsError, match=message):
        Config.from_dict(flat)


def test_a_bad_value_in_the_file_that_a_flag_replaces_is_not_an_error(tmp_path):
    (tmp_path / "params.json").write_text(json.dumps({"epochs": 0}), encoding="utf-8")
    with pytest.raises(ParamsError, match="epochs must be at least 1"):
        load_config(str(tmp_path))
    assert load_config(str(tmp_path), {"epochs": 2}).training.epochs == 2


def test_defaults_are_the_schema_defaults():
    assert Config.from_dict({}).to_dict() == {key: check_value(key, spec[0]) for key, spec in SCHEMA.items()}
