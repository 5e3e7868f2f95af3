import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from models.augment import RandomAffine
from models.preprocessing import Normalizer
from tasks import ingest, preprocess


def test_ingest_writes_digits(tiny_cfg):
    r = ingest.run(tiny_cfg)
    frame = pd.read_csv(r.path)
    assert r.rows == len(frame) == 1797
    assert list(frame.columns) == ingest.COLUMNS
    assert frame[ingest.PIXELS].to_numpy().max() == 16
    assert sorted(frame["label"].unique()) == list(range(10))


def test_preprocess_cleans_splits_and_fits_on_train_only(tiny_cfg):
    ingest.run(tiny_cfg)
    frame = pd.read_csv(tiny_cfg.paths.raw)
    bad = frame.iloc[:3].copy()
    bad.loc[bad.index[0], "pixel_5"] = 99  # out of range
    bad.loc[bad.index[1], "label"] = 12  # unknown label
    dup = frame.iloc[[10, 11]]  # exact duplicates of existing rows
    pd.concat([frame, bad.iloc[:2], dup]).to_csv(tiny_cfg.paths.raw, index=False)

    r = preprocess.run(tiny_cfg)
    assert r.dropped_invalid == 2 and r.dropped_duplicates == 2
    out = Path(tiny_cfg.paths.processed_dir)
    splits = {s: np.load(out / f"{s}.npz") for s in ("train", "val", "test")}
    assert sum(len(s["y"]) for s in splits.values()) == 1797
    assert r.counts["test"] == 360  # ceil(0.2 * 1797), as scikit-learn rounds
    # stratified: every class in every split, in nearly equal proportions
    for s in splits.values():
        share = np.bincount(s["y"], minlength=10) / len(s["y"])
        assert np.all(np.abs(share - 0.1) < 0.02)
    # no row in two splits
    keys = {s: {row.tobytes() for row in v["x"]} for s, v in splits.items()}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["val"]
    norm = Normalizer.load(out / "normalizer.json")
    assert norm.mean == np.float64(splits["train"]["x"]).mean()
    assert json.loads((out / "split.json").read_text())["counts"] == r.counts


def test_preprocess_is_deterministic(tiny_cfg):
    ingest.run(tiny_cfg)
    preprocess.run(tiny_cfg)
    first = np.load(Path(tiny_cfg.paths.processed_dir) / "test.npz")["y"].copy()
    preprocess.run(tiny_cfg)
    assert np.array_equal(first, np.load(Path(tiny_cfg.paths.processed_dir) / "test.npz")["y"])


def test_augmentation_moves_pixels_and_keeps_shape():
    x = torch.zeros(16, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    torch.manual_seed(0)
    out = RandomAffine(p=1.0, max_shift=1.0, max_rotation=10.0)(x)
    assert out.shape == x.shape
    assert not torch.allclose(out, x)
    assert torch.equal(RandomAffine(p=0.0)(x), x)


def test_normalizer_rejects_wrong_width():
    norm = Normalizer(mean=1.0, std=2.0)
    assert norm.transform(np.full((2, 64), 3.0)).shape == (2, 1, 8, 8)
    try:
        norm.transform(np.zeros((2, 63)))
    except ValueError as exc:
        assert "64 pixel values" in str(exc)
    else:
        raise AssertionError("63 columns were accepted")
