"""The bad-data matrix: real-world flaws in each modality, through the real stages.

Each case runs ingest -> suite step -> validate -> preprocess (as the flow does) in a temporary
project. A flaw is either stopped with one line naming the file and the problem (and nothing
outside data/ and reports/ is written, no MLflow store is created), or handled as the README
documents. The README's "Bad input" table lists these cases.
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tasks import ingest, preprocess
from tasks.config import ConfigError, load_config
from tasks.sources import DataError
from tasks.validate import DataValidationError, init_suite
from tasks.validate import run as validate

N = 80  # table rows; classes cat/dog alternate
GENERATED = ("data", "reports", ".dlops")  # stage outputs: ignored by git


def run_stages(cfg) -> preprocess.PreprocessResult:
    """The flow's data steps, in order."""
    ingest.run(cfg)
    init_suite(cfg)
    validate(cfg)
    return preprocess.run(cfg)


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every project file outside the stage outputs (what git would track)."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] not in GENERATED and "__pycache__" not in rel.parts:
            out[rel.as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# -- sources -------------------------------------------------------------------------------------


def table(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "age": rng.integers(20, 60, n),
            "income": rng.normal(50.0, 10.0, n).round(2),
            "city": rng.choice(["paris", "rome", "oslo"], n),
            "label": np.where(np.arange(n) % 2 == 0, "cat", "dog"),
        }
    )


def csv(tmp: Path, frame: pd.DataFrame, name: str = "people.csv") -> Path:
    frame.to_csv(tmp / name, index=False)
    return tmp / name


def text(tmp: Path, body: str | bytes, name: str = "people.csv") -> Path:
    path = tmp / name
    path.write_bytes(body.encode() if isinstance(body, str) else body)
    return path


def parquet(tmp: Path, frame: pd.DataFrame) -> Path:
    frame.to_parquet(tmp / "people.parquet", index=False)
    return tmp / "people.parquet"


def _truncated_parquet(tmp: Path) -> Path:
    path = parquet(tmp, table())
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


def _nested_parquet(tmp: Path) -> Path:
    frame = table()
    frame["tags"] = [[i, i + 1] for i in range(N)]
    return parquet(tmp, frame)


def _header_repeated(tmp: Path) -> Path:
    body = table().to_csv(index=False)
    header, rows = body.split("\n", 1)
    return text(tmp, f"{header}\n{rows}{header}\n{rows}")


def _with(column: str, values: Any) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        frame = table()
        frame[column] = values
        return csv(tmp, frame)

    return make


def _missing_labels(share: float) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        frame = table()
        frame.loc[frame.index[:: int(round(1 / share))], "label"] = None
        return csv(tmp, frame)

    return make


def _one_row_class(tmp: Path) -> Path:
    frame = table()
    frame.loc[5, "label"] = "cow"
    return csv(tmp, frame)


def _inf_value(tmp: Path) -> Path:
    frame = table()
    frame["income"] = frame["income"].astype(float)
    frame.loc[7, "income"] = np.inf
    return csv(tmp, frame)


def png(path: Path, size: tuple[int, int] = (8, 8), mode: str = "L", seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).convert(mode).save(path)


def images(tmp: Path, per_class: int = 10, classes: tuple[str, ...] = ("cat", "dog")) -> Path:
    root = tmp / "pets"
    for cls in classes:
        for i in range(per_class):
            png(root / cls / f"{i:02d}.png", seed=i + 1000 * classes.index(cls))
    return root


