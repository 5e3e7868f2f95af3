"""Validate: Great Expectations on the raw data; result.json and Data Docs; the suite step.

One job per module: `frames` (the validation frame of each modality), `infer` (a suite from a
frame), `suites` (the suite file and its parameters), `engine` (running GX), `messages` (why an
expectation failed, the one-line error), `mlflow_log` (tracking), `stage` (the validate stage
and the suite step). `python -m tasks.validate` runs the stage (dvc.yaml). Nothing heavy is
imported here: GX loads only when a suite is built or run.
"""

from tasks.validate.messages import DataValidationError
from tasks.validate.stage import SuiteResult, ValidateResult, check, init_suite, main, run
from tasks.validate.suites import SuiteMissingError, suite_path

__all__ = [
    "DataValidationError",
    "SuiteMissingError",
    "SuiteResult",
    "ValidateResult",
    "check",
    "init_suite",
    "main",
    "run",
    "suite_path",
]
