"""Validate: run a Great Expectations suite on the raw CSV; write result.json and GX Data Docs.

The suite is built in code on an ephemeral GX context (nothing is read from or written to a GX
project folder). Every expectation is GX-native, the per-class minimum included: one
`expect_table_row_count_to_be_between` per class with a `label == k` row condition.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.config import Config, ValidateConfig, load_config
from tasks.ingest import COLUMNS, LABEL, PIXELS
from tasks.utils import atomic_dir, write_json

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations import ExpectationSuite
    from great_expectations.core.expectation_validation_result import (
        ExpectationValidationResult,
    )

SUITE_NAME = "raw_digits"
SITE_NAME = "dlops"
ARTIFACT_PATH = "validation"
SUCCESS_TAG = "validation.success"
PER_CLASS_META = "min_rows_per_class"


class DataValidationError(ValueError):
    """The raw data is missing, unreadable or fails an expectation; the message is one line.

    `result` holds the report of a validation that ran (None when the file could not be read).
    """

    def __init__(self, message: str, result: ValidateResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class ValidateResult:
    """Outcome of a validation: the report, the Data Docs and what failed."""

    success: bool
    result_path: Path
    docs_path: Path
    n_expectations: int
    failed: list[str]


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _read_raw(path: Path) -> tuple[pd.DataFrame, str]:
    """Read the raw CSV and its sha256 (of the very bytes validated).

    A missing, empty or unparseable file raises `DataValidationError` naming the file.
    """
    import pandas as pd

    prefix = f"validation failed for {path}"
    if not path.is_file():
        raise DataValidationError(f"{prefix}: file not found")
    data = path.read_bytes()
    if not data.strip():
        raise DataValidationError(f"{prefix}: file is empty")
    try:
        frame = pd.read_csv(io.BytesIO(data))
    except pd.errors.EmptyDataError:
        raise DataValidationError(f"{prefix}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as exc:
        raise DataValidationError(f"{prefix}: not a readable CSV ({_one_line(exc)})") from None
    return frame, hashlib.sha256(data).hexdigest()


def _build_suite(v: ValidateConfig) -> ExpectationSuite:
    """The expectations on the raw digits, in the order they are reported."""
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    ge = gx.expectations
    bounds = {"min_value": v.pixel_min, "max_value": v.pixel_max}
    expectations = [
        ge.ExpectTableColumnsToMatchOrderedList(column_list=COLUMNS),
        ge.ExpectTableRowCountToBeBetween(min_value=v.min_rows),
        *(ge.ExpectColumnValuesToNotBeNull(column=c) for c in COLUMNS),
        *(ge.ExpectColumnValuesToBeBetween(column=c, **bounds) for c in PIXELS),
        ge.ExpectColumnValuesToBeInSet(column=LABEL, value_set=list(range(v.n_classes))),
    ]
    for k in range(v.n_classes):
        # Data Docs do not render row conditions, hence the description.
        expectations.append(
            ge.ExpectTableRowCountToBeBetween(
                min_value=v.min_rows_per_class,
                row_condition=Column(LABEL) == k,
                description=f"Class {LABEL} == {k} must have at least "
                f"{v.min_rows_per_class} rows.",
                meta={PER_CLASS_META: k},
            )
        )
    # The constructor, unlike add_expectation (quadratic de-duplication), takes the list as is.
    return gx.ExpectationSuite(name=SUITE_NAME, expectations=expectations)


def _validate(
    frame: pd.DataFrame, v: ValidateConfig, docs_dir: Path
) -> tuple[list[ExpectationValidationResult], dict[str, Any]]:
    """Run the suite on `frame` through a checkpoint that builds Data Docs into `docs_dir`.

    Returns the expectation results in suite order (GX reorders them) and the statistics.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    # The ephemeral context comes with a `local_site` in a temporary folder: replace it by ours.
    for name in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(name)
    context.add_data_docs_site(
        SITE_NAME,
        {
            "class_name": "SiteBuilder",
            "show_how_to_buttons": False,
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str(docs_dir.resolve()),  # GX: must be absolute
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )
    batch = (
        context.data_sources.add_pandas("raw")
        .add_dataframe_asset(SUITE_NAME)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(_build_suite(v))
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=SUITE_NAME, data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=SUITE_NAME,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[SITE_NAME])],
            result_format="BASIC",
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": frame})
    suite_result = next(iter(result.run_results.values()))
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    results = sorted(suite_result.results, key=lambda r: order.get(r.expectation_config.id, 0))
    return results, dict(suite_result.statistics)


def _name(r: ExpectationValidationResult) -> str:
    """`type(column)` for a column expectation, `type(label == k)` for a per-class one."""
    config = r.expectation_config
    if PER_CLASS_META in (config.meta or {}):
        return f"{config.type}({LABEL} == {config.meta[PER_CLASS_META]})"
    column = config.kwargs.get("column")
    return f"{config.type}({column})" if column else config.type


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _values(r: ExpectationValidationResult) -> list[Any]:
    seen = {repr(x): x for x in r.result.get("partial_unexpected_list") or []}
    try:
        return sorted(seen.values())
    except TypeError:
        return list(seen.values())


def _exception(r: ExpectationValidationResult) -> str | None:
    """The error an expectation raised, if any, as one line."""
    info = r.exception_info or {}
    # GX nests metric-resolution errors (e.g. a missing column) under one key per metric.
    infos = [info] if "raised_exception" in info else list(info.values())
    messages = [
        str(i.get("exception_message") or "raised an exception")
        .removeprefix("Error: ")
        .rstrip(".")
        for i in infos
        if isinstance(i, dict) and i.get("raised_exception")
    ]
    return _one_line("; ".join(dict.fromkeys(messages)).replace(";", ",")) if messages else None


