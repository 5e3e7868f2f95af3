"""Preprocess: clean, de-duplicate, split, check leakage, fit the preprocessing on train only.

Splits are seeded, stratified for classification, and keep each group inside one split.

Writes `processed_dir/{train,val,test}.parquet` (tables: raw feature columns + `__target__`) or
`.npz` (images: uint8 (N, H, W, C) at the configured size; sequences: float32 (N, T, C)),
`preprocessor.json` (the fitted preprocessing, shipped inside the registered model) and
`split.json` (counts, dropped rows, leakage report).

Rows without a target (an empty target cell, a NaN sequence label) are dropped and counted
(`dropped_missing_target`); validation already refused more than `validate.max_missing_target`
of them. Rows that cannot be used (a sequence holding NaN or inf, an image that does not
decode) are `dropped_invalid`.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tasks.config import Config
from tasks.sources import (
    DataError,
    Manifest,
    list_images,
    missing_labels,
    read_image,
    read_sequences,
    read_table,
    row_hashes,
)
from tasks.utils import atomic_dir, write_json

TARGET_COLUMN = "__target__"
SPLITS = ("train", "val", "test")
SPLIT_FILE = "split.json"


@dataclass(frozen=True)
class PreprocessResult:
    """Where the splits went, how many rows each holds and what was dropped."""

    processed_dir: Path
    counts: dict[str, int]
    dropped_duplicates: int
    dropped_invalid: int
    leakage: dict[str, Any]
    dropped_missing_target: int = 0

    @classmethod
    def load(cls, cfg: Config) -> PreprocessResult:
        """The last preprocessing's result, from its split.json."""
        from tasks.utils import read_json

        out = Path(cfg.paths.processed_dir)
        info = read_json(out / SPLIT_FILE)
        return cls(
            processed_dir=out,
            counts=dict(info["counts"]),
            dropped_duplicates=int(info["dropped_duplicates"]),
            dropped_invalid=int(info["dropped_invalid"]),
            leakage=dict(info["leakage"]),
            dropped_missing_target=int(info.get("dropped_missing_target", 0)),
        )


@dataclass
class Examples:
    """Raw inputs (a frame or an array), encoded labels, optional groups, content hashes."""

    x: Any
    y: np.ndarray
    hashes: np.ndarray
    groups: np.ndarray | None = None

    def take(self, idx: np.ndarray) -> Examples:
        """A subset by position."""
        x = self.x.iloc[idx].reset_index(drop=True) if hasattr(self.x, "iloc") else self.x[idx]
        g = None if self.groups is None else self.groups[idx]
        return Examples(x, self.y[idx], self.hashes[idx], g)

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class Dropped:
    """Rows dropped while loading: without a target, and unusable."""

    missing_target: int = 0
    invalid: int = 0