def _image_with(name: str, write: Callable[[Path], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        root = images(tmp)
        write(root / "cat" / name)
        return root

    return make


def _bomb(path: Path) -> None:
    """A PNG whose header claims 100000 x 100000 pixels (a few hundred bytes on disk)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    body = (
        chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    )
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def _truncated_png(path: Path) -> None:
    png(path, (16, 16), "RGB")
    path.write_bytes(path.read_bytes()[:60])


def _jpeg_named_png(path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(buf, format="JPEG")
    path.write_bytes(buf.getvalue())


def _mixed_images(tmp: Path) -> Path:
    root = tmp / "pets"
    shapes = [(8, 8), (20, 14), (12, 12), (9, 16), (10, 10)]
    modes = ["L", "RGB", "RGBA", "P", "LA"]
    for k, cls in enumerate(("cat", "dog")):
        for i in range(10):
            png(root / cls / f"{i}.png", shapes[i % 5], modes[i % 5], seed=i + 1000 * k)
    return root


def _stray_files(tmp: Path) -> Path:
    root = images(tmp)
    (root / "cat" / "notes.txt").write_text("not an image")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "dog" / "anim.gif")
    png(root / "top-level.png")  # no class folder
    return root


def _empty_class(tmp: Path) -> Path:
    root = images(tmp)
    (root / "bird").mkdir()
    return root


def npz(tmp: Path, **arrays: Any) -> Path:
    np.savez(tmp / "waves.npz", **arrays)
    return tmp / "waves.npz"


def waves(n: int = 60, t: int = 16) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"x": rng.normal(size=(n, t, 2)).astype(np.float32), "y": np.arange(n) % 2}


def _waves_with(change: Callable[[dict[str, np.ndarray]], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        arrays = waves()
        change(arrays)
        return npz(tmp, **arrays)

    return make


def _nan_labels(rows: Any) -> Callable[[dict[str, np.ndarray]], None]:
    def change(a: dict[str, np.ndarray]) -> None:
        y = a["y"].astype(np.float64)
        y[rows] = np.nan
        a["y"] = y

    return change


def _set(key: str, index: Any, value: float) -> Callable[[dict[str, np.ndarray]], None]:
    def change(a: dict[str, np.ndarray]) -> None:
        a[key][index] = value

    return change


def _ragged(tmp: Path) -> Path:
    x = np.empty(3, dtype=object)
    x[:] = [np.zeros(5), np.zeros(7), np.zeros(6)]
    np.savez(tmp / "waves.npz", x=x, y=np.array([0, 1, 0]))
    return tmp / "waves.npz"


def _truncated_npz(tmp: Path) -> Path:
    path = npz(tmp, **waves())
    path.write_bytes(path.read_bytes()[:300])
    return path


# -- the matrix ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stop:
    """Stopped at `stage` (ingest | suite | validate | preprocess), one line with `phrase`."""

    stage: str
    phrase: str
    names_source: bool = True  # the message names the user's file (else the raw copy)


@dataclass(frozen=True)
class Handled:
    """All stages pass; `check(result, cfg)` asserts the documented handling."""

    check: Callable[[preprocess.PreprocessResult, Any], None]


def _split(cfg) -> dict[str, Any]:
    import json

    return json.loads((Path(cfg.paths.processed_dir) / "split.json").read_text())


def _finite_features(r: preprocess.PreprocessResult, cfg) -> None:
    from models.preprocessing import load, load_split

    pre = load(r.processed_dir / "preprocessor.json")
    x, _ = load_split(r.processed_dir, "train")
    assert np.isfinite(pre.transform(x)).all()
    assert sum(r.counts.values()) + r.dropped_duplicates == N


def _dropped(n: int) -> Callable[[preprocess.PreprocessResult, Any], None]:
    def check(r: preprocess.PreprocessResult, cfg) -> None:
        assert r.dropped_missing_target == n
        assert _split(cfg)["dropped_missing_target"] == n

    return check


def _images_resized(r: preprocess.PreprocessResult, cfg) -> None:
    from models.preprocessing import load_split

    x, _ = load_split(r.processed_dir, "train")
    assert x.shape[1:] == (8, 8, 3)  # preprocess.image_size, 3 channels: some are colour
    assert sum(r.counts.values()) == 20 and r.dropped_invalid == 0


def _counted(n: int) -> Callable[[preprocess.PreprocessResult, Any], None]:
    def check(r: preprocess.PreprocessResult, cfg) -> None:
        assert sum(r.counts.values()) + r.dropped_duplicates == n and r.dropped_invalid == 0

    return check


def _bom_read(r: preprocess.PreprocessResult, cfg) -> None:
    from models.preprocessing import load

    assert load(r.processed_dir / "preprocessor.json").columns == ["age", "income", "city"]


CASES: dict[str, tuple[Callable[[Path], Path], list[str], Stop | Handled]] = {
    # tables
    "truncated parquet": (_truncated_parquet, [], Stop("ingest", "not a readable Parquet file")),
    "csv cut inside a quoted field": (
        lambda t: text(t, 'age,label\n1,cat\n2,"dog'),
        [],
        Stop("ingest", "not a readable CSV file"),
    ),
    "wrong delimiter": (
        lambda t: text(t, table().to_csv(index=False, sep=";")),
        [],
        Stop("ingest", "one column 'age;income;city;label': the file looks semicolon-separated"),
    ),
    "duplicated header names": (
        lambda t: text(t, "age,age,label\n" + "1,2,cat\n3,4,dog\n" * 40),
        [],
        Stop("ingest", "duplicate column names 'age'"),
    ),
    "header repeated inside (concatenated files)": (
        _header_repeated,
        [],
        Stop("ingest", f"line {N + 2} repeats the header (files concatenated?)"),
    ),
    "not UTF-8 (latin-1)": (
        lambda t: text(t, table().assign(city="zürich").to_csv(index=False).encode("latin-1")),
        [],
        Stop("ingest", "not UTF-8 text (byte 0xfc at offset "),
    ),
    "binary file named .csv": (
        lambda t: text(t, b"\x89PNG\r\n\x1a\n\x00\x00binary"),
        [],
        Stop("ingest", "not UTF-8 text (byte 0x89 at offset 0)"),
    ),
    "UTF-8 with a BOM": (
        lambda t: text(t, "\ufeff" + table().to_csv(index=False)),
        [],
        Handled(_bom_read),
    ),
    "parquet with a nested column": (
        _nested_parquet,
        [],
        Stop("ingest", "column 'tags' holds nested values (list<element: int64>)"),
    ),
    "header only": (lambda t: text(t, "age,label\n"), [], Stop("ingest", "no rows")),
    "target column all empty": (
        _with("label", None),
        [],
        Stop("ingest", "the target holds no values"),
    ),
    "all-null feature column": (_with("income", np.nan), [], Handled(_finite_features)),
    "constant feature column": (_with("city", "rome"), [], Handled(_finite_features)),
    "a few rows without a target (2.5%)": (_missing_labels(0.025), [], Handled(_dropped(2))),
    "many rows without a target (25%)": (
        _missing_labels(0.25),
        [],
        Stop(
            "suite",
            "expect_column_values_to_not_be_null(label): 20 of 80 rows have no target (25.0%), "
            "at most 5.0% allowed (validate.max_missing_target)",
            names_source=False,
        ),
    ),
    "a class with one row": (
        _one_row_class,
        [],
        Stop(
            "suite",
            "min_rows_per_class(label == cow): 1 row, expected at least 5",
            names_source=False,
        ),
    ),
    "infinite value in a numeric column": (
        _inf_value,
        [],
        Stop("suite", "expect_column_values_to_be_between(income): 1 value not in", False),
    ),
    # images
    "truncated image": (
        _image_with("trunc.png", _truncated_png),
        [],
        Stop("suite", "1 of 21 files do not decode: cat/trunc.png", names_source=False),
    ),
    "zero-byte image": (
        _image_with("empty.png", lambda p: p.write_bytes(b"")),
        [],
        Stop("suite", "files do not decode: cat/empty.png (empty file)", names_source=False),
    ),
    "huge image (decompression bomb)": (
        _image_with("huge.png", _bomb),
        [],
        Stop(
            "suite",
            "files do not decode: cat/huge.png (too large: over 50,000,000 pixels)",
            names_source=False,
        ),
    ),
    "image too small": (
        _image_with("tiny.png", lambda p: png(p, (4, 4))),
        [],
        Stop("suite", "images are too small in height (expected at least 8): cat/tiny.png", False),
    ),
    "images of mixed size and mode": (_mixed_images, [], Handled(_images_resized)),
    "JPEG bytes named .png": (_image_with("x.png", _jpeg_named_png), [], Handled(_counted(21))),
    "non-image files and top-level images": (_stray_files, [], Handled(_counted(20))),
    "empty class folder": (
        _empty_class,
        [],
        Stop("ingest", "class folder 'bird' holds no PNG or JPEG image"),
    ),
    "single class": (
        lambda t: images(t, classes=("cat",)),
        [],
        Stop("suite", "min_classes(class): 1 class, need at least 2 (only 'cat')", False),
    ),
    # sequences
    "NaN in sequences": (
        _waves_with(_set("x", (3, 5, 0), np.nan)),
        [],
        Stop("suite", "1 of 60 sequences hold NaN: train[3]", names_source=False),
    ),
    "inf in sequences": (
        _waves_with(_set("x", (8, 0, 1), np.inf)),
        [],
        Stop("suite", "1 of 60 sequences hold infinite values: train[8]", names_source=False),
    ),
    "a few NaN labels (5%)": (_waves_with(_nan_labels([0, 21, 42])), [], Handled(_dropped(3))),
    "many NaN labels (50%)": (
        _waves_with(_nan_labels(slice(0, 30))),
        [],
        Stop("suite", "30 of 60 rows have no target (50.0%)", names_source=False),
    ),
    "ragged sequences": (
        _ragged,
        [],
        Stop("ingest", "x is an object array (ragged sequences or Python objects)"),
    ),
    "object labels": (
        lambda t: npz(t, x=np.zeros((4, 5)), y=np.array(["a", 1, None, 2.5], dtype=object)),
        [],
        Stop("ingest", "y is an object array"),
    ),
    "truncated .npz": (_truncated_npz, [], Stop("ingest", "waves.npz: ")),
    "one-hot labels": (
        lambda t: npz(t, x=np.zeros((6, 5)), y=np.eye(3)[np.arange(6) % 3]),
        [],
        Stop("ingest", "y must be one label per sequence (N,), got (6, 3) (one-hot labels"),
    ),
}


def _config(workspace: Path, src: Path, extra: list[str]):
    target = ["data.target=label"] if src.suffix in (".csv", ".parquet") else []
    return load_config(
        workspace / "params.yaml",
        [f"data.source={src}", "validate.min_rows=20", *target, *extra],
    )


@pytest.mark.parametrize("case", list(CASES))
def test_bad_data_is_stopped_in_one_line_or_handled(workspace, tmp_path, case):
    make, extra, outcome = CASES[case]
    data = tmp_path / "src"
    data.mkdir()
    src = make(data)
    cfg = _config(workspace, src, extra)
    before = snapshot(workspace)

    if isinstance(outcome, Handled):
        outcome.check(run_stages(cfg), cfg)
        assert (workspace / "expectations" / f"{cfg.data.name}.json").is_file()
        before[f"expectations/{cfg.data.name}.json"] = snapshot(workspace)[
            f"expectations/{cfg.data.name}.json"
        ]
    else:
        # the suite step as `dlops suite init` runs it (no report: test_validate checks that)
        quiet = lambda c: init_suite(c, report=False)  # noqa: E731
        steps = [("ingest", ingest.run), ("suite", quiet), ("validate", validate)]
        steps.append(("preprocess", preprocess.run))
        for stage, step in steps:
            if stage == outcome.stage:
                with pytest.raises((DataError, DataValidationError, ConfigError)) as err:
                    step(cfg)
                break
            step(cfg)
        message = str(err.value)
        assert "\n" not in message and outcome.phrase in message, message
        named = str(src) if outcome.names_source else str(Path(cfg.paths.raw_dir))
        assert named in message, message
        assert not Path(cfg.paths.processed_dir).exists()
        if outcome.stage == "ingest":
            assert not Path(cfg.paths.raw_dir).exists()  # nothing half-written
    assert snapshot(workspace) == before  # no tracked file changed; a suite only once it passes
    assert not (workspace / "mlflow.db").exists()  # the registry is not even opened


def test_label_type_changed_vs_the_committed_suite(workspace, tmp_path):
    src = csv(tmp_path, table())
    cfg = _config(workspace, src, [])
    run_stages(cfg)
    suite = (workspace / "expectations" / "people.json").read_text()
    frame = table()
    frame["label"] = np.arange(N) % 2  # cat/dog -> 0/1
    csv(tmp_path, frame)

    ingest.run(cfg)
    assert init_suite(cfg).created is False  # the committed suite is enforced, not re-learnt
    with pytest.raises(DataValidationError) as err:
        validate(cfg)

    message = str(err.value)
    raw = Path(cfg.paths.raw_dir) / "data.csv"
    assert message.startswith(f"validation failed for {raw}: ") and "\n" not in message
    assert "expect_column_values_to_be_in_type_list(label): type int64, expected str" in message
    assert "expect_column_distinct_values_to_equal_set(label): missing ['cat', 'dog']" in message
    assert (workspace / "expectations" / "people.json").read_text() == suite
