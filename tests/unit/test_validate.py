"""tasks.validate on real Great Expectations: tiny tables, images and sequences built here.

The suite step (`init_suite`) infers a source's suite and writes it once the data passes; the
validate stage (`run`) only enforces a committed suite.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tasks import tracking
from tasks import validate as validate_mod
from tasks.config import Config, load_config, write_overrides
from tasks.sources import Manifest
from tasks.validate import DataValidationError, ValidateResult, init_suite, run

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
MIN_ROWS = 20
MIN_PER_CLASS = 5
N_ROWS = 60
SHA = "0" * 64  # the manifest's hash of the source: copied into result.json


def overrides(tmp: Path, source: str, *extra: str) -> list[str]:
    """Output paths are relative to the project: tests run in `tmp` (see `_in_tmp`)."""
    assert Path.cwd() == tmp
    return [
        "paths.raw_dir=raw",
        "paths.suites_dir=suites",
        "paths.validation_dir=validation",
        f"data.source={source}",
        f"validate.min_rows={MIN_ROWS}",
        f"validate.min_rows_per_class={MIN_PER_CLASS}",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)


def make_cfg(tmp: Path, source: str, *extra: str) -> Config:
    return load_config(PARAMS, overrides=overrides(tmp, source, *extra))


def report(cfg: Config) -> dict[str, Any]:
    return json.loads((Path(cfg.paths.validation_dir) / "result.json").read_text())


def suite_file(cfg: Config) -> Path:
    return Path(cfg.paths.suites_dir) / f"{cfg.data.name}.json"


def fails(cfg: Config, step: Callable[..., Any] = run, **kwargs: Any) -> DataValidationError:
    """Run the stage (or the suite step), expect a DataValidationError on one line."""
    with pytest.raises(DataValidationError) as info:
        step(cfg, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith("validation failed for ")
    return info.value


# -- tables ------------------------------------------------------------------------------------


def base_table(n: int = N_ROWS) -> pd.DataFrame:
    """Ints, floats with nulls, a categorical with a null, and a balanced cat/dog label."""
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.integers(20, 60, n),
            "income": rng.normal(50.0, 10.0, n).round(2),
            "city": rng.choice(["paris", "rome", "oslo"], n),
            "label": np.where(np.arange(n) % 2 == 0, "cat", "dog"),
        }
    )
    frame["income"] = frame["income"].astype(float)
    frame.loc[::6, "income"] = np.nan  # 1 in 6 null
    frame.loc[1, "city"] = None
    return frame


def table_cfg(tmp: Path, frame: pd.DataFrame, task: str = "classification", *extra: str):
    """Write raw/data.csv and its manifest; the config that validates it."""
    raw = tmp / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    frame.to_csv(raw / "data.csv", index=False)
    classes = sorted(frame["label"].dropna().unique().tolist()) if task == "classification" else []
    Manifest(
        name="people",
        modality="tables",
        task=task,
        source="/somewhere/people.csv",
        sha256=SHA,
        file="data.csv",
        rows=len(frame),
        target="label",
        classes=classes,
    ).save(raw)
    return make_cfg(tmp, "/somewhere/people.csv", "data.target=label", *extra)


@pytest.fixture(scope="module")
def table_suite(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The suite inferred from the base table (one GX run for all the enforcement cases)."""
    tmp = tmp_path_factory.mktemp("table_suite")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        cfg = table_cfg(tmp, base_table())
        step = init_suite(cfg)
        assert step.created and step.path == suite_file(cfg)
        result = run(cfg)
        assert result.success and not result.suite_inferred
        assert result.n_expectations == step.n_expectations
        rep = report(cfg)
    return {"path": tmp / suite_file(cfg), "result": result, "report": rep, "cfg": cfg}


