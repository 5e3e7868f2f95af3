"""The validate stage and the suite step: read the raw data, run its suite, report, raise.

- `run(cfg)` (the validate stage, `python -m tasks.validate`): enforce the committed suite
  `<paths.suites_dir>/<data name>.json`; a missing suite is a one-line error.
- `init_suite(cfg)` (the suite step, `dlops suite init` and the flow's `suite` task): infer a
  suite from the raw data when there is none (or `force`), and write it only once the data
  passes it, for the user to review and commit.

Both write `result.json` and GX Data Docs under `paths.validation_dir` (and log them to an
MLflow run when given) whether or not the data passes; then raise `DataValidationError` on
failure with one line naming every failed expectation (the first few, and how many more).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.config import Config
from tasks.sources import DataError, Manifest, one_line
from tasks.utils import atomic_dir, read_json, write_json
from tasks.validate import messages
from tasks.validate.engine import build_suite, run_suite
from tasks.validate.frames import Frame, read_frame
from tasks.validate.infer import infer_suite
from tasks.validate.messages import DataValidationError
from tasks.validate.mlflow_log import log_validation
from tasks.validate.suites import load_suite, parameters, read_suite, suite_path, write_suite
from tasks.validate.values import plain, sorted_values

RESULT = "result.json"


@dataclass(frozen=True)
class ValidateResult:
    """Outcome of a validation: the report, the Data Docs, the suite and what failed."""

    success: bool
    result_path: Path
    docs_path: Path
    n_expectations: int
    failed: list[str]
    suite_path: Path
    suite_inferred: bool
    missing_target: int = 0  # rows without a target (dropped by preprocess)

    @classmethod
    def load(cls, cfg: Config) -> ValidateResult:
        """The last validation's result, from its result.json."""
        out_dir = Path(cfg.paths.validation_dir)
        report = read_json(out_dir / RESULT)
        return cls(
            success=bool(report["success"]),
            result_path=out_dir / RESULT,
            docs_path=out_dir / "html" / "index.html",
            n_expectations=int(report["statistics"]["evaluated_expectations"]),
            failed=list(report["failed"]),
            suite_path=Path(report["suite"]),
            suite_inferred=bool(report["suite_inferred"]),
            missing_target=int(report.get("missing_target", 0)),
        )


@dataclass(frozen=True)
class SuiteResult:
    """The suite step: the suite file, whether this step wrote it, and its size."""

    path: Path
    created: bool
    n_expectations: int


def _unreadable(where: Path, exc: DataError, run_id: str | None) -> DataValidationError:
    """The reader's one-line message, without repeating `where`; tags the run as failed."""
    if run_id:
        log_validation(run_id, False)
    reason = str(exc).removeprefix(f"{where}: ")
    return DataValidationError(one_line(f"validation failed for {where}: {reason}", 600))


def _report(
    cfg: Config, manifest: Manifest, data: Frame, where: Path, path: Path, inferred: bool
) -> dict[str, Any]:
    """The parts of result.json that do not depend on the expectations' outcomes."""
    label = data.label
    counts = data.frame[label].value_counts() if data.task == "classification" else None
    return {
        "modality": data.modality,
        "task": data.task,
        "raw_path": str(where),
        "raw_sha256": manifest.sha256,
        "source": manifest.source,
        "rows": len(data.frame),
        "suite": str(path),
        "suite_inferred": inferred,
        "label": label,
        "missing_target": data.missing_target,
        "per_class_counts": {str(k): int(counts[k]) for k in sorted_values(counts.index)}
        if counts is not None
        else {},
        **data.summary,
        "params": cfg.validate_.model_dump(),
    }