def _why(r: ExpectationValidationResult) -> str:
    """Why an expectation failed, in a few words."""
    error = _exception(r)
    if error:
        return f"error: {error}"
    config, res = r.expectation_config, r.result
    if config.type == "expect_table_columns_to_match_ordered_list":
        observed = list(res.get("observed_value") or [])
        expected = list(config.kwargs["column_list"])
        missing = [c for c in expected if c not in observed]
        extra = [c for c in observed if c not in expected]
        parts = [f"missing columns {missing}"] if missing else []
        parts += [f"unexpected columns {extra}"] if extra else []
        return ", ".join(parts) or "columns out of order"
    if config.type == "expect_table_row_count_to_be_between":
        return f"{res.get('observed_value')} rows, expected at least {config.kwargs['min_value']}"
    unexpected = int(res.get("unexpected_count") or 0)
    if config.type == "expect_column_values_to_not_be_null":
        return f"{unexpected} null{'' if unexpected == 1 else 's'}"
    if config.type == "expect_column_values_to_be_in_set":
        return f"unexpected values {_values(r)}"
    return _plural(unexpected, "unexpected value")


def _entry(r: ExpectationValidationResult) -> dict[str, Any]:
    """One expectation's outcome for result.json."""
    config, res = r.expectation_config, r.result
    entry: dict[str, Any] = {
        "name": _name(r),
        "type": config.type,
        "column": config.kwargs.get("column"),
        "success": bool(r.success),
    }
    if PER_CLASS_META in (config.meta or {}):
        entry["row_condition"] = f"{LABEL} == {config.meta[PER_CLASS_META]}"
    if "observed_value" in res:
        entry["observed_value"] = res["observed_value"]
    if "unexpected_count" in res:
        entry["element_count"] = res.get("element_count")
        entry["unexpected_count"] = res["unexpected_count"]
        entry["partial_unexpected_values"] = _values(r)
    error = _exception(r)
    if error:
        entry["exception"] = error
    if not r.success:
        entry["reason"] = _why(r)
    return entry


def _class_counts(results: list[ExpectationValidationResult]) -> dict[str, int | None]:
    """Rows per class, as observed by the per-class row-count expectations."""
    counts: dict[str, int | None] = {}
    for r in results:
        meta = r.expectation_config.meta or {}
        if PER_CLASS_META in meta:
            observed = r.result.get("observed_value")
            counts[str(meta[PER_CLASS_META])] = None if observed is None else int(observed)
    return counts


def _log_to_mlflow(run_id: str, result_path: Path, docs_dir: Path, success: bool) -> None:
    from tasks import tracking

    client = tracking.client()
    client.log_artifact(run_id, str(result_path), ARTIFACT_PATH)
    client.log_artifacts(run_id, str(docs_dir), f"{ARTIFACT_PATH}/{docs_dir.name}")
    client.set_tag(run_id, SUCCESS_TAG, "true" if success else "false")


def run(
    cfg: Config, raw_path: str | Path | None = None, mlflow_run_id: str | None = None
) -> ValidateResult:
    """Validate the raw CSV; write `result.json` and Data Docs under `paths.validation_dir`.

    The report is written (and logged to `mlflow_run_id`, when given) whether or not the data
    passes; then `DataValidationError` is raised on failure, naming every failed expectation.
    """
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    path = Path(raw_path if raw_path is not None else cfg.paths.raw)
    out_dir = Path(cfg.paths.validation_dir)
    frame, sha256 = _read_raw(path)

    docs_dir = out_dir / "html"
    with atomic_dir(docs_dir) as tmp_docs:
        results, stats = _validate(frame, cfg.validate_, tmp_docs)

    failed = [r for r in results if not r.success]
    success = not failed
    report = {
        "success": success,
        "suite": SUITE_NAME,
        "raw_path": str(path),
        "raw_sha256": sha256,
        "rows": len(frame),
        "statistics": {
            "evaluated_expectations": stats["evaluated_expectations"],
            "successful_expectations": stats["successful_expectations"],
            "unsuccessful_expectations": stats["unsuccessful_expectations"],
            "success_percent": stats["success_percent"],
        },
        "per_class_counts": _class_counts(results),
        "params": cfg.validate_.model_dump(),
        "expectations": [_entry(r) for r in results],
        "failed": [_name(r) for r in failed],
    }
    result_path = write_json(out_dir / "result.json", report)
    if mlflow_run_id:
        _log_to_mlflow(mlflow_run_id, result_path, docs_dir, success)
    result = ValidateResult(
        success=success,
        result_path=result_path,
        docs_path=docs_dir / "index.html",
        n_expectations=len(results),
        failed=[_name(r) for r in failed],
    )
    if not success:
        reasons = "; ".join(f"{_name(r)}: {_why(r)}" for r in failed)
        raise DataValidationError(f"validation failed for {path}: {reasons}", result)
    return result


def main() -> None:
    """Entry point for `python -m tasks.validate` (dvc.yaml): exit non-zero on failure."""
    argparse.ArgumentParser(description=__doc__).parse_args()
    try:
        result = run(load_config())
    except DataValidationError as exc:
        sys.exit(str(exc))
    print(f"validate: {result.n_expectations} expectations passed -> {result.result_path}")


if __name__ == "__main__":
    main()
