"""Ingest and preprocess on each modality: built-ins, user files generated here, bad inputs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from models.preprocessing import InputError, load, load_split
from tasks import ingest, preprocess
from tasks.config import ConfigError, load_config
from tasks.sources import DataError, Manifest


def cfg_for(workspace: Path, *overrides: str):
    return load_config(workspace / "params.yaml", list(overrides))


def write_table(path: Path, n: int = 120, seed: int = 0) -> pd.DataFrame:
    """A CSV with missing values, a categorical column and a string target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 90, n).astype(float),
            "income": rng.normal(50, 10, n).round(2),
            "city": rng.choice(["paris", "oslo", "rome"], n),
        }
    )
    frame["label"] = np.where(frame["income"] + (frame["city"] == "oslo") * 8 > 52, "yes", "no")
    frame.loc[::7, "age"] = np.nan
    frame.loc[3::11, "city"] = None
    frame.to_csv(path, index=False)
    return frame


def write_images(root: Path, per_class: int = 12) -> None:
    """Two classes of PNGs of two sizes, grayscale and RGB."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            size = (12, 10) if i % 2 else (16, 16)
            base = rng.integers(0, 60, size) + 150 * k
            arr = np.clip(base, 0, 255).astype(np.uint8)
            img = Image.fromarray(arr) if i % 3 else Image.fromarray(np.dstack([arr] * 3))
            img.save(root / name / f"{i}.png")


def write_npz(path: Path, n: int = 90, t: int = 20, fixed_test: bool = False) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, t, 2)).astype(np.float32)
    y = np.arange(n) % 3
    x[:, :, 0] += y[:, None]
    arrays = {"x": x, "y": y}
    if fixed_test:
        arrays |= {"x_test": rng.normal(size=(30, t, 2)), "y_test": np.arange(30) % 3}
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    ("dataset", "modality", "task", "rows", "n_classes"),
    [
        ("digits", "images", "classification", 1797, 10),
        ("breast_cancer", "tables", "classification", 569, 2),
        ("wine", "tables", "classification", 178, 3),
        ("diabetes", "tables", "regression", 442, 0),
        ("waveforms", "sequences", "classification", 1200, 4),
    ],
)
def test_builtins_ingest_and_preprocess(workspace, dataset, modality, task, rows, n_classes):
    cfg = cfg_for(workspace, f"data.dataset={dataset}")
    m = ingest.run(cfg).manifest
    assert (m.modality, m.task, m.rows, len(m.classes)) == (modality, task, rows, n_classes)
    assert m.source == f"builtin:{dataset}" and len(m.sha256) == 64
    r = preprocess.run(cfg)
    assert r.dropped_missing_target == 0
    assert sum(r.counts.values()) == rows - r.dropped_duplicates - r.dropped_invalid
    assert r.leakage["leaked_examples"] == 0
    pre = load(Path(cfg.paths.processed_dir) / "preprocessor.json")
    x, y = load_split(cfg.paths.processed_dir, "train")
    out = pre.transform(x)
    assert out.dtype == np.float32 and out.shape[1:] == pre.input_shape
    # fitted on training rows only: standardized training features have mean ~0
    assert abs(float(out.mean())) < 0.1


def test_ingest_is_deterministic_and_hashes_content(workspace):
    cfg = cfg_for(workspace, "data.dataset=digits")
    first = ingest.run(cfg).manifest.sha256
    assert ingest.run(cfg).manifest.sha256 == first
    assert len(list((Path(cfg.paths.raw_dir) / "images").glob("*/*.png"))) == 1797


def test_csv_with_missing_values_and_categoricals(workspace, tmp_path):
    src = tmp_path / "people.csv"
    frame = write_table(src)
    cfg = cfg_for(workspace, f"data.source={src}", "data.target=label")
    m = ingest.run(cfg).manifest
    assert (m.modality, m.task, m.classes, m.name) == (
        "tables",
        "classification",
        ["no", "yes"],
        "people",
    )
    assert (Path(cfg.paths.raw_dir) / "data.csv").read_bytes() == src.read_bytes()
    preprocess.run(cfg)
    pre = load(Path(cfg.paths.processed_dir) / "preprocessor.json")
    assert pre.numeric == ["age", "income"] and pre.categorical == ["city"]
    assert pre.feature_names[2:] == ["city=oslo", "city=paris", "city=rome", "city=__other__"]
    x, _ = load_split(cfg.paths.processed_dir, "train")
    assert x["age"].isna().any() and x["city"].isna().any()  # raw, as the pyfunc gets it
    out = pre.transform(x)
    assert np.isfinite(out).all()
    # an unseen category goes to __other__; a missing column is named
    row = frame.iloc[:1].drop(columns="label").assign(city="lima")
    assert pre.transform(row)[0, 5] > 0
    with pytest.raises(InputError, match="missing input column: income"):
        pre.transform(frame.drop(columns=["label", "income"]))


def test_parquet_regression_and_group_split(workspace, tmp_path):
    rng = np.random.default_rng(2)
    n = 200
    frame = pd.DataFrame({"x1": rng.normal(size=n), "site": rng.choice(list("abcdefghij"), n)})
    frame["price"] = 3 * frame["x1"] + rng.normal(0, 0.1, n) + 100
    src = tmp_path / "prices.parquet"
    frame.to_parquet(src)
    cfg = cfg_for(workspace, f"data.source={src}", "data.target=price", "data.group=site")
    assert ingest.run(cfg).manifest.task == "regression"
    preprocess.run(cfg)
    sites = {}
    for split in ("train", "val", "test"):
        x, y = load_split(cfg.paths.processed_dir, split)
        assert "site" not in x.columns  # the group is not a feature
        assert y.dtype == np.float64 and y.mean() > 90  # raw target units
    # each site lies in one split only: rebuild site membership from the raw rows
    raw = pd.read_parquet(src)
    proc = {s: load_split(cfg.paths.processed_dir, s)[0] for s in ("train", "val", "test")}
    for split, x in proc.items():
        merged = raw.merge(x, on="x1")
        sites[split] = set(merged["site"])
    assert not (sites["train"] & sites["val"]) and not (sites["train"] & sites["test"])
    pre = load(Path(cfg.paths.processed_dir) / "preprocessor.json")
    assert pre.target.task == "regression" and 95 < pre.target.mean < 105


def test_image_folder_of_two_sizes_is_resized(workspace, tmp_path):
    write_images(tmp_path / "pets")
    cfg = cfg_for(workspace, f"data.source={tmp_path / 'pets'}", "preprocess.image_size=[12, 12]")
    m = ingest.run(cfg).manifest
    assert (m.modality, m.classes, m.rows) == ("images", ["cat", "dog"], 24)
    preprocess.run(cfg)
    x, y = load_split(cfg.paths.processed_dir, "train")
    assert x.dtype == np.uint8 and x.shape[1:] == (12, 12, 3)  # a colour image: 3 channels
    pre = load(Path(cfg.paths.processed_dir) / "preprocessor.json")
    png = (tmp_path / "pets" / "dog" / "1.png").read_bytes()
    assert pre.transform([png]).shape == (1, 3, 12, 12)  # raw bytes of any size
    with pytest.raises(InputError, match="image 0: cannot decode image"):
        pre.transform([b"not a png"])


def test_sequences_npz_with_a_fixed_test_split(workspace, tmp_path):
    write_npz(tmp_path / "ecg.npz", fixed_test=True)
    cfg = cfg_for(workspace, f"data.source={tmp_path / 'ecg.npz'}")
    m = ingest.run(cfg).manifest
    assert (m.modality, m.task, m.fixed_test) == ("sequences", "classification", True)
    r = preprocess.run(cfg)
    assert r.counts["test"] == 30  # exactly the given x_test
    x, _ = load_split(cfg.paths.processed_dir, "test")
    with np.load(tmp_path / "ecg.npz") as npz:
        np.testing.assert_allclose(x, npz["x_test"].astype(np.float32))


def test_fsspec_uri_and_changed_source_changes_hash(workspace, tmp_path):
    src = tmp_path / "people.csv"
    write_table(src)
    cfg = cfg_for(workspace, f"data.source=file://{src}", "data.target=label")
    first = ingest.run(cfg).manifest
    assert first.source == f"file://{src}"
    write_table(src, seed=5)
    assert ingest.run(cfg).manifest.sha256 != first.sha256


def test_leakage_between_given_test_and_train_is_refused(workspace, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 10)).astype(np.float32)
    y = np.arange(60) % 2
    np.savez(tmp_path / "s.npz", x=x, y=y, x_test=x[:20], y_test=y[:20])  # test copies train
    cfg = cfg_for(workspace, f"data.source={tmp_path / 's.npz'}")
    ingest.run(cfg)
    with pytest.raises(DataError, match=r"leakage: \d+ of 29 val/test examples duplicate") as err:
        preprocess.run(cfg)
    assert "'train-test': 18, 'val-test': 2" in str(err.value)  # 9 val rows from x; 20 test
    assert "\n" not in str(err.value)
    assert not Path(cfg.paths.processed_dir).exists()  # nothing half-written
    lenient = cfg_for(workspace, f"data.source={tmp_path / 's.npz'}", "validate.max_leakage=0.9")
    assert preprocess.run(lenient).leakage["shared_hashes"]["train-test"] == 18


def _empty_class(tmp: Path) -> Path:
    write_images(tmp / "imgs")
    (tmp / "imgs" / "bird").mkdir()
    return tmp / "imgs"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _npz(tmp: Path, **arrays) -> Path:
    np.savez(tmp / "bad.npz", **arrays)
    return tmp / "bad.npz"


BAD = {
    "missing file": (lambda t: t / "nope.csv", [], r"nope.csv: file not found"),
    "empty file": (lambda t: _write(t / "e.csv", ""), [], "e.csv: file is empty"),
    "missing target": (
        lambda t: write_table(t / "p.csv") is not None and t / "p.csv",
        ["data.target=price"],
        r"no target column 'price' \(columns: age, income, city, label\)",
    ),
    "empty class folder": (_empty_class, [], r"class folder 'bird' holds no PNG or JPEG image"),
    "mismatched x/y": (
        lambda t: _npz(t, x=np.zeros((5, 4)), y=np.zeros(4)),
        [],
        "x has 5 sequences but y has 4 labels",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_fail_at_ingest_with_one_line(workspace, tmp_path, case):
    make, extra, message = BAD[case]
    src = make(tmp_path)
    cfg = cfg_for(workspace, f"data.source={src}", *extra)
    with pytest.raises(DataError, match=message) as err:
        ingest.run(cfg)
    assert "\n" not in str(err.value)
    assert not Path(cfg.paths.raw_dir).exists()  # nothing half-written


def test_unknown_modality_is_a_config_error(workspace):
    with pytest.raises(ConfigError, match="cannot infer the modality of '/d/x.h5'"):
        cfg_for(workspace, "data.source=/d/x.h5")
    with pytest.raises(ConfigError, match="data.modality: Input should be 'auto', 'tables'"):
        cfg_for(workspace, "data.source=/d/x.csv", "data.modality=audio")


def test_target_that_does_not_fit_the_loss_is_refused_by_the_stages_reading_it(
    workspace, tmp_path, monkeypatch
):
    from tasks.config import require_task, write_overrides
    from tasks.entry import run_stage

    src = tmp_path / "people.csv"
    write_table(src)
    overrides = [f"data.source={src}", "data.target=label", "train.loss=mse"]
    cfg = cfg_for(workspace, *overrides)
    # ingest reads data.* alone (its DVC params): it records the data and tells the task
    manifest = ingest.run(cfg).manifest
    assert manifest.task == "classification"
    # the flow, right after ingest: train.* and promote.* against that task
    with pytest.raises(ConfigError, match=f"{src}: train.loss: mse is a regression loss"):
        require_task(cfg, manifest.task, str(src))
    # `python -m tasks.train` (and tune): train.* against the processed data's task
    preprocess.run(cfg)
    write_overrides(workspace / "params.yaml", overrides)
    with pytest.raises(SystemExit) as exited:
        run_stage("train", lambda _: "trained", check_upstream=False)
    assert str(exited.value.code) == (
        f"train: {cfg.paths.processed_dir}: train.loss: mse is a regression loss, the task is "
        "classification"
    )


def test_manifest_round_trip(workspace):
    cfg = cfg_for(workspace, "data.dataset=wine")
    m = ingest.run(cfg).manifest
    assert Manifest.load(cfg.paths.raw_dir) == m
    assert json.loads((Path(cfg.paths.raw_dir) / "manifest.json").read_text())["rows"] == 178


def test_http_source_is_fetched_and_hashed(workspace, tmp_path):
    import functools
    import http.server
    import threading

    write_table(tmp_path / "people.csv")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/people.csv"
        cfg = cfg_for(workspace, f"data.source={url}", "data.target=label")
        m = ingest.run(cfg).manifest
        missing = cfg_for(workspace, f"data.source={url[:-4]}x.csv", "data.target=label")
        with pytest.raises(DataError, match="x.csv: file not found"):
            ingest.run(missing)
    finally:
        server.shutdown()
    assert (m.source, m.modality, m.rows) == (url, "tables", 120)
    assert (Path(cfg.paths.raw_dir) / "data.csv").read_bytes() == (
        tmp_path / "people.csv"
    ).read_bytes()
