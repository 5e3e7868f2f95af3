"""Running a suite with Great Expectations: an ephemeral context, one checkpoint, Data Docs.

Nothing is read from or written to a GX project folder. The suite's parameters
(`{"$PARAMETER": ...}` bounds) are resolved by GX from the `expectation_parameters` given here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks.sources import DataError, one_line

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations import ExpectationSuite
    from great_expectations.core.expectation_validation_result import (
        ExpectationValidationResult,
    )

SITE_NAME = "dlops"
PARTIAL = 20  # unexpected values / examples GX returns per expectation


def build_suite(suite: dict[str, Any], path: Path) -> ExpectationSuite:
    """A GX ExpectationSuite from its JSON dict; an invalid expectation names itself."""
    import great_expectations as gx
    from great_expectations.expectations.expectation_configuration import (
        ExpectationConfiguration,
    )

    expectations = []
    for i, exp in enumerate(suite["expectations"]):
        try:
            config = {k: val for k, val in exp.items() if k not in ("id", "rendered_content")}
            expectations.append(ExpectationConfiguration(**config).to_domain_obj())
        except Exception as exc:  # GX raises many types for a bad configuration
            kind = exp.get("type") if isinstance(exp, dict) else None
            raise DataError(
                f"suite {path}: expectation {i} ({kind}) is not valid ({one_line(exc, 120)})"
            ) from None
    return gx.ExpectationSuite(
        name=str(suite.get("name") or path.stem),
        expectations=expectations,
        meta=suite.get("meta"),
        notes=suite.get("notes"),
    )


def _docs_site(docs_dir: Path) -> dict[str, Any]:
    return {
        "class_name": "SiteBuilder",
        "show_how_to_buttons": False,
        "store_backend": {
            "class_name": "TupleFilesystemStoreBackend",
            "base_directory": str(docs_dir.resolve()),  # GX: must be absolute
        },
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        # The validation page shows every expectation; the suite is its own JSON file.
        "site_section_builders": {"expectations": "0", "profiling": "0"},
    }


def run_suite(
    frame: pd.DataFrame,
    suite: ExpectationSuite,
    parameters: dict[str, Any],
    docs_dir: Path | None,
    where: Path,
) -> tuple[list[ExpectationValidationResult], dict[str, Any]]:
    """Validate `frame` in one checkpoint run; Data Docs into `docs_dir` (None: no docs).

    Returns the expectation results in suite order (GX reorders them) and the statistics. A
    suite parameter that `parameters` lacks (an edited suite) is a DataError naming it.
    """
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.exceptions import SuiteParameterError

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    # The ephemeral context comes with a `local_site` in a temporary folder: replace it by ours.
    for name in list(context.list_data_docs_sites()):
        context.delete_data_docs_site(name)
    if docs_dir is not None:
        context.add_data_docs_site(SITE_NAME, _docs_site(docs_dir))
    name = suite.name
    batch = (
        context.data_sources.add_pandas("raw")
        .add_dataframe_asset(name)
        .add_batch_definition_whole_dataframe("whole")
    )
    suite = context.suites.add(suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name=name, data=batch, suite=suite)
    )
    # SUMMARY lists the first few unexpected values and row indices (mapped to file names or
    # sequence ids by messages.ids). Asking GX for `unexpected_index_column_names` instead costs
    # a pandas lookup per unexpected row: seconds for class shares, whose "unexpected" rows are
    # all the other classes.
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL}
    actions = []
    if docs_dir is not None:
        actions = [gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[SITE_NAME])]
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            actions=actions,
            result_format=result_format,
        )
    )
    try:
        result = checkpoint.run(
            batch_parameters={"dataframe": frame}, expectation_parameters=dict(parameters)
        )
    except SuiteParameterError as exc:
        known = ", ".join(sorted(parameters))
        raise DataError(
            f"suite {where}: {one_line(exc, 120)} (suite parameters are validate keys: {known})"
        ) from None
    suite_result = next(iter(result.run_results.values()))
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    results = sorted(suite_result.results, key=lambda r: order.get(r.expectation_config.id, 0))
    return results, dict(suite_result.statistics)
