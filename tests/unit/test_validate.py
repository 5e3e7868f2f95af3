"""tasks.validate on real Great Expectations, a slice of the digits and a SQLite MLflow store."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks import tracking
from tasks import validate as validate_mod
from tasks.config import Config, load_config
from tasks.ingest import load_digits_frame
from tasks.validate import DataValidationError, ValidateResult, run

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"
N_ROWS = 300  # 29..32 rows per class
MIN_ROWS = 200
MIN_PER_CLASS = 20


@pytest.fixture(scope="module")
def digits() -> pd.DataFrame:
    return load_digits_frame().head(N_ROWS).copy()


def make_cfg(tmp_path: Path) -> Config:
    return load_config(
        PARAMS,
        overrides=[
            f"paths.raw={tmp_path / 'raw.csv'}",
            f"paths.validation_dir={tmp_path / 'validation'}",
            f"validate.min_rows={MIN_ROWS}",
            f"validate.min_rows_per_class={MIN_PER_CLASS}",
        ],
    )


def write(cfg: Config, frame: pd.DataFrame) -> Path:
    path = Path(cfg.paths.raw)
    frame.to_csv(path, index=False)
    return path


def report(cfg: Config) -> dict:
    return json.loads((Path(cfg.paths.validation_dir) / "result.json").read_text())


def test_valid_frame_passes(tmp_path: Path, digits: pd.DataFrame) -> None:
    cfg = make_cfg(tmp_path)
    raw = write(cfg, digits)

    result = run(cfg)

    assert isinstance(result, ValidateResult)
    assert result.success and result.failed == []
    assert result.result_path == tmp_path / "validation" / "result.json"
    assert result.docs_path == tmp_path / "validation" / "html" / "index.html"
    assert result.docs_path.is_file()
    assert "Great Expectations" in result.docs_path.read_text()
    # one validation page, nothing left over from the atomic swap of the docs folder
    assert len(list((tmp_path / "validation" / "html" / "validations").rglob("*.html"))) == 1
    assert sorted(p.name for p in (tmp_path / "validation").iterdir()) == ["html", "result.json"]
    # columns + rows + 65 not-null + 64 pixel ranges + label set + 10 per-class counts
    assert result.n_expectations == 1 + 1 + 65 + 64 + 1 + 10

    rep = report(cfg)
    assert rep["success"] is True
    assert rep["failed"] == []
    assert rep["statistics"]["evaluated_expectations"] == result.n_expectations
    assert rep["statistics"]["successful_expectations"] == result.n_expectations
    assert rep["statistics"]["unsuccessful_expectations"] == 0
    expected_counts = digits["label"].value_counts()
    assert rep["per_class_counts"] == {str(k): int(expected_counts[k]) for k in range(10)}
    assert rep["raw_path"] == str(raw)
    assert rep["raw_sha256"] == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert rep["rows"] == N_ROWS
    assert len(rep["expectations"]) == result.n_expectations
    rows = next(
        e for e in rep["expectations"] if e["name"] == "expect_table_row_count_to_be_between"
    )
    assert rows["observed_value"] == N_ROWS and rows["success"] is True
    in_set = next(
        e for e in rep["expectations"] if e["type"] == "expect_column_values_to_be_in_set"
    )
    assert in_set["column"] == "label" and in_set["unexpected_count"] == 0


def _out_of_range(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[[3, 7], "pixel_3"] = [17, -1]
    return f


def _null(f: pd.DataFrame) -> pd.DataFrame:
    f["pixel_10"] = f["pixel_10"].astype(float)
    f.loc[5, "pixel_10"] = np.nan
    return f


def _unknown_label(f: pd.DataFrame) -> pd.DataFrame:
    f.loc[0, "label"] = 11
    return f


def _class_below_minimum(f: pd.DataFrame) -> pd.DataFrame:
    threes = f.index[f["label"] == 3]
    return f.drop(index=threes[4:])


CASES = {
    "out_of_range": (
        _out_of_range,
        "expect_column_values_to_be_between(pixel_3)",
        "expect_column_values_to_be_between(pixel_3): 2 unexpected values",
    ),
    "null": (
        _null,
        "expect_column_values_to_not_be_null(pixel_10)",
        "expect_column_values_to_not_be_null(pixel_10): 1 null",
    ),
    "unknown_label": (
        _unknown_label,
        "expect_column_values_to_be_in_set(label)",
        "expect_column_values_to_be_in_set(label): unexpected values [11]",
    ),
    "too_few_rows": (
        lambda f: f.head(150),
        "expect_table_row_count_to_be_between",
        f"expect_table_row_count_to_be_between: 150 rows, expected at least {MIN_ROWS}",
    ),
    "class_below_minimum": (
        _class_below_minimum,
        "expect_table_row_count_to_be_between(label == 3)",
        "expect_table_row_count_to_be_between(label == 3): 4 rows, expected at least "
        f"{MIN_PER_CLASS}",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_frame_fails_with_report(tmp_path: Path, digits: pd.DataFrame, case: str) -> None:
    corrupt, name, phrase = CASES[case]
    cfg = make_cfg(tmp_path)
    raw = write(cfg, corrupt(digits.copy()))

    with pytest.raises(DataValidationError) as info:
        run(cfg)

    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"validation failed for {raw}: ")
    assert phrase in message
    assert info.value.result is not None and name in info.value.result.failed
    assert not info.value.result.success

    rep = report(cfg)
    assert rep["success"] is False
    assert name in rep["failed"]
    assert rep["statistics"]["unsuccessful_expectations"] == len(rep["failed"]) >= 1
    entry = next(e for e in rep["expectations"] if e["name"] == name)
    assert entry["success"] is False and entry["reason"] in message
    # the Data Docs are the record too
    assert (tmp_path / "validation" / "html" / "index.html").is_file()


def test_missing_column_fails_the_column_list_and_its_column(
    tmp_path: Path, digits: pd.DataFrame
) -> None:
    cfg = make_cfg(tmp_path)
    write(cfg, digits.drop(columns=["pixel_5"]))

    with pytest.raises(DataValidationError, match="pixel_5") as info:
        run(cfg)

    assert info.value.result.failed == [
        "expect_table_columns_to_match_ordered_list",
        "expect_column_values_to_not_be_null(pixel_5)",
        "expect_column_values_to_be_between(pixel_5)",
    ]
    message = str(info.value)
    assert "\n" not in message
    assert "expect_table_columns_to_match_ordered_list: missing columns ['pixel_5']" in message
    assert 'column "pixel_5" in BatchData does not exist' in message
    rep = report(cfg)
    assert rep["success"] is False and rep["failed"] == info.value.result.failed


def test_every_failure_is_listed_on_one_line(tmp_path: Path, digits: pd.DataFrame) -> None:
    cfg = make_cfg(tmp_path)
    raw = write(cfg, _unknown_label(_null(_out_of_range(digits.copy()))))

    with pytest.raises(DataValidationError) as info:
        run(cfg)

    assert str(info.value) == (
        f"validation failed for {raw}: "
        "expect_column_values_to_not_be_null(pixel_10): 1 null; "
        "expect_column_values_to_be_between(pixel_3): 2 unexpected values; "
        "expect_column_values_to_be_in_set(label): unexpected values [11]"
    )
    assert report(cfg)["statistics"]["unsuccessful_expectations"] == 3


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "file not found"),
        (b"", "file is empty"),
        (b"\n\n", "file is empty"),
        (b'pixel_0,label\n1,2,3\n"unterminated', "not a readable CSV"),
    ],
    ids=["missing", "empty", "blank", "unparseable"],
)
def test_unreadable_file_names_the_file(
    tmp_path: Path, content: bytes | None, problem: str
) -> None:
    cfg = make_cfg(tmp_path)
    raw = Path(cfg.paths.raw)
    if content is not None:
        raw.write_bytes(content)

    with pytest.raises(DataValidationError) as info:
        run(cfg)

    message = str(info.value)
    assert message.startswith(f"validation failed for {raw}: {problem}")
    assert "\n" not in message
    assert info.value.result is None


def test_raw_path_argument_overrides_config(tmp_path: Path) -> None:
    cfg = make_cfg(tmp_path)
    other = tmp_path / "elsewhere.csv"

    with pytest.raises(DataValidationError, match=f"^validation failed for {other}: file not"):
        run(cfg, raw_path=other)


def test_main_exits_with_the_one_line_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(PARAMS, tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["validate"])
    raw = load_config().paths.raw

    with pytest.raises(SystemExit) as info:
        validate_mod.main()

    assert info.value.code == f"validation failed for {raw}: file not found"


@pytest.mark.slow
@pytest.mark.parametrize("valid", [True, False], ids=["pass", "fail"])
def test_logs_report_docs_and_tag_to_mlflow(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, digits: pd.DataFrame, valid: bool
) -> None:
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # the local store keeps artifacts under ./mlartifacts
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = tracking.start_run("exp", "r")
    cfg = make_cfg(tmp_path)
    write(cfg, digits if valid else _unknown_label(digits.copy()))

    if valid:
        assert run(cfg, mlflow_run_id=run_id).success
    else:
        with pytest.raises(DataValidationError, match="in_set"):
            run(cfg, mlflow_run_id=run_id)

    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    assert client.get_run(run_id).data.tags["validation.success"] == str(valid).lower()
    top = {a.path: a.is_dir for a in client.list_artifacts(run_id, "validation")}
    assert top == {"validation/result.json": False, "validation/html": True}
    html = {a.path for a in client.list_artifacts(run_id, "validation/html")}
    assert "validation/html/index.html" in html
    logged = Path(client.download_artifacts(run_id, "validation/result.json", str(tmp_path)))
    assert json.loads(logged.read_text())["success"] is valid
