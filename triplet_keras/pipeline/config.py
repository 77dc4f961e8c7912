"""The typed configuration of a run: ``<model_dir>/params.json`` and the command-line flags read into
frozen dataclasses, one section per stage, validated once, when a section is made.

    config = load_config("experiments/digits", {"epochs": 2})
    config.training.epochs, config.data.dataset, config.seed      # 2, "digits", 0
    config.to_dict()                                              # the flat params.json form

Each field is named as its flat key (triplet_keras.params.SCHEMA: default, type and help) and holds the
value check_value gives it, with lists as tuples, so a section is immutable and hashable. A section is
checked in ``__post_init__``, so one made by hand or by ``dataclasses.replace`` is checked too; an
unknown key or a bad value is a ParamsError with today's message.
"""
import json
import os
from dataclasses import dataclass, fields
from typing import Optional, Union

from triplet_keras.pipeline.params import SCHEMA, ParamsError, valid_keys, check_fractions, check_key, check_value


def _frozen(value):
    """``value`` with its lists as tuples."""
    return tuple(value) if isinstance(value, list) else value


def _thawed(value):
    """``value`` with its tuples as lists: the JSON / params.json form."""
    return list(value) if isinstance(value, tuple) else value


class _Section:
    """Checks each field with params.check_value when the dataclass is made and stores the result frozen."""

    def __post_init__(self):
        for field in fields(self):
            object.__setattr__(self, field.name, _frozen(check_value(field.name, _thawed(getattr(self, field.name)))))

    @classmethod
    def keys(cls):
        """The flat keys this section holds."""
        return tuple(field.name for field in fields(cls))


@dataclass(frozen=True)
class DataConfig(_Section):
    """The data stage (prepared_data): the dataset, its splits and the transfer target."""
    dataset: str
    archive: Optional[str]
    image_size: Optional[tuple]  # (height, width)
    max_per_class: Optional[int]
    cache_mb: int
    validation_fraction: float
    test_fraction: float
    source_classes: Optional[tuple]  # names or indices
    target_dataset: Optional[str]
    target_transform: Optional[str]

    def __post_init__(self):
        super().__post_init__()
        check_fractions(self.validation_fraction, self.test_fraction)


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The encoder (models.build_encoder) and the Keras dtype policy it runs under."""
    backbone: str
    weights: str
    backbone_size: Optional[tuple]  # (height, width)
    embedding_dim: int
    freeze_layers: int
    precision: str


@dataclass(frozen=True)
class TrainingConfig(_Section):
    """The training stage (training): loss, mining, batches, optimiser, augmentation and monitoring."""
    strategy: str
    margin: float
    squared: bool
    triplets_per_anchor: int
    remine_every: int
    batch_size: int
    samples_per_class: int
    epochs: int
    learning_rate: float
    augment_flip: bool
    augment_crop: int
    pseudo_classes: bool
    distribute: bool
    collapse_patience: int
    loader_workers: int


@dataclass(frozen=True)
class TransferConfig(_Section):
    """The transfer stage (transfer_evaluation): what the choice searches, the episodes and the map."""
    transfer_mode: str
    transfer_whiten: Union[float, str, None]  # a shrinkage, "auto" or None
    transfer_features: str
    transfer_shift_average: int
    shots: tuple
    episodes: int
    plot_method: str


SECTIONS = {"data": DataConfig, "model": ModelConfig, "training": TrainingConfig, "transfer": TransferConfig}


@dataclass(frozen=True)
class Config:
    """One run's parameters: a section per stage and the ``seed`` every stage draws from (splits,
    weights, mining, episodes)."""
    data: DataConfig
    model: ModelConfig
    training: TrainingConfig
    transfer: TransferConfig
    seed: int

    def __post_init__(self):
        for name, section in SECTIONS.items():
            if not isinstance(getattr(self, name), section):
                raise TypeError(f"Config.{name} must be a {section.__name__}, got {getattr(self, name)!r}")
        object.__setattr__(self, "seed", check_value("seed", self.seed))

    @classmethod
    def from_dict(cls, flat):
        """The Config of flat ``{key: value}`` parameters (params.json's form), SCHEMA's defaults for
        the keys it lacks; ParamsError for an unknown key or a bad value."""
        for key in flat:
            check_key(key)
        values = {key: flat.get(key, default) for key, (default, _, _) in SCHEMA.items()}
        sections = {name: section(**{key: values[key] for key in section.keys()}) for name, section in SECTIONS.items()}
        return cls(**sections, seed=values["seed"])

    def to_dict(self):
        """The flat parameters in SCHEMA's order, lists as lists: what params.json, metrics.json and the
        checkpoint fingerprint (checkpoints.training_fingerprint) hold."""
        values = {"seed": self.seed}
        for name in SECTIONS:
            section = getattr(self, name)
            values.update({key: _thawed(getattr(section, key)) for key in section.keys()})
        return {key: values[key] for key in SCHEMA}


def load_config(model_dir, overrides=None):
    """The Config of ``model_dir/params.json`` (if present) updated by the flat ``overrides`` (the flags);
    ParamsError for a file that is not a JSON object, an unknown key or a bad value."""
    path = os.path.join(model_dir, "params.json")
    loaded = {}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as handle:
                loaded = json.load(handle)
        except (ValueError, UnicodeDecodeError) as error:
            raise ParamsError(f"{path} is not valid JSON: {error}") from None
        if not isinstance(loaded, dict):
            raise ParamsError(f"{path} must hold a JSON object of parameters; {valid_keys()}")
    return Config.from_dict({**loaded, **(overrides or {})})