def load_examples(cfg: Config, m: Manifest) -> tuple[Examples, Examples | None, Dropped, Any]:
    """The cleaned examples (and a fixed test split), the rows dropped, and the target."""
    import pandas as pd

    from models.preprocessing import Target, fit_image

    path = m.data_path(cfg.paths.raw_dir)
    fixed: Examples | None = None
    invalid = missing = 0
    if m.modality == "tables":
        frame = read_table(path)
        keep = frame[m.target].notna()
        missing = int((~keep).sum())
        frame = frame[keep].reset_index(drop=True)
        y_raw = frame.pop(m.target)
        groups = frame.pop(m.group).astype(str).to_numpy() if m.group else None
        for c in frame.columns:
            if not pd.api.types.is_numeric_dtype(frame[c]) or pd.api.types.is_bool_dtype(frame[c]):
                frame[c] = frame[c].map(lambda v: v if pd.isna(v) else str(v)).astype(object)
        frame.columns = [str(c) for c in frame.columns]
        target = Target.fit(m.task, y_raw, m.classes)
        y = _labels(target, y_raw)
        ex = Examples(frame, y, row_hashes(frame), groups)
    elif m.modality == "images":
        size = tuple(cfg.preprocess.image_size)
        decoded, labels = [], []
        for file, label in list_images(path):
            try:
                decoded.append(read_image(file))
                labels.append(label)
            except DataError:
                invalid += 1  # validation named it; training goes on without it
        if cfg.preprocess.image_channels == "auto":
            channels = 3 if any(img.shape[2] == 3 for img in decoded) else 1
        else:
            channels = int(cfg.preprocess.image_channels)
        x = np.stack([fit_image(img, size, channels) for img in decoded])
        target = Target.fit(m.task, labels, m.classes)
        y = target.encode(labels)
        ex = Examples(x, y, row_hashes(x))
    else:
        arrays = read_sequences(path)
        labelled = {k: ~missing_labels(arrays[k]) for k in ("y", "y_test") if k in arrays}
        target = Target.fit(m.task, arrays["y"][labelled["y"]], m.classes)

        def usable(xk: str, yk: str) -> tuple[Examples, int, int]:
            x, y = arrays[xk], arrays[yk]
            finite = np.isfinite(x).all(axis=(1, 2))
            ok = finite & labelled[yk]
            examples = Examples(x[ok], _labels(target, y[ok]), row_hashes(x[ok]))
            return examples, int((~labelled[yk]).sum()), int((labelled[yk] & ~finite).sum())

        ex, missing, invalid = usable("x", "y")
        if "x_test" in arrays:
            fixed, no_label, bad = usable("x_test", "y_test")
            missing, invalid = missing + no_label, invalid + bad
    return ex, fixed, Dropped(missing, invalid), target


def _labels(target: Any, y: Any) -> np.ndarray:
    """Classification: class indices; regression: the raw values as float64."""
    from models.preprocessing import InputError

    if target.task == "classification":
        try:
            return target.encode(y)
        except InputError as exc:
            raise DataError(f"target: {exc}") from None
    return np.asarray(y, dtype=np.float64)


def dedupe(ex: Examples) -> tuple[Examples, int]:
    """Drop exact duplicates (same content hash), keeping the first."""
    _, first = np.unique(ex.hashes, return_index=True)
    keep = np.sort(first)
    return ex.take(keep), len(ex) - len(keep)