def check(
    cfg: Config,
    manifest: Manifest,
    data: Frame,
    suite: dict[str, Any],
    path: Path,
    where: Path,
    inferred: bool,
    mlflow_run_id: str | None = None,
    report: bool = True,
) -> ValidateResult:
    """Validate `data` (read from `where`) against `suite`; raise DataValidationError on failure.

    The report (result.json, Data Docs, MLflow) is written unless `report` is false.
    """
    out_dir = Path(cfg.paths.validation_dir)
    docs_dir = out_dir / "html"
    try:
        gx_suite = build_suite(suite, path)
        if report:
            with atomic_dir(docs_dir) as tmp_docs:
                results, stats = run_suite(data.frame, gx_suite, parameters(cfg), tmp_docs, path)
        else:
            results, stats = run_suite(data.frame, gx_suite, parameters(cfg), None, path)
    except DataError as exc:
        raise _unreadable(where, exc, mlflow_run_id) from None
    failed = [r for r in results if not r.success]
    success = not failed
    result_path = out_dir / RESULT
    if report:
        body = {
            "success": success,
            **_report(cfg, manifest, data, where, path, inferred),
            "suite_saved": success or not inferred,
            "statistics": {
                key: stats[key]
                for key in (
                    "evaluated_expectations",
                    "successful_expectations",
                    "unsuccessful_expectations",
                    "success_percent",
                )
            },
            "expectations": [messages.entry(r, data) for r in results],
            "failed": [messages.name(r) for r in failed],
        }
        write_json(result_path, plain(body))
        if mlflow_run_id:  # an inferred suite is logged once written (init_suite)
            suite_file = [] if inferred else [path]
            log_validation(mlflow_run_id, success, result_path, docs_dir, *suite_file)
    result = ValidateResult(
        success=success,
        result_path=result_path,
        docs_path=docs_dir / "index.html",
        n_expectations=len(results),
        failed=[messages.name(r) for r in failed],
        suite_path=path,
        suite_inferred=inferred,
        missing_target=data.missing_target,
    )
    if not success:
        reasons = [f"{messages.name(r)}: {messages.why(r, data)}" for r in failed]
        raise DataValidationError(messages.message(where, reasons), result)
    return result


def run(cfg: Config, mlflow_run_id: str | None = None) -> ValidateResult:
    """Enforce the committed suite on the raw data (see the module docstring)."""
    raw_dir = Path(cfg.paths.raw_dir)
    path = suite_path(cfg)
    where = raw_dir
    try:
        manifest = Manifest.load(raw_dir)
        where = manifest.data_path(raw_dir)
        data = read_frame(manifest, raw_dir)
        suite = load_suite(path, data)
    except DataError as exc:
        raise _unreadable(where, exc, mlflow_run_id) from None
    return check(cfg, manifest, data, suite, path, where, False, mlflow_run_id)


def init_suite(
    cfg: Config,
    force: bool = False,
    mlflow_run_id: str | None = None,
    raw_dir: str | Path | None = None,
    report: bool = True,
) -> SuiteResult:
    """Infer the data's suite when it has none (or `force`); write it once the data passes.

    `raw_dir` (default `paths.raw_dir`) holds what ingest copied. Nothing is written for data
    that fails the inferred suite (a too small class, corrupt files, NaN sequences, ...): the
    DataValidationError names why, and the report says it all when `report` is true.
    """
    path = suite_path(cfg)
    if path.is_file() and not force:
        try:  # a broken suite is for the validate stage to name, with the data's file
            n = len(read_suite(path)["expectations"])
        except DataError:
            n = 0
        return SuiteResult(path, False, n)
    raw = Path(raw_dir) if raw_dir is not None else Path(cfg.paths.raw_dir)
    where = raw
    try:
        manifest = Manifest.load(raw)
        where = manifest.data_path(raw)
        data = read_frame(manifest, raw)
        suite = infer_suite(data, cfg, manifest)
    except DataError as exc:
        raise _unreadable(where, exc, mlflow_run_id) from None
    try:  # no Data Docs for a suite that passes: the validate stage writes them next
        result = check(cfg, manifest, data, suite, path, where, True, report=False)
    except DataValidationError:
        if not report:
            raise
        # the report of why, once (a suite the data fails is not written)
        check(cfg, manifest, data, suite, path, where, True, mlflow_run_id)
        raise
    write_suite(path, suite)
    if mlflow_run_id:
        log_validation(mlflow_run_id, True, path)
    return SuiteResult(path, True, result.n_expectations)


def main() -> None:
    """Entry point for `python -m tasks.validate` (dvc.yaml): exit non-zero on failure."""
    from tasks.entry import run_stage

    argparse.ArgumentParser(description=__doc__).parse_args()

    def body(cfg: Config) -> str:
        result = run(cfg)
        return (
            f"validate: {result.n_expectations} expectations passed (suite {result.suite_path}) "
            f"-> {result.result_path}"
        )

    run_stage("validate", body)