def test_table_suite_is_inferred_saved_then_enforced(
    tmp_path: Path, table_suite: dict[str, Any]
) -> None:
    import great_expectations as gx

    first: ValidateResult = table_suite["result"]
    cfg = table_cfg(tmp_path, base_table())
    path = suite_file(cfg)
    assert first.suite_path.name == "people.json"

    # The saved suite is GX's own JSON: it loads back into an ExpectationSuite as it is.
    saved = json.loads(table_suite["path"].read_text())
    suite = gx.ExpectationSuite(
        name=saved["name"], expectations=saved["expectations"], meta=saved["meta"]
    )
    assert saved["name"] == "people" and len(suite.expectations) == first.n_expectations
    assert saved["meta"]["dlops"]["modality"] == "tables"
    assert saved["meta"]["dlops"]["inferred_from"]["sha256"] == SHA
    by_kind = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in saved["expectations"]}
    assert by_kind[("expect_table_columns_to_match_ordered_list", None)]["column_list"] == [
        "age",
        "income",
        "city",
        "label",
    ]
    assert by_kind[("expect_column_values_to_be_in_set", "city")]["value_set"] == [
        "oslo",
        "paris",
        "rome",
    ]
    # observed null share 10/60 + null_slack 0.05
    assert by_kind[("expect_column_values_to_not_be_null", "income")]["mostly"] == pytest.approx(
        1 - (10 / 60 + 0.05), abs=1e-6
    )
    # bounds that follow params.yaml are GX suite parameters, resolved at validation time
    assert by_kind[("expect_column_values_to_not_be_null", "label")]["mostly"] == {
        "$PARAMETER": "1 - max_missing_target"
    }
    row_counts = [
        e["kwargs"] for e in saved["expectations"] if e["type"].startswith("expect_table_row")
    ]
    assert row_counts[0] == {"min_value": {"$PARAMETER": "min_rows"}}
    assert row_counts[1]["min_value"] == {"$PARAMETER": "min_rows_per_class"}
    assert not any("param" in (e["meta"].get("dlops") or {}) for e in saved["expectations"])
    assert "int64" in by_kind[("expect_column_values_to_be_in_type_list", "age")]["type_list"]
    assert "float64" in by_kind[("expect_column_values_to_be_in_type_list", "age")]["type_list"]
    assert by_kind[("expect_column_values_to_be_in_type_list", "city")]["type_list"] == ["str"]
    assert by_kind[("expect_column_distinct_values_to_equal_set", "label")]["value_set"] == [
        "cat",
        "dog",
    ]

    # A second run (here: a copy of the committed suite) enforces it and leaves it untouched.
    path.parent.mkdir(parents=True)
    shutil.copy(table_suite["path"], path)
    before = path.read_text()
    second = run(cfg)
    assert second.success and second.failed == [] and second.suite_inferred is False
    assert second.suite_path == path and path.read_text() == before
    assert second.n_expectations == first.n_expectations

    rep = report(cfg)
    assert rep["success"] is True and rep["failed"] == []
    assert rep["suite"] == str(path) and rep["suite_inferred"] is False
    assert rep["raw_sha256"] == SHA and rep["raw_path"] == "raw/data.csv"
    assert rep["rows"] == N_ROWS and rep["modality"] == "tables"
    assert rep["per_class_counts"] == {"cat": 30, "dog": 30}
    assert rep["statistics"]["evaluated_expectations"] == second.n_expectations
    assert rep["statistics"]["unsuccessful_expectations"] == 0
    names = [e["name"] for e in rep["expectations"]]
    assert len(names) == second.n_expectations
    assert {
        "expect_column_values_to_be_between(age)",
        "min_classes(label)",
        "min_rows_per_class(label == cat)",
        "min_class_share(label == dog)",
        "max_class_share(label == dog)",
    } <= set(names)
    per_class = next(
        e for e in rep["expectations"] if e["name"] == "min_rows_per_class(label == cat)"
    )
    assert per_class["observed_value"] == 30 and per_class["row_condition"] == "label == cat"
    # The Data Docs: one validation page, nothing left over from the atomic swap.
    assert second.docs_path.resolve() == tmp_path / "validation" / "html" / "index.html"
    assert "Great Expectations" in second.docs_path.read_text()
    pages = list((tmp_path / "validation" / "html" / "validations").rglob("*.html"))
    assert len(pages) == 1
    assert sorted(p.name for p in (tmp_path / "validation").iterdir()) == ["html", "result.json"]


def _rename(f: pd.DataFrame) -> pd.DataFrame:
    return f.rename(columns={"city": "town"})