def _split_two(
    ex: Examples, fraction: float, seed: int, stratify: bool, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of (rest, held out): by group when groups exist, else stratified or random."""
    from sklearn.model_selection import GroupShuffleSplit, train_test_split

    idx = np.arange(len(ex))
    if ex.groups is not None:
        splitter = GroupShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
        rest, held = next(splitter.split(idx, groups=ex.groups))
        return rest, held
    try:
        rest, held = train_test_split(
            idx, test_size=fraction, random_state=seed, stratify=ex.y if stratify else None
        )
    except ValueError as exc:
        raise DataError(f"{where}: cannot split ({' '.join(str(exc).split())})") from None
    return np.sort(rest), np.sort(held)


def split(ex: Examples, fixed: Examples | None, cfg: Config, task: str, where: str) -> dict:
    """train/val/test: seeded; stratified for classification; groups kept inside one split."""
    p, stratify = cfg.preprocess, task == "classification"
    if fixed is not None:
        rest, test = ex, fixed
        val_fraction = p.val_size
    else:
        rest_idx, test_idx = _split_two(ex, p.test_size, cfg.seed, stratify, where)
        rest, test = ex.take(rest_idx), ex.take(test_idx)
        val_fraction = p.val_size / (1 - p.test_size)
    train_idx, val_idx = _split_two(rest, val_fraction, cfg.seed, stratify, where)
    return {"train": rest.take(train_idx), "val": rest.take(val_idx), "test": test}


def leakage(splits: dict[str, Examples]) -> dict[str, Any]:
    """Exact duplicates (by content hash) shared between splits."""
    sets = {name: set(ex.hashes.tolist()) for name, ex in splits.items()}
    pairs = {}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        pairs[f"{a}-{b}"] = len(sets[a] & sets[b])
    held = [h for name in ("val", "test") for h in splits[name].hashes.tolist()]
    leaked = sum(
        1
        for name in ("val", "test")
        for h in splits[name].hashes.tolist()
        if any(h in sets[o] for o in SPLITS if o != name)
    )
    return {
        "shared_hashes": pairs,
        "leaked_examples": leaked,
        "held_out_examples": len(held),
        "fraction": leaked / len(held) if held else 0.0,
    }


def _fit(cfg: Config, modality: str, train: Examples, target: Any) -> Any:
    from models.preprocessing import ImagePreprocessor, SequencePreprocessor, TablePreprocessor

    p = cfg.preprocess
    if modality == "tables":
        return TablePreprocessor.fit(train.x, target, p.impute, p.encode, p.max_categories)
    if modality == "images":
        return ImagePreprocessor.fit(train.x, target, p.image_size, train.x.shape[3])
    return SequencePreprocessor.fit(train.x, target)


def _save_split(folder: Path, name: str, ex: Examples) -> None:
    if hasattr(ex.x, "to_parquet"):
        frame = ex.x.copy()
        frame[TARGET_COLUMN] = ex.y
        frame.to_parquet(folder / f"{name}.parquet", index=False)
    else:
        np.savez(folder / f"{name}.npz", x=ex.x, y=ex.y)


def run(cfg: Config) -> PreprocessResult:
    """Write the splits, the fitted preprocessor and split.json; refuse leakage over the bound."""
    from models.preprocessing import save

    m = Manifest.load(cfg.paths.raw_dir)
    where = str(m.data_path(cfg.paths.raw_dir))
    ex, fixed, dropped, target = load_examples(cfg, m)
    n_dup = 0
    if cfg.preprocess.dedupe:
        ex, n_dup = dedupe(ex)
    if m.task == "classification" and len(np.unique(ex.y)) < 2:
        raise DataError(f"{where}: fewer than two classes left after cleaning")
    splits = split(ex, fixed, cfg, m.task, where)
    leak = leakage(splits)
    bound = cfg.validate_.max_leakage
    if leak["fraction"] > bound:
        raise DataError(
            f"{where}: leakage: {leak['leaked_examples']} of {leak['held_out_examples']} val/test "
            f"examples duplicate another split ({leak['fraction']:.1%} > validate.max_leakage "
            f"{bound:.1%}; shared: {leak['shared_hashes']})"
        )
    if m.task == "regression":  # standardize the target with training values only
        from models.preprocessing import Target

        target = Target.fit(m.task, splits["train"].y)
    pre = _fit(cfg, m.modality, splits["train"], target)
    out = Path(cfg.paths.processed_dir)
    counts = {name: len(s) for name, s in splits.items()}
    info: dict[str, Any] = {
        "modality": m.modality,
        "task": m.task,
        "counts": counts,
        "dropped_invalid": dropped.invalid,
        "dropped_missing_target": dropped.missing_target,
        "dropped_duplicates": n_dup,
        "seed": cfg.seed,
        "leakage": leak,
        "input_shape": list(pre.input_shape),
    }
    if m.task == "classification":
        k = len(target.classes)
        info["classes"] = target.classes
        info["class_counts"] = {
            name: np.bincount(s.y, minlength=k).tolist() for name, s in splits.items()
        }
    with atomic_dir(out) as tmp:
        for name, s in splits.items():
            _save_split(tmp, name, s)
        save(pre, tmp / "preprocessor.json")
        write_json(tmp / SPLIT_FILE, info)
    return PreprocessResult(out, counts, n_dup, dropped.invalid, leak, dropped.missing_target)


def main() -> None:
    """Entry point for `python -m tasks.preprocess` (dvc.yaml)."""
    from tasks.entry import run_stage

    argparse.ArgumentParser(description=__doc__).parse_args()

    def body(cfg: Config) -> str:
        r = run(cfg)
        return (
            f"preprocess: {r.counts} (dropped {r.dropped_missing_target} without a target, "
            f"{r.dropped_invalid} invalid, {r.dropped_duplicates} duplicate rows; "
            f"leakage {r.leakage['fraction']:.1%}) -> {r.processed_dir}"
        )

    run_stage("preprocess", body)


if __name__ == "__main__":
    main()
