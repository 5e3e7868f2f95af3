"""params.yaml -> typed, frozen configuration.

`load_config` is the only place that reads params.yaml. Unknown keys, bad values and invalid
combinations (an RNN on images, a regression loss on a classification task, ...) are rejected
with a one-line message that names the key. Overrides use DVC's `-S section.key=value` syntax
and go through the same validation.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from tasks.redact import has_secrets, redact

PARAMS_FILE = "params.yaml"

Modality = Literal["tables", "images", "sequences"]
Task = Literal["classification", "regression"]
Arch = Literal["mlp", "cnn", "resnet", "cnn1d", "fcn", "resnet1d", "rnn"]

# Built-in data sets, shipped inside packages (no network): name -> (modality, task).
BUILTINS: dict[str, tuple[str, str]] = {
    "digits": ("images", "classification"),
    "breast_cancer": ("tables", "classification"),
    "wine": ("tables", "classification"),
    "diabetes": ("tables", "regression"),
    "waveforms": ("sequences", "classification"),
}
# data.name: a file name (the suite) and part of a registered model's name.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq")
SEQUENCE_SUFFIXES = (".npz",)
# The architectures each modality may use; `auto` picks by `auto_arch` (README "Models").
ARCHS: dict[str, tuple[str, ...]] = {
    "tables": ("mlp",),
    "images": ("cnn", "resnet", "mlp"),
    "sequences": ("fcn", "resnet1d", "cnn1d", "rnn", "mlp"),
}
# images up to this many pixels a side use the plain CNN under `auto`; larger ones the ResNet
SMALL_IMAGE = 32


def auto_arch(modality: str, image_size: tuple[int, int] = (8, 8)) -> str:
    """What `model.arch: auto` means, by modality and image size.

    Tables mlp; images cnn up to 32 px a side, else resnet; sequences fcn (Wang et al. 2017: on
    par with ResNet-1D on small sets, at less cost).
    """
    if modality == "images":
        return "cnn" if max(image_size) <= SMALL_IMAGE else "resnet"
    return {"tables": "mlp", "sequences": "fcn"}[modality]


CLASSIFICATION_LOSSES = ("cross_entropy",)
REGRESSION_LOSSES = ("mse", "mae", "huber")
HIGHER_IS_BETTER = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "roc_auc_ovr", "r2")
LOWER_IS_BETTER = ("rmse", "mae")


class ConfigError(ValueError):
    """A params.yaml value or an override is invalid; the message names the key.

    The message is redacted (an override may carry a URL with credentials).
    """

    def __init__(self, message: object) -> None:
        super().__init__(redact(message))


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# First components a `paths.*` value may not start with: the project's own code, config and
# tooling (a stage replaces or deletes its output folders: `checkpoint_dir=tasks` must not be).
RESERVED_PATHS = (
    ".git",
    ".dvc",
    ".dlops",
    ".venv",
    ".env",
    "flows",
    "tasks",
    "models",
    "serving",
    "infra",
    "tests",
    "benchmarks",
    "params.yaml",
    "dvc.yaml",
    "dvc.lock",
    "pyproject.toml",
    "prefect.yaml",
    "Makefile",
    "README.md",
)


def check_relative_path(value: str) -> str:
    """A `paths.*` value as a normalized relative POSIX path inside the project, else ValueError.

    Refused: absolute paths (`/x`, `~/x`, `C:/x`), `..` that leaves the project, the project
    root itself, backslashes, and the project's own code and config (`tasks/`, `.git/`, ...).
    """
    text = str(value).strip()
    if not text:
        raise ValueError("must be a relative path inside the project, got an empty value")
    if "\\" in text or "\0" in text:
        raise ValueError(f"{text!r}: use forward slashes, no backslashes or NUL bytes")
    if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", text) or "://" in text:
        raise ValueError(f"{text!r} is absolute: use a path relative to the project root")
    parts: list[str] = []
    for part in text.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise ValueError(f"{text!r} leaves the project (..): keep it inside")
            parts.pop()
            continue
        parts.append(part)
    if not parts:
        raise ValueError(f"{text!r} is the project root itself: name a folder or file inside it")
    if parts[0] in RESERVED_PATHS:
        raise ValueError(f"{text!r} is inside the project's own {parts[0]}: choose another path")
    return "/".join(parts)


def inside_project(path: str | Path, root: str | Path | None = None) -> Path:
    """`root/path` with symlinks resolved, refusing one that leaves `root` (default: cwd).

    For an existing file the folder holding it is checked (DVC may link a cached file from a
    shared cache); folders and paths not yet written are resolved themselves.
    """
    base = Path(root if root is not None else Path.cwd()).resolve()
    target = base / path
    checked = target.parent if target.is_file() else target
    resolved = checked.resolve()
    if not resolved.is_relative_to(base):
        raise ConfigError(
            f"{path}: resolves to {resolved}, outside the project {base} (a symbolic link?)"
        )
    return target


class Paths(_Frozen):
    """Every file a stage reads or writes, relative to the project root (and staying inside)."""

    raw_dir: str
    suites_dir: str
    validation_dir: str
    processed_dir: str
    best_params: str
    checkpoint_dir: str
    train_dir: str
    train_metrics: str
    metrics: str
    plots_dir: str

    @field_validator("*")
    @classmethod
    def _relative(cls, value: str) -> str:
        return check_relative_path(value)

    @model_validator(mode="after")
    def _apart(self) -> Paths:
        # a stage replaces or deletes its own folder: one output must not hold another
        items = list(self.model_dump().items())
        for key, value in items:
            for other, inner in items:
                if key != other and inner == value:
                    raise ValueError(
                        f"paths.{key} and paths.{other} are both {value!r}: keep outputs apart"
                    )
                if key != other and inner.startswith(f"{value}/"):
                    raise ValueError(
                        f"paths.{key} {value!r} holds paths.{other} {inner!r}: keep outputs "
                        "apart (a stage replaces its folder)"
                    )
        return self

    def check_inside(self, root: str | Path | None = None) -> None:
        """At use time: no path resolves outside `root` (default: cwd) through a symlink."""
        for key, value in self.model_dump().items():
            try:
                inside_project(value, root)
            except ConfigError as exc:
                raise ConfigError(f"paths.{key}: {exc}") from exc


# data.source: the protocols a source may use (`local`: a plain path), the archive formats that
# may wrap them (`zip://member::<inner URL>`), and the environment indirection for secrets.
DEFAULT_PROTOCOLS = ("local", "file", "http", "https", "s3")
CONTAINER_PROTOCOLS = ("zip", "tar")
ENV_PREFIX = "env:"
DATA_URL_ENV = "DLOPS_DATA_URL"  # what `dlops run --data <URL with credentials>` sets
_DATA_ENV_NAME = re.compile(r"^DLOPS_DATA[A-Z0-9_]*$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)


def source_chain(source: str) -> list[tuple[str, str]]:
    """(protocol, rest) of each link of an fsspec chain, outermost first; `local` for a path.

    `zip://pets::https://host/imgs.zip` -> [("zip", "pets"), ("https", "host/imgs.zip")].
    """
    links = []
    parts = source.split("::")
    for i, link in enumerate(parts):
        m = _SCHEME.match(link)
        if m:
            links.append((m.group(1).lower(), m.group(2)))
        elif i < len(parts) - 1 and re.match(r"^[A-Za-z][A-Za-z0-9+.-]*$", link):
            links.append((link.lower(), ""))  # fsspec's `simplecache::<URL>` form
        else:
            links.append(("local", link))
    return links


def resolve_source(source: str) -> str:
    """The source itself, or for `env:DLOPS_DATA_...` the value of that environment variable."""
    if not source.startswith(ENV_PREFIX):
        return source
    name = source[len(ENV_PREFIX) :]
    if not _DATA_ENV_NAME.match(name):
        raise ValueError(
            f"{source!r}: env: reads only variables named DLOPS_DATA..., e.g. "
            f"{ENV_PREFIX}{DATA_URL_ENV}"
        )
    value = os.environ.get(name, "").strip()
    if not value:
        raise ValueError(
            f"{source}: the environment variable {name} is not set (export it, or pass the URL "
            "with dlops run --data)"
        )
    return value


def check_protocols(source: str, allowed: tuple[str, ...] | list[str]) -> None:
    """Refuse a source whose protocols are not allowed (ValueError, the URL never shown).

    A chain is archives (zip, tar) wrapping one location; the location's protocol must be in
    `allowed`, and the archives are allowed when it is.
    """
    chain = source_chain(source)
    *containers, (location, _) = chain
    for proto, _ in containers:
        if proto not in CONTAINER_PROTOCOLS:
            raise ValueError(
                f"protocol {proto!r} cannot wrap another source (only "
                f"{', '.join(CONTAINER_PROTOCOLS)} can, as zip://member::<URL>)"
            )
    if location in CONTAINER_PROTOCOLS:
        raise ValueError(f"{location}:// needs the archive's location after '::'")
    if location not in allowed:
        raise ValueError(
            f"protocol {location!r} is not allowed (data.protocols: {', '.join(allowed)})"
        )


def _inner_path(source: str) -> str:
    """The path the modality and name come from: the innermost member, else the archive."""
    chain = source_chain(source)
    for _, rest in chain:
        if rest.strip("/"):
            return rest.split("?", 1)[0]
    return ""


def infer_modality(source: str) -> str:
    """The modality of a source from its name alone (no I/O): suffix, else a folder of images."""
    chain = source_chain(source)
    name = _inner_path(source).rstrip("/").lower()
    if name.endswith(TABLE_SUFFIXES):
        return "tables"
    if name.endswith(SEQUENCE_SUFFIXES):
        return "sequences"
    archive_root = len(chain) > 1 and not chain[0][1].strip("/")  # zip://::<URL of a.zip>
    if not archive_root and re.search(r"\.[a-z0-9]{1,8}$", name.rsplit("/", 1)[-1]):
        raise ValueError(
            f"cannot infer the modality of {redact(source)!r} from its suffix: expected a CSV or "
            "Parquet file (tables), an .npz (sequences) or a folder of class sub-folders "
            "(images); set data.modality"
        )
    return "images"


class DataConfig(_Frozen):
    """Which data ingest copies: a built-in set, or the user's source (path or fsspec URI)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    dataset: Literal["digits", "breast_cancer", "wine", "diabetes", "waveforms"] = "digits"
    # before `source`: its validator reads them
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    max_bytes: int = Field(5_000_000_000, ge=1)
    max_files: int = Field(200_000, ge=1)
    source: str | None = None
    # The data's name (its GX suite's file name, the default registered model's suffix);
    # null: the built-in's name or the source's stem. `name` itself is the resolved property.
    name_: str | None = Field(None, alias="name", pattern=NAME_PATTERN)
    modality: Literal["auto", "tables", "images", "sequences"] = "auto"
    target: str = "target"
    task: Literal["auto", "classification", "regression"] = "auto"
    group: str | None = None

    @field_validator("protocols")
    @classmethod
    def _protocols(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = tuple(str(p).strip().lower() for p in value)
        for proto in out:
            if proto in CONTAINER_PROTOCOLS:
                raise ValueError(
                    f"{proto} is allowed whenever the archive's own location is: list that one"
                )
            if proto != "local" and not re.match(r"^[a-z][a-z0-9+.-]*$", proto):
                raise ValueError(f"{proto!r} is not a protocol name")
        return out

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None or not str(value).strip():
            return None
        value = str(value).strip()
        if has_secrets(value):
            raise ValueError(
                "a URL with credentials or a query string must not be in params.yaml (dvc.lock, "
                f"MLflow and the logs would record it): export {DATA_URL_ENV}='<the URL>' and "
                f"set data.source={ENV_PREFIX}{DATA_URL_ENV} (dlops run --data does both)"
            )
        resolved = resolve_source(value)
        check_protocols(resolved, info.data.get("protocols", DEFAULT_PROTOCOLS))
        return value

    @model_validator(mode="after")
    def _known_modality(self) -> DataConfig:
        if self.source is None:
            modality, _ = BUILTINS[self.dataset]
            if self.modality not in ("auto", modality):
                raise ValueError(
                    f"data.modality {self.modality} does not match the built-in {self.dataset} "
                    f"({modality})"
                )
        elif self.modality == "auto":
            infer_modality(self.resolved_source)
        if self.group is not None and self.resolved_modality != "tables":
            raise ValueError("data.group applies to tables only")
        return self

    @property
    def resolved_source(self) -> str | None:
        """The source to read, `env:DLOPS_DATA_...` resolved (may hold secrets: never log it)."""
        return None if self.source is None else resolve_source(self.source)

    @property
    def shown_source(self) -> str | None:
        """The source as it may be recorded and printed (credentials and queries masked)."""
        return None if self.source is None else redact(self.resolved_source)

    @property
    def name(self) -> str:
        """`data.name`, else the built-in's name, else the source's file or folder stem."""
        if self.name_:
            return self.name_
        if self.source is None:
            return self.dataset
        inner = _inner_path(self.resolved_source).rstrip("/")
        stem = inner.rsplit("/", 1)[-1].split(".", 1)[0]
        return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-") or "data"

    @property
    def resolved_modality(self) -> str:
        """tables, images or sequences."""
        if self.source is None:
            return BUILTINS[self.dataset][0]
        if self.modality != "auto":
            return self.modality
        return infer_modality(self.resolved_source)

    @property
    def known_task(self) -> str | None:
        """The task when known without reading the data (explicit, built-in, or images)."""
        if self.task != "auto":
            return self.task
        if self.source is None:
            return BUILTINS[self.dataset][1]
        return "classification" if self.resolved_modality == "images" else None


class ValidateConfig(_Frozen):
    """Bounds of the GX suites (inferred on a source's first run, then enforced)."""

    min_rows: int = Field(50, ge=1)
    min_rows_per_class: int = Field(5, ge=1)
    null_slack: float = Field(0.05, ge=0, le=1)
    range_slack: float = Field(0.1, ge=0)
    balance_slack: float = Field(0.5, ge=0, le=1)
    image_min_size: int = Field(8, ge=1)
    max_leakage: float = Field(0.0, ge=0, le=1)
    max_missing_target: float = Field(0.05, ge=0, le=1)


class AugmentConfig(_Frozen):
    """Training-time augmentation (images: affine, flips, colour; sequences: noise, shifts)."""

    p: float = Field(0.5, ge=0, le=1)
    max_shift: float = Field(1.0, ge=0)
    max_rotation: float = Field(10.0, ge=0, le=180)
    hflip: bool = False
    vflip: bool = False
    brightness: float = Field(0.0, ge=0, le=1)
    contrast: float = Field(0.0, ge=0, lt=1)
    jitter: float = Field(0.0, ge=0)
    scale: float = Field(0.0, ge=0, lt=1)
    window: float = Field(0.0, ge=0, lt=1)
    warp: float = Field(0.0, ge=0, lt=1)


class PreprocessConfig(_Frozen):
    """Cleaning, split fractions, per-modality preprocessing and augmentation."""

    val_size: float = Field(0.15, gt=0, lt=1)
    test_size: float = Field(0.2, gt=0, lt=1)
    dedupe: bool = True
    impute: Literal["median", "mean"] = "median"
    encode: Literal["onehot", "ordinal"] = "onehot"
    max_categories: int = Field(50, ge=1)
    image_size: tuple[int, int] = (8, 8)
    image_channels: Literal["auto", 1, 3] = "auto"
    augment: AugmentConfig = AugmentConfig()

    @field_validator("image_size")
    @classmethod
    def _size(cls, value: tuple[int, int]) -> tuple[int, int]:
        if min(value) < 1:
            raise ValueError("image_size must be two positive integers [height, width]")
        return value

    @model_validator(mode="after")
    def _fractions(self) -> PreprocessConfig:
        if self.val_size + self.test_size >= 0.9:
            raise ValueError("val_size + test_size must leave at least 10% for training")
        return self


class MLPOptions(_Frozen):
    """Multi-layer perceptron (tables; flattens any other input)."""

    layers: int = Field(2, ge=1)
    width: int = Field(128, ge=1)


class CNNOptions(_Frozen):
    """2D CNN (images): blocks of conv, batch norm, activation, max-pool; a dense head."""

    blocks: int = Field(2, ge=1)
    channels: int = Field(32, ge=1)
    kernel_size: int = Field(3, ge=1)
    hidden: int = Field(128, ge=1)


class CNN1DOptions(_Frozen):
    """1D CNN (sequences)."""

    blocks: int = Field(3, ge=1)
    channels: int = Field(32, ge=1)
    kernel_size: int = Field(5, ge=1)
    hidden: int = Field(64, ge=1)


class ResNetOptions(_Frozen):
    """Residual CNN (images): a stem, then blocks of two 3x3 convs with a skip; global pooling."""

    blocks: int = Field(3, ge=1)
    channels: int = Field(16, ge=1)
    kernel_size: int = Field(3, ge=1)


class FCNOptions(_Frozen):
    """Fully convolutional network (sequences, Wang et al. 2017): three conv + BN blocks."""

    channels: int = Field(64, ge=1)  # the blocks have channels, 2x channels, channels
    kernel_sizes: tuple[int, int, int] = (8, 5, 3)


class ResNet1DOptions(_Frozen):
    """ResNet for sequences (Wang et al. 2017): residual blocks of three convs each."""

    blocks: int = Field(3, ge=1)
    channels: int = Field(32, ge=1)  # first block; later blocks have twice as many
    kernel_sizes: tuple[int, int, int] = (8, 5, 3)


class RNNOptions(_Frozen):
    """GRU or LSTM (sequences), optionally bidirectional and stacked."""

    cell: Literal["gru", "lstm"] = "gru"
    hidden: int = Field(64, ge=1)
    layers: int = Field(1, ge=1)
    bidirectional: bool = False


class ModelConfig(_Frozen):
    """Architecture: the arch, shared options, and each arch's own options."""

    arch: Literal["auto", "mlp", "cnn", "resnet", "cnn1d", "fcn", "resnet1d", "rnn"] = "auto"
    activation: Literal["relu", "leaky_relu", "gelu", "tanh", "sigmoid"] = "relu"
    dropout: float = Field(0.2, ge=0, lt=1)
    batch_norm: bool = True
    init: Literal["default", "kaiming", "xavier", "orthogonal"] = "default"
    mlp: MLPOptions = MLPOptions()
    cnn: CNNOptions = CNNOptions()
    resnet: ResNetOptions = ResNetOptions()
    cnn1d: CNN1DOptions = CNN1DOptions()
    fcn: FCNOptions = FCNOptions()
    resnet1d: ResNet1DOptions = ResNet1DOptions()
    rnn: RNNOptions = RNNOptions()


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

    choices: list[bool | int | float | str] = Field(min_length=1)


Dimension = FloatRange | IntRange | Choices
# Sections a search dimension may reach (dotted params.yaml paths).
TUNABLE_SECTIONS = ("model", "train", "preprocess.augment")


class TuneConfig(_Frozen):
    """The Optuna study; `space` maps params.yaml paths to dimensions."""

    n_trials: int = Field(8, ge=1)
    timeout_s: float | None = Field(60, gt=0)
    max_epochs: int = Field(4, ge=1)
    # each trial (each fold) takes at least this many optimizer steps (see TrainConfig)
    min_steps: int = Field(64, ge=0)
    max_steps: int | None = Field(None, ge=1)
    # a validation split smaller than this: trials are scored by k-fold CV inside train
    min_val_examples: int = Field(50, ge=0)
    cv_folds: int = Field(5, ge=2)
    # `model.arch: auto` and no model.arch in `space`: the study ranges over these per modality
    archs: dict[Modality, list[Arch]] = Field(default_factory=dict)
    pruner: Literal["hyperband", "median", "none"] = "hyperband"
    # auto: $DLOPS_OPTUNA_STORAGE when set, else the journal file; journal; memory (in-process).
    # Never a URL: it would reach dvc.lock and MLflow (see tasks.optuna_storage).
    storage: Literal["auto", "journal", "memory"] = "auto"
    # Worker processes sharing the study (the journal file on one host, or PostgreSQL).
    workers: int = Field(1, ge=1)
    space: dict[str, Dimension] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _budget(self) -> TuneConfig:
        if self.max_steps is not None and self.min_steps > self.max_steps:
            raise ValueError("min_steps must not exceed max_steps")
        for modality, archs in self.archs.items():
            wrong = [a for a in archs if a not in ARCHS[modality]]
            if wrong:
                raise ValueError(
                    f"archs.{modality}: {', '.join(wrong)} does not apply to {modality} "
                    f"(use {', '.join(ARCHS[modality])})"
                )
        return self

    @field_validator("storage", mode="before")
    @classmethod
    def _storage(cls, value: Any) -> Any:
        if isinstance(value, str) and ("://" in value or ":" in value):
            raise ValueError(
                "a storage URL must not be in params.yaml (dvc.lock and MLflow would record it, "
                "password included): export DLOPS_OPTUNA_STORAGE='<URL>' and keep tune.storage "
                "auto"
            )
        if value is None:
            raise ValueError("null is not a storage: use memory (in-process), journal or auto")
        return value

    @field_validator("space")
    @classmethod
    def _sections(cls, space: dict[str, Any]) -> dict[str, Any]:
        for key in space:
            if not key.startswith(tuple(f"{s}." for s in TUNABLE_SECTIONS)):
                raise ValueError(
                    f"search dimension {key!r} must be a params.yaml path under "
                    + ", ".join(TUNABLE_SECTIONS)
                )
        return space


class TrainConfig(_Frozen):
    """Compilation (loss, optimizer, schedule) and the training loop."""

    max_epochs: int = Field(30, ge=1)
    # Budget in optimizer steps: a small data set repeats its examples inside an epoch until
    # max_epochs epochs hold min_steps steps; max_steps caps the total (models.training.budget).
    min_steps: int = Field(300, ge=0)
    max_steps: int | None = Field(None, ge=1)
    patience: int = Field(6, ge=1)
    # k > 1: k members (seeds seed, seed+1, ...) whose averaged probabilities are the model
    ensemble: int = Field(1, ge=1)
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
    loss: Literal["auto", "cross_entropy", "mse", "mae", "huber"] = "auto"
    huber_delta: float = Field(1.0, gt=0)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    class_weights: Literal["none", "balanced"] = "none"
    precision: Literal["32-true", "16-mixed", "bf16-mixed"] = "32-true"
    accelerator: Literal["cpu", "gpu", "auto"] = "cpu"
    devices: int = Field(1, ge=1)
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    threads: int = Field(1, ge=1)
    deterministic: bool = True

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
        if self.precision == "16-mixed" and self.accelerator == "cpu":
            raise ValueError("precision 16-mixed needs a GPU; use bf16-mixed on CPU")
        if self.max_steps is not None and self.min_steps > self.max_steps:
            raise ValueError("min_steps must not exceed max_steps")
        if self.ensemble > 1 and self.devices > 1:
            raise ValueError("ensemble members train in one process: use devices 1")
        return self


class RegisterConfig(_Frozen):
    """MLflow experiment and registered model (null name: dlops-<data name>)."""

    model_name: str | None = None
    experiment: str = Field("dlops", min_length=1)


class PromoteConfig(_Frozen):
    """The promotion gate: a test metric, compared with @champion's, and an absolute bound."""

    metric: Literal[
        "auto",
        "accuracy",
        "f1_macro",
        "precision_macro",
        "recall_macro",
        "roc_auc_ovr",
        "r2",
        "rmse",
        "mae",
    ] = "auto"
    threshold: float | Literal["auto"] | None = "auto"

    def bound(self, metric: str) -> float | None:
        """The absolute bound for a metric: `auto` is 0.9 for classification scores, 0.3 for r2."""
        if self.threshold != "auto":
            return self.threshold
        return {"r2": 0.3}.get(metric, None if metric in LOWER_IS_BETTER else 0.9)


class ServeConfig(_Frozen):
    """`dlops serve`: dynamic batching, processes and limits (the model follows @champion)."""

    max_batch_size: int = Field(64, ge=1)
    batch_timeout: float = Field(0.005, ge=0, le=1)
    workers: int = Field(1, ge=1)
    threads: int = Field(1, ge=1)
    poll_s: float = Field(5.0, gt=0)
    max_rows: int = Field(1024, ge=1)
    max_body_bytes: int = Field(20_000_000, ge=1)
    timeout_s: float = Field(30.0, gt=0)
    sample_rate: float = Field(0.0, ge=0, le=1)
    sample_dir: str = Field("reports/served", min_length=1)  # relative: to the project root


CLASSIFICATION_METRICS = HIGHER_IS_BETTER[:-1]
REGRESSION_METRICS = ("r2", "rmse", "mae")


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
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    promote: PromoteConfig = PromoteConfig()
    serve: ServeConfig = ServeConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _combinations(self) -> Config:
        modality = self.data.resolved_modality
        if self.model.arch != "auto" and self.model.arch not in ARCHS[modality]:
            raise ValueError(
                f"model.arch: {self.model.arch} does not apply to {modality} "
                f"(use {', '.join(ARCHS[modality][:-1])} or {ARCHS[modality][-1]})"
            )
        task = self.data.known_task
        if task is not None:
            check_task(self, task)
        return self

    @property
    def arch(self) -> str:
        """The architecture, `auto` resolved by modality."""
        if self.model.arch != "auto":
            return self.model.arch
        return auto_arch(self.modality, self.preprocess.image_size)

    def search_space(self) -> dict[str, Dimension]:
        """`tune.space`, with model.arch ranging over `tune.archs[modality]` under `auto`."""
        space = dict(self.tune.space)
        archs = self.tune.archs.get(self.modality)
        if "model.arch" not in space and self.model.arch == "auto" and archs:
            space = {"model.arch": Choices(choices=list(archs)), **space}
        return space

    @property
    def modality(self) -> str:
        """tables, images or sequences."""
        return self.data.resolved_modality

    @property
    def model_name(self) -> str:
        """The registered model's name."""
        return self.register_.model_name or f"dlops-{self.data.name}"

    def loss(self, task: str) -> str:
        """The loss, `auto` resolved by task."""
        if self.train.loss != "auto":
            return self.train.loss
        return "cross_entropy" if task == "classification" else "mse"

    def promote_metric(self, task: str) -> str:
        """The promotion metric, `auto` resolved by task."""
        if self.promote.metric != "auto":
            return self.promote.metric
        return "accuracy" if task == "classification" else "r2"

    def with_values(self, values: dict[str, Any]) -> Config:
        """A validated copy with dotted params.yaml paths set (tuned values, for example)."""
        raw = self.model_dump(by_alias=True)
        for key, value in values.items():
            set_path(raw, key.split("."), value, key)
        return validate_params(raw, "tuned values")

    def params_hash(self) -> str:
        """A stable hash of every parameter (sha256 of the canonical JSON)."""
        blob = json.dumps(self.model_dump(by_alias=True), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()

    def section_hash(self, *sections: str) -> str:
        """A stable hash of some sections only (dotted paths, e.g. the augmentation policy)."""
        dump = self.model_dump(by_alias=True)
        picked = {}
        for s in sections:
            node: Any = dump
            for part in s.split("."):
                node = node[part]
            picked[s] = node
        blob = json.dumps(picked, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()


def check_task(cfg: Config, task: str, sections: tuple[str, ...] = ("train", "promote")) -> None:
    """Reject parameters that do not fit the task (raises ValueError naming the key).

    `sections`: whose keys to check (a stage checks the keys it reads: tune and train `train`,
    promote `promote`; the flow checks both once ingest has told the task).
    """
    t, loss = cfg.train, cfg.train.loss
    train, promote = "train" in sections, "promote" in sections
    if task == "classification":
        if train and loss in REGRESSION_LOSSES:
            raise ValueError(
                f"train.loss: {loss} is a regression loss, the task is classification"
            )
        if promote and cfg.promote.metric in REGRESSION_METRICS:
            raise ValueError(f"promote.metric: {cfg.promote.metric} is a regression metric")
    else:
        if train and loss in CLASSIFICATION_LOSSES:
            raise ValueError(
                f"train.loss: {loss} is a classification loss, the task is regression"
            )
        if promote and cfg.promote.metric in CLASSIFICATION_METRICS:
            raise ValueError(f"promote.metric: {cfg.promote.metric} is a classification metric")
        if train and t.label_smoothing:
            raise ValueError("train.label_smoothing applies to classification only")
        if train and t.class_weights != "none":
            raise ValueError("train.class_weights applies to classification only")


def require_task(
    cfg: Config, task: str, where: str, sections: tuple[str, ...] = ("train", "promote")
) -> None:
    """`check_task` once the data has told the task; raises ConfigError naming the key."""
    try:
        check_task(cfg, task, sections)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def set_path(raw: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    """Set a dotted path in a raw params mapping; every key but the last must exist."""
    node = raw
    i = 0
    while i < len(path) - 1:
        rest = ".".join(path[i:])
        # tune.space's keys are dotted params.yaml paths themselves
        if isinstance(node, dict) and (rest in node or path[:i] == ["tune", "space"]):
            break
        part = path[i]
        if not isinstance(node, dict) or part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"override {text!r}: unknown key {'.'.join(path[: i + 1])!r}")
        node = node[part]
        i += 1
    node[".".join(path[i:])] = value


_UNION_TAGS = {"FloatRange", "IntRange", "Choices", "float", "int", "str", "bool"}


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
    if not key:  # a cross-section check: its message starts with the key
        return f"{source}: {problem}{tail}"
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
    """Return a copy of the raw params with `-S` overrides applied (sections must exist)."""
    data = json.loads(json.dumps(raw))
    for text in overrides:
        path, value = parse_override(text)
        set_path(data, path, value, text)
    return data


def _check_space(cfg: Config, source: str) -> None:
    """Every search dimension names a real key, and each of its values validates there."""
    for key, dim in cfg.tune.space.items():
        values = dim.choices if isinstance(dim, Choices) else [dim.low, dim.high]
        for value in values:
            try:
                cfg.with_values({key: value})
            except ConfigError as exc:
                detail = str(exc).removeprefix("tuned values: ")
                raise ConfigError(f"{source}: tune.space.{key}: {value!r}: {detail}") from None


def validate_params(raw: dict[str, Any], source: str = PARAMS_FILE) -> Config:
    """Validate a raw params mapping into a `Config`, raising `ConfigError` naming the key."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_error(err, source)) from None
    if source != "tuned values":
        _check_space(cfg, source)
    return cfg


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
    cfg = validate_params(raw, str(path))
    cfg.paths.check_inside()  # at use time: symlinks may lead out of the project
    return cfg


def write_overrides(
    path: str | Path, overrides: list[str], source: str | Path | None = None
) -> Config:
    """Validate `source` (default: `path`) + overrides, then write the result to `path`.

    Comments and layout of the source are kept (ruamel round trip). A run never calls this on
    the checkout's params.yaml: workspaces get their own copy (`flows.workspace`). Nothing is
    written when validation fails; the file is replaced atomically.
    """
    src = Path(source) if source is not None else Path(path)
    cfg = load_config(src, overrides)
    p = Path(path)
    if not overrides and src.resolve() == p.resolve():
        return cfg
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    doc = rt.load(src.read_text())
    for text in overrides:
        keys, value = parse_override(text)
        set_path(doc, keys, value, text)
    tmp = p.with_name(f".{p.name}.tmp")
    with tmp.open("w") as fh:
        rt.dump(doc, fh)
    tmp.replace(p)
    return cfg


def canonical_overrides(overrides: list[str]) -> list[str]:
    """Overrides as `key=value` with values in canonical JSON, the last of each key kept, sorted.

    Two spellings of the same overrides (`train.lr=.01` and `train.lr=0.01`) give one list.
    """
    last: dict[str, Any] = {}
    for text in overrides:
        keys, value = parse_override(text)
        last[".".join(keys)] = value
    return [f"{k}={json.dumps(last[k], sort_keys=True)}" for k in sorted(last)]
