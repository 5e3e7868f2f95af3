"""params.yaml -> typed, frozen configuration.

`load_config` is the only place that reads params.yaml. Unknown keys and bad values are rejected
with a one-line message that names the key. Overrides use DVC's `-S section.key=value` syntax and
go through the same validation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

PARAMS_FILE = "params.yaml"


class ConfigError(ValueError):
    """A params.yaml value or an override is invalid; the message names the key."""


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Paths(_Frozen):
    """Every file a stage reads or writes, relative to the project root."""

    raw: str
    processed_dir: str
    validation_dir: str
    best_params: str
    train_dir: str
    train_metrics: str
    metrics: str
    plots_dir: str


class DataConfig(_Frozen):
    """Which data set ingest writes: the built-in digits, or a CSV with the same columns."""

    dataset: Literal["digits"] = "digits"
    source: str | None = None


class ValidateConfig(_Frozen):
    """Bounds of the Great Expectations suite on the raw data."""

    min_rows: int = Field(1000, ge=1)
    min_rows_per_class: int = Field(100, ge=1)
    pixel_min: float = 0
    pixel_max: float = 16
    n_classes: int = Field(10, ge=2)

    @model_validator(mode="after")
    def _range(self) -> ValidateConfig:
        if self.pixel_min >= self.pixel_max:
            raise ValueError("pixel_min must be below pixel_max")
        return self


class AugmentConfig(_Frozen):
    """Training-time augmentation of images."""

    p: float = Field(0.5, ge=0, le=1)
    max_shift: float = Field(1.0, ge=0)
    max_rotation: float = Field(10.0, ge=0, le=180)


class PreprocessConfig(_Frozen):
    """Split fractions and augmentation."""

    val_size: float = Field(0.15, gt=0, lt=1)
    test_size: float = Field(0.2, gt=0, lt=1)
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _fractions(self) -> PreprocessConfig:
        if self.val_size + self.test_size >= 0.9:
            raise ValueError("val_size + test_size must leave at least 10% for training")
        return self


class ModelConfig(_Frozen):
    """CNN architecture."""

    channels: int = Field(32, ge=1)
    dropout: float = Field(0.2, ge=0, lt=1)
    hidden: int = Field(128, ge=1)


class FloatRange(_Frozen):
    """A float search dimension."""

    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _order(self) -> FloatRange:
        if self.low >= self.high:
            raise ValueError("low must be below high")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class IntRange(_Frozen):
    """An integer search dimension."""

    low: int
    high: int
    step: int = 1

    @model_validator(mode="after")
    def _order(self) -> IntRange:
        if self.low >= self.high:
            raise ValueError("low must be below high")
        return self


class Choices(_Frozen):
    """A categorical search dimension."""

    choices: list[float | int | str] = Field(min_length=1)


TUNABLE = {"lr", "dropout", "channels", "batch_size", "hidden", "weight_decay"}


class TuneConfig(_Frozen):
    """The Optuna study."""

    n_trials: int = Field(8, ge=1)
    timeout_s: float | None = Field(60, gt=0)
    max_epochs: int = Field(8, ge=1)
    pruner: Literal["hyperband", "median", "none"] = "hyperband"
    storage: str | None = None
    space: dict[str, FloatRange | IntRange | Choices] = Field(default_factory=dict)

    @field_validator("space")
    @classmethod
    def _known(cls, space: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(space) - TUNABLE)
        if unknown:
            raise ValueError(
                f"unknown search dimension {unknown[0]!r} (known: {', '.join(sorted(TUNABLE))})"
            )
        return space


class TrainConfig(_Frozen):
    """Final training."""

    max_epochs: int = Field(30, ge=1)
    patience: int = Field(6, ge=1)
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(64, ge=1)
    weight_decay: float = Field(1e-4, ge=0)
    optimizer: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    scheduler: Literal["cosine", "step", "onecycle", "plateau", "none"] = "cosine"
    warmup_epochs: int = Field(0, ge=0)
    step_size: int | None = Field(None, ge=1)
    gamma: float = Field(0.1, gt=0, le=1)
    grad_clip: float | None = Field(None, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _combinations(self) -> TrainConfig:
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise ValueError("nesterov needs optimizer sgd with momentum > 0")
        if self.warmup_epochs and self.scheduler in ("onecycle", "plateau", "none"):
            raise ValueError(
                f"warmup_epochs applies to cosine and step, not to scheduler {self.scheduler}"
            )
        if self.warmup_epochs >= self.max_epochs:
            raise ValueError("warmup_epochs must be below max_epochs")
        return self


class RegisterConfig(_Frozen):
    """MLflow experiment and registered model."""

    model_name: str = Field(min_length=1)
    experiment: str = Field("dlops", min_length=1)


class PromoteConfig(_Frozen):
    """The promotion gate."""

    metric: Literal["accuracy", "f1_macro", "precision_macro", "recall_macro", "roc_auc_ovr"] = (
        "accuracy"
    )
    min_score: float = Field(0.95, ge=0, le=1)


class Config(_Frozen):
    """The whole of params.yaml."""

    seed: int = 42
    paths: Paths
    data: DataConfig = DataConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    preprocess: PreprocessConfig = PreprocessConfig()
    model: ModelConfig = ModelConfig()
    tune: TuneConfig = TuneConfig()
    train: TrainConfig = TrainConfig()
    register_: RegisterConfig = Field(alias="register")
    promote: PromoteConfig = PromoteConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def params_hash(self) -> str:
        """A stable hash of every parameter (sha256 of the canonical JSON)."""
        blob = json.dumps(self.model_dump(by_alias=True), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def section_hash(self, *sections: str) -> str:
        """A stable hash of some top-level sections only (e.g. the augmentation policy)."""
        dump = self.model_dump(by_alias=True)
        blob = json.dumps({s: dump[s] for s in sections}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


_UNION_TAGS = {"FloatRange", "IntRange", "Choices", "float", "int", "str"}


def _format_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"] if str(p) not in _UNION_TAGS)
    if first["type"] == "extra_forbidden":
        problem = "unknown key"
    elif first["type"] == "missing":
        problem = "missing key"
    else:
        problem = first["msg"].removeprefix("Value error, ")
    more = len(err.errors()) - 1
    tail = f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""
    return f"{source}: {key}: {problem}{tail}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse one `section.key=value` override; the value is read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r}: expected section.key=value")
    path = key.strip().split(".")
    if any(not p for p in path):
        raise ConfigError(f"override {text!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return path, value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of the raw params with `-S` overrides applied (keys must already exist)."""
    data = json.loads(json.dumps(raw))
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"override {text!r}: unknown key {'.'.join(path[: i + 1])!r}")
            node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"override {text!r}: {'.'.join(path[:-1])!r} is not a section")
        node[path[-1]] = value
    return data


def validate_params(raw: dict[str, Any], source: str = PARAMS_FILE) -> Config:
    """Validate a raw params mapping into a `Config`, raising `ConfigError` naming the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None


def read_params(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Read params.yaml as a plain mapping."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: parameters file not found")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})".replace("\n", " ")) from exc
    return raw or {}


def load_config(path: str | Path = PARAMS_FILE, overrides: list[str] | None = None) -> Config:
    """Read, override and validate params.yaml."""
    raw = apply_overrides(read_params(path), list(overrides or []))
    return validate_params(raw, str(path))


def write_overrides(path: str | Path, overrides: list[str]) -> Config:
    """Validate overrides, then write them into params.yaml keeping its comments (as `dvc exp`).

    Nothing is written when validation fails.
    """
    cfg = load_config(path, overrides)
    if not overrides:
        return cfg
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    p = Path(path)
    doc = rt.load(p.read_text())
    for text in overrides:
        keys, value = parse_override(text)
        node = doc
        for part in keys[:-1]:
            node = node[part]
        node[keys[-1]] = value
    tmp = p.with_suffix(p.suffix + ".tmp")
    with tmp.open("w") as fh:
        rt.dump(doc, fh)
    tmp.replace(p)
    return cfg