def _new_category(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[4, "city"] = "lima"
    return f


def _out_of_range(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[[3, 7], "age"] = [500, -40]
    return f


def _more_nulls(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[:29, "income"] = np.nan
    return f


def _type_changed(f: pd.DataFrame) -> pd.DataFrame:
    f["age"] = f["age"].astype(str) + " years"
    return f


def _class_missing(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[f["label"] == "dog", "label"] = "cat"
    return f


def _new_class(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[[0, 2], "label"] = "cow"
    return f


def _column_added(f: pd.DataFrame) -> pd.DataFrame:
    f["extra"] = 1
    return f


def _imbalance(f: pd.DataFrame) -> pd.DataFrame:
    # 54 cats, 6 dogs: dog's share 10% < 50% x (1 - 0.5)
    f.loc[f.index[f["label"] == "dog"][6:], "label"] = "cat"
    return f


ENFORCED = {
    "renamed_column": (
        _rename,
        [
            "expect_table_columns_to_match_ordered_list: missing columns ['city'], unexpected "
            "columns ['town']",
            "expect_column_values_to_be_in_set(city): no column 'city'",
        ],
    ),
    "column_added": (
        _column_added,
        ["expect_table_columns_to_match_ordered_list: unexpected columns ['extra']"],
    ),
    "new_category": (
        _new_category,
        ["expect_column_values_to_be_in_set(city): 1 value not in the expected set: lima"],
    ),
    "out_of_range": (
        _out_of_range,
        ["expect_column_values_to_be_between(age): 2 values not in [16, 63]: -40, 500"],
    ),
    "more_nulls": (
        _more_nulls,
        ["expect_column_values_to_not_be_null(income): 35 nulls (58.3%), at most 21.7% allowed"],
    ),
    "type_changed": (
        _type_changed,
        [
            "expect_column_values_to_be_in_type_list(age): 60 values not numeric: 20 years, "
            "21 years, 23 years, 27 years, 30 years and 55 more",
        ],
    ),
    "class_missing": (
        _class_missing,
        [
            "min_classes(label): 1 class, need at least 2",
            "expect_column_distinct_values_to_equal_set(label): missing ['dog']",
            f"min_rows_per_class(label == dog): 0 rows, expected at least {MIN_PER_CLASS}",
        ],
    ),
    "new_class": (
        _new_class,
        ["expect_column_distinct_values_to_equal_set(label): unexpected ['cow']"],
    ),
    "imbalance": (
        _imbalance,
        [
            "min_class_share(label == dog): share 10.00% (6 of 60 rows), expected at least 25.00%",
            "max_class_share(label == cat): share 90.00% (54 of 60 rows), expected at most 75.00%",
        ],
    ),
}


@pytest.mark.parametrize("case", list(ENFORCED))
def test_enforced_suite_rejects_a_changed_source(
    tmp_path: Path, table_suite: dict[str, Any], case: str
) -> None:
    change, phrases = ENFORCED[case]
    cfg = table_cfg(tmp_path, change(base_table()))
    suite_file(cfg).parent.mkdir()
    shutil.copy(table_suite["path"], suite_file(cfg))

    error = fails(cfg)

    message = str(error)
    raw = Path("raw", "data.csv")
    assert message.startswith(f"validation failed for {raw}: ")
    for phrase in phrases:
        assert phrase in message
    result = error.result
    assert result is not None and not result.success and result.suite_inferred is False
    rep = report(cfg)
    assert rep["success"] is False and rep["failed"] == result.failed
    assert rep["statistics"]["unsuccessful_expectations"] == len(result.failed)
    for entry in rep["expectations"]:
        assert ("reason" in entry) is (entry["name"] in result.failed)
        if "reason" in entry and entry["name"] in message:
            assert f"{entry['name']}: {entry['reason']}" in message
    # The failure is not "learnt": the committed suite is unchanged.
    assert suite_file(cfg).read_text() == table_suite["path"].read_text()


def test_type_change_is_reported_value_by_value_for_text(
    tmp_path: Path, table_suite: dict[str, Any]
) -> None:
    frame = base_table()
    frame["city"] = np.arange(N_ROWS)  # text column now holds numbers
    cfg = table_cfg(tmp_path, frame)
    suite_file(cfg).parent.mkdir()
    shutil.copy(table_suite["path"], suite_file(cfg))

    message = str(fails(cfg))

    assert "expect_column_values_to_be_in_type_list(city): type int64, expected str" in message


def test_single_class_is_rejected_and_no_suite_is_inferred(tmp_path: Path) -> None:
    frame = base_table()
    frame["label"] = "cat"
    cfg = table_cfg(tmp_path, frame)

    error = fails(cfg, init_suite)

    raw = Path("raw", "data.csv")
    assert str(error) == (
        f"validation failed for {raw}: min_classes(label): 1 class, need at least 2 (only 'cat')"
    )
    assert error.result is None
    assert not suite_file(cfg).exists()


def test_too_few_rows_per_class_fails_and_saves_no_suite(tmp_path: Path) -> None:
    frame = base_table()
    dogs = frame.index[frame["label"] == "dog"]
    frame = frame.drop(index=dogs[3:])  # 30 cats, 3 dogs

    error = fails(cfg := table_cfg(tmp_path, frame), init_suite)

    assert f"min_rows_per_class(label == dog): 3 rows, expected at least {MIN_PER_CLASS}" in str(
        error
    )
    assert error.result is not None and error.result.suite_inferred is True
    assert "min_rows_per_class(label == dog)" in error.result.failed
    assert "min_rows_per_class(label == cat)" not in error.result.failed
    rep = report(cfg)
    assert rep["per_class_counts"] == {"cat": 30, "dog": 3}
    assert rep["suite_inferred"] is True and rep["suite_saved"] is False
    # A suite learnt from data that fails is not saved: the next run infers again.
    assert not suite_file(cfg).exists()


def test_too_few_rows_and_the_message_is_capped(tmp_path: Path) -> None:
    frame = base_table(12)
    frame["label"] = ["cat", "dog", "cow", "pig", "emu", "owl"] * 2  # 2 rows per class

    error = fails(cfg := table_cfg(tmp_path, frame), init_suite)

    message = str(error)
    assert f"expect_table_row_count_to_be_between: 12 rows, expected at least {MIN_ROWS}" in (
        message
    )
    assert len(error.result.failed) == 7  # rows + 6 classes below the minimum
    assert message.endswith("; and 2 more (see result.json)")
    assert message.count("min_rows_per_class(") == 4
    assert report(cfg)["failed"] == error.result.failed


def test_params_bounds_apply_to_an_enforced_suite(
    tmp_path: Path, table_suite: dict[str, Any]
) -> None:
    cfg = table_cfg(tmp_path, base_table(), "classification", "validate.min_rows_per_class=40")
    suite_file(cfg).parent.mkdir()
    shutil.copy(table_suite["path"], suite_file(cfg))

    error = fails(cfg)

    assert error.result.failed == [
        "min_rows_per_class(label == cat)",
        "min_rows_per_class(label == dog)",
    ]
    assert "min_rows_per_class(label == cat): 30 rows, expected at least 40" in str(error)


def test_regression_table_checks_the_target_range(tmp_path: Path) -> None:
    frame = base_table()
    frame["label"] = np.linspace(0.0, 10.0, N_ROWS)
    cfg = table_cfg(tmp_path, frame, "regression")

    assert init_suite(cfg).created
    result = run(cfg)

    assert result.success
    rep = report(cfg)
    assert rep["task"] == "regression" and rep["per_class_counts"] == {}
    names = {e["name"] for e in rep["expectations"]}
    assert "expect_column_values_to_be_between(label)" in names
    assert not any(n.startswith(("min_classes", "min_rows_per_class")) for n in names)

    frame.loc[5, "label"] = 100.0
    table_cfg(tmp_path, frame, "regression")
    message = str(fails(cfg))
    assert "expect_column_values_to_be_between(label): 1 value not in [-1, 11]: 100" in message


# -- unreadable data and suites ------------------------------------------------------------------


def test_missing_data_file_names_the_file(tmp_path: Path) -> None:
    cfg = table_cfg(tmp_path, base_table())
    (tmp_path / "raw" / "data.csv").unlink()

    error = fails(cfg)

    assert str(error) == "validation failed for raw/data.csv: file not found"
    assert error.result is None
    assert not (tmp_path / "validation").exists()


def test_missing_manifest_names_it(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path, "/somewhere/people.csv", "data.target=label")

    error = fails(cfg)

    raw = Path("raw")
    assert str(error) == (
        f"validation failed for {raw}: {raw / 'manifest.json'}: no manifest; "
        "run the ingest stage first"
    )
    assert error.result is None


def test_unreadable_suite_names_it(tmp_path: Path) -> None:
    cfg = table_cfg(tmp_path, base_table())
    suite_file(cfg).parent.mkdir()
    suite_file(cfg).write_text("{not json")

    error = fails(cfg)

    assert str(error).startswith(
        f"validation failed for raw/data.csv: suite {suite_file(cfg)}: not a readable JSON file ("
    )
    assert error.result is None


def test_invalid_expectation_in_an_edited_suite_is_named(
    tmp_path: Path, table_suite: dict[str, Any]
) -> None:
    cfg = table_cfg(tmp_path, base_table())
    saved = json.loads(table_suite["path"].read_text())
    saved["expectations"][2] = {"type": "expect_column_values_to_be_fancy", "kwargs": {}}
    suite_file(cfg).parent.mkdir()
    suite_file(cfg).write_text(json.dumps(saved))

    error = fails(cfg)

    assert str(error) == (
        f"validation failed for raw/data.csv: suite {suite_file(cfg)}: "
        "expectation 2 (expect_column_values_to_be_fancy) is not valid "
        "(expect_column_values_to_be_fancy not found)"
    )
    assert error.result is None


def test_suite_of_another_modality_is_refused(tmp_path: Path, table_suite: dict[str, Any]) -> None:
    cfg = image_cfg(tmp_path, {"cat": [(8, 8, 1)] * 12, "dog": [(8, 8, 1)] * 12})
    suite_file(cfg).parent.mkdir()
    shutil.copy(table_suite["path"], suite_file(cfg))

    error = fails(cfg)

    assert str(error) == (
        f"validation failed for raw/images: suite {suite_file(cfg)}: "
        "inferred for tables data, the data is images "
        "(`dlops suite init --force` infers a new one)"
    )


# -- images ------------------------------------------------------------------------------------


def write_png(path: Path, height: int, width: int, channels: int, seed: int = 0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(path)


def image_cfg(tmp: Path, layout: dict[str, list[tuple[int, int, int]]]) -> Config:
    """raw/images/<class>/<i>.png of the given (height, width, channels), and the manifest."""
    raw = tmp / "raw"
    shutil.rmtree(raw / "images", ignore_errors=True)
    for cls, shapes in layout.items():
        for i, shape in enumerate(shapes):
            write_png(raw / "images" / cls / f"{i:03d}.png", *shape, seed=i)
    Manifest(
        name="pets",
        modality="images",
        task="classification",
        source="/somewhere/pets",
        sha256=SHA,
        file="images",
        rows=sum(len(s) for s in layout.values()),
        classes=sorted(layout),
    ).save(raw)
    return make_cfg(tmp, "/somewhere/pets")


# Two sizes, grayscale and RGB, in both classes.
MIXED = [(8, 8, 1), (12, 10, 3)] * 6


def test_images_of_two_sizes_and_modes_pass(tmp_path: Path) -> None:
    cfg = image_cfg(tmp_path, {"cat": MIXED, "dog": MIXED})

    assert init_suite(cfg).created
    result = run(cfg)

    assert result.success and result.n_expectations >= 10
    rep = report(cfg)
    assert rep["modality"] == "images" and rep["rows"] == 24
    assert rep["per_class_counts"] == {"cat": 12, "dog": 12}
    assert rep["corrupt_files"] == [] and rep["channels"] == [1, 3]
    assert rep["height"] == [8, 12] and rep["width"] == [8, 10]
    saved = json.loads(suite_file(cfg).read_text())
    kinds = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in saved["expectations"]}
    assert kinds[("expect_column_values_to_be_in_set", "channels")]["value_set"] == [1, 3]
    assert kinds[("expect_column_values_to_be_between", "height")]["min_value"] == {
        "$PARAMETER": "image_min_size"
    }
    assert kinds[("expect_column_distinct_values_to_equal_set", "class")]["value_set"] == [
        "cat",
        "dog",
    ]

    # Enforced: a new class folder and a too small image fail, naming the file.
    write_png(tmp_path / "raw" / "images" / "cat" / "tiny.png", 4, 8, 1)
    for i in range(6):
        write_png(tmp_path / "raw" / "images" / "cow" / f"{i}.png", 8, 8, 1)
    message = str(fails(cfg))
    assert "expect_column_distinct_values_to_equal_set(class): unexpected ['cow']" in message
    assert (
        "expect_column_values_to_be_between(height): 1 of 31 images are too small in height "
        "(expected at least 8): cat/tiny.png"
    ) in message
    assert "expect_column_values_to_be_between(width)" not in message


def test_corrupt_images_are_named(tmp_path: Path) -> None:
    cfg = image_cfg(tmp_path, {"cat": MIXED, "dog": MIXED})
    (tmp_path / "raw" / "images" / "cat" / "bad.png").write_bytes(b"not a png at all")
    (tmp_path / "raw" / "images" / "dog" / "000.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")

    error = fails(cfg, init_suite)

    images = Path("raw", "images")
    assert str(error) == (
        f"validation failed for {images}: expect_column_values_to_be_in_set(decodes): "
        "2 of 25 files do not decode: cat/bad.png, dog/000.png"
    )
    # Files that do not decode do not also fail the size or channel checks.
    assert error.result.failed == ["expect_column_values_to_be_in_set(decodes)"]
    rep = report(cfg)
    assert rep["corrupt_files"] == ["cat/bad.png", "dog/000.png"]
    entry = next(e for e in rep["expectations"] if e["name"] == rep["failed"][0])
    assert entry["partial_unexpected_files"] == ["cat/bad.png", "dog/000.png"]
    assert not suite_file(cfg).exists()


# -- sequences ---------------------------------------------------------------------------------


def seq_cfg(tmp: Path, x: np.ndarray, y: np.ndarray, **test: np.ndarray) -> Config:
    raw = tmp / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    np.savez(raw / "data.npz", x=x, y=y, **test)
    Manifest(
        name="waves",
        modality="sequences",
        task="classification",
        source="/somewhere/waves.npz",
        sha256=SHA,
        file="data.npz",
        rows=len(x),
        classes=sorted(np.unique(y).tolist()),
        fixed_test=bool(test),
    ).save(raw)
    return make_cfg(tmp, "/somewhere/waves.npz")


def waves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (n, 16, 2)).astype(np.float32), np.arange(n) % 2


def test_sequences_pass_then_a_shape_change_fails(tmp_path: Path) -> None:
    x, y = waves(40)
    xt, yt = waves(10, seed=1)
    cfg = seq_cfg(tmp_path, x, y, x_test=xt, y_test=yt)

    assert init_suite(cfg).created
    result = run(cfg)

    assert result.success
    rep = report(cfg)
    assert rep["rows"] == 50 and rep["splits"] == {"train": 40, "test": 10}
    assert rep["shape"] == [16, 2] and rep["per_class_counts"] == {"0": 25, "1": 25}
    saved = json.loads(suite_file(cfg).read_text())
    kinds = {(e["type"], e["kwargs"].get("column")): e["kwargs"] for e in saved["expectations"]}
    assert kinds[("expect_column_values_to_be_in_set", "length")]["value_set"] == [16]
    assert kinds[("expect_column_distinct_values_to_equal_set", "split")]["value_set"] == [
        "test",
        "train",
    ]

    x2, _ = waves(40)
    seq_cfg(tmp_path, x2[:, :12], y, x_test=xt[:, :12], y_test=yt)
    message = str(fails(cfg))
    assert "expect_column_values_to_be_in_set(length): 50 values not in the expected set: 12" in (
        message
    )


def test_sequences_with_nan_or_inf_fail_naming_them(tmp_path: Path) -> None:
    x, y = waves(40)
    x[3, 5, 0] = np.nan
    x[7, 0, 1] = np.inf

    error = fails(seq_cfg(tmp_path, x, y), init_suite)

    message = str(error)
    assert "expect_column_values_to_be_in_set(n_nan): 1 of 40 sequences hold NaN: train[3]" in (
        message
    )
    assert (
        "expect_column_values_to_be_in_set(n_inf): 1 of 40 sequences hold infinite values: "
        "train[7]"
    ) in message
    assert error.result.failed == [
        "expect_column_values_to_be_in_set(n_nan)",
        "expect_column_values_to_be_in_set(n_inf)",
    ]


def test_sequences_out_of_range_fail(tmp_path: Path) -> None:
    x, y = waves(40)
    cfg = seq_cfg(tmp_path, x, y)
    init_suite(cfg)
    assert run(cfg).success

    x[9] *= 100
    seq_cfg(tmp_path, x, y)
    message = str(fails(cfg))
    assert "expect_column_values_to_be_between(max): 1 of 40 sequences are out of range" in message
    assert ": train[9]" in message


# -- MLflow and the command line -----------------------------------------------------------------


def test_logs_report_docs_and_tag_to_mlflow(tmp_path: Path, sqlite_mlflow: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=sqlite_mlflow)
    cfg = table_cfg(tmp_path, base_table())
    good = tracking.start_run("exp", "validate")

    assert init_suite(cfg, mlflow_run_id=good).created
    assert run(cfg, mlflow_run_id=good).success

    assert client.get_run(good).data.tags["validation.success"] == "true"
    top = {a.path: a.is_dir for a in client.list_artifacts(good, "validation")}
    assert top == {
        "validation/result.json": False,
        "validation/html": True,
        "validation/people.json": False,  # the suite that was inferred (then enforced)
    }
    html = {a.path for a in client.list_artifacts(good, "validation/html")}
    assert "validation/html/index.html" in html
    logged = Path(client.download_artifacts(good, "validation/result.json", str(tmp_path)))
    assert json.loads(logged.read_text())["success"] is True

    bad = tracking.start_run("exp", "validate")
    table_cfg(tmp_path, _new_category(base_table()))
    with pytest.raises(DataValidationError, match=r"in_set\(city\)"):
        run(cfg, mlflow_run_id=bad)
    assert client.get_run(bad).data.tags["validation.success"] == "false"
    logged = Path(client.download_artifacts(bad, "validation/result.json", str(tmp_path / "b")))
    assert json.loads(logged.read_text())["failed"] == ["expect_column_values_to_be_in_set(city)"]

    unreadable = tracking.start_run("exp", "validate")
    (tmp_path / "raw" / "data.csv").unlink()
    with pytest.raises(DataValidationError, match="file not found"):
        run(cfg, mlflow_run_id=unreadable)
    assert client.get_run(unreadable).data.tags["validation.success"] == "false"


def _main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, setup: Callable[[], Any]) -> None:
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    write_overrides(
        tmp_path / "params.yaml",
        overrides(tmp_path, "/somewhere/people.csv", "data.target=label"),
    )
    setup()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["validate"])
    validate_mod.main()


def test_main_exits_with_the_one_line_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as info:
        _main(tmp_path, monkeypatch, lambda: None)

    raw = Path("raw")
    assert info.value.code == (
        f"validate: validation failed for {raw}: {raw / 'manifest.json'}: no manifest; "
        "run the ingest stage first"
    )


def test_main_without_a_suite_says_to_run_the_suite_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(SystemExit) as info:
        _main(tmp_path, monkeypatch, lambda: table_cfg(tmp_path, base_table()))

    raw, suite = Path("raw", "data.csv"), Path("suites", "people.json")  # as params name them
    assert info.value.code == (
        f"validate: validation failed for {raw}: no suite {suite}: run `dlops suite init` (or "
        "`dlops run`, which infers it on a source's first run)"
    )
    assert not (tmp_path / suite).exists() and not (tmp_path / "validation").exists()


def test_main_enforces_the_committed_suite(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    table_suite: dict[str, Any],
) -> None:
    def committed() -> None:
        table_cfg(tmp_path, base_table())
        (tmp_path / "suites").mkdir()
        shutil.copy(table_suite["path"], tmp_path / "suites" / "people.json")

    _main(tmp_path, monkeypatch, committed)

    out = capsys.readouterr().out
    assert out.startswith("validate: ") and "expectations passed (suite " in out
    assert report(table_suite["cfg"])["success"] is True
