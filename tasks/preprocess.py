"""Preprocess: clean, split (stratified, seeded), fit the normalization on training rows only."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from tasks.config import Config, load_config
from tasks.ingest import LABEL, PIXELS
from tasks.utils import atomic_dir, write_json


@dataclass(frozen=True)
class PreprocessResult:
    """Where the splits went and how many rows each holds."""

    processed_dir: Path
    counts: dict[str, int]
    dropped_duplicates: int
    dropped_invalid: int


def clean(frame: pd.DataFrame, cfg: Config) -> tuple[pd.DataFrame, int, int]:
    """Drop rows with nulls or out-of-range values, then exact duplicates."""
    v = cfg.validate_
    pixels = frame[PIXELS].apply(pd.to_numeric, errors="coerce")
    labels = pd.to_numeric(frame[LABEL], errors="coerce")
    valid = (
        pixels.notna().all(axis=1)
        & pixels.ge(v.pixel_min).all(axis=1)
        & pixels.le(v.pixel_max).all(axis=1)
        & labels.notna()
        & labels.isin(range(v.n_classes))
    )
    kept = pd.concat([pixels, labels], axis=1)[valid]
    deduped = kept.drop_duplicates()
    return deduped, int((~valid).sum()), len(kept) - len(deduped)


def split(x: np.ndarray, y: np.ndarray, cfg: Config) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified train/val/test split with the configured fractions and seed."""
    from sklearn.model_selection import train_test_split

    p = cfg.preprocess
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=p.test_size, stratify=y, random_state=cfg.seed
    )
    val_of_rest = p.val_size / (1 - p.test_size)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_of_rest, stratify=y_rest, random_state=cfg.seed
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def run(cfg: Config) -> PreprocessResult:
    """Write train/val/test .npz (raw pixel rows), normalizer.json and split.json."""
    from models.preprocessing import Normalizer

    frame = pd.read_csv(cfg.paths.raw)
    cleaned, n_invalid, n_dup = clean(frame, cfg)
    x = cleaned[PIXELS].to_numpy(dtype=np.float32)
    y = cleaned[LABEL].to_numpy(dtype=np.int64)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{cfg.paths.raw}: fewer than two classes left after cleaning")
    splits = split(x, y, cfg)
    normalizer = Normalizer.fit(splits["train"][0])
    out = Path(cfg.paths.processed_dir)
    with atomic_dir(out) as tmp:
        for name, (xs, ys) in splits.items():
            np.savez(tmp / f"{name}.npz", x=xs, y=ys)
        normalizer.save(tmp / "normalizer.json")
        counts = {name: len(ys) for name, (_, ys) in splits.items()}
        write_json(
            tmp / "split.json",
            {
                "counts": counts,
                "dropped_invalid": n_invalid,
                "dropped_duplicates": n_dup,
                "seed": cfg.seed,
                "class_counts": {
                    name: np.bincount(ys, minlength=cfg.validate_.n_classes).tolist()
                    for name, (_, ys) in splits.items()
                },
            },
        )
    return PreprocessResult(out, counts, n_dup, n_invalid)


def main() -> None:
    """Entry point for `python -m tasks.preprocess` (dvc.yaml)."""
    argparse.ArgumentParser(description=__doc__).parse_args()
    r = run(load_config())
    print(
        f"preprocess: {r.counts} (dropped {r.dropped_invalid} invalid, "
        f"{r.dropped_duplicates} duplicate rows) -> {r.processed_dir}"
    )


if __name__ == "__main__":
    main()
