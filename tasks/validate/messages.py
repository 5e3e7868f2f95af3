"""Failure messages: why each expectation failed in a few words, and the one-line error.

Every failed expectation gets a reason (`_why`) for result.json; the error raised names the
first few, on one line: `validation failed for <file>: <name>: <why>; ...`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.sources import one_line
from tasks.validate.frames import Frame
from tasks.validate.infer import NUMERIC_TYPES
from tasks.validate.values import META, plain, sorted_values

if TYPE_CHECKING:
    from great_expectations.core.expectation_validation_result import (
        ExpectationValidationResult,
    )

    from tasks.validate.stage import ValidateResult

MAX_REPORTED = 5  # failures in the one-line message; examples in a reason


class DataValidationError(ValueError):
    """The raw data is missing, unreadable or fails an expectation; the message is one line.

    `result` holds the report of a validation that ran (None when the data could not be read).
    """

    def __init__(self, message: str, result: ValidateResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def _ours(r: ExpectationValidationResult) -> dict[str, Any]:
    return (r.expectation_config.meta or {}).get(META) or {}


def name(r: ExpectationValidationResult) -> str:
    """The expectation's name in reports: ours when set, else `type(column)`."""
    config = r.expectation_config
    if _ours(r).get("name"):
        return str(_ours(r)["name"])
    column = config.kwargs.get("column")
    return f"{config.type}({column})" if column else config.type


def _plural(n: int, word: str) -> str:
    if n == 1:
        return f"{n} {word}"
    return f"{n} {word}es" if word.endswith(("s", "x")) else f"{n} {word}s"


def _listed(items: list[Any], total: int | None = None) -> str:
    """The first few items, and how many more."""
    total = len(items) if total is None else total
    shown = ", ".join(str(x) for x in items[:MAX_REPORTED])
    more = total - min(len(items), MAX_REPORTED)
    return f"{shown} and {more} more" if more > 0 else shown


def _values(r: ExpectationValidationResult) -> list[Any]:
    seen = {repr(x): x for x in r.result.get("partial_unexpected_list") or []}
    return sorted_values(seen.values())


def _ids(r: ExpectationValidationResult, data: Frame) -> list[Any]:
    """The files (images) or sequences of the first few unexpected rows; tables: none."""
    column = data.id_column
    if not column:
        return []
    rows = r.result.get("partial_unexpected_index_list") or []
    ids = data.frame[column]
    return [ids.iloc[i] for i in rows if isinstance(i, int | np.integer) and 0 <= i < len(ids)]


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
    return (
        one_line("; ".join(dict.fromkeys(messages)).replace(";", ","), 160) if messages else None
    )


def _bounds(kwargs: dict[str, Any]) -> str:
    lo, hi = kwargs.get("min_value"), kwargs.get("max_value")
    if lo is not None and hi is not None:
        return f"in [{lo:.6g}, {hi:.6g}]"
    return f"at least {lo:.6g}" if lo is not None else f"at most {hi:.6g}"


def _types(type_list: list[str]) -> str:
    return "numeric" if set(type_list) == set(NUMERIC_TYPES) else " or ".join(type_list)


def why(r: ExpectationValidationResult, data: Frame) -> str:
    """Why an expectation failed, in a few words."""
    config, res, ours = r.expectation_config, r.result, _ours(r)
    kwargs, kind = config.kwargs, config.type
    column = kwargs.get("column")
    if column is not None and column not in data.frame.columns:
        return f"no column {column!r}"
    error = _exception(r)
    if error:
        return f"error: {error}"
    unexpected = int(res.get("unexpected_count") or 0)
    if kind == "expect_table_columns_to_match_ordered_list":
        observed = list(res.get("observed_value") or [])
        expected = list(kwargs["column_list"])
        missing = [c for c in expected if c not in observed]
        extra = [c for c in observed if c not in expected]
        parts = [f"missing columns {missing}"] if missing else []
        parts += [f"unexpected columns {extra}"] if extra else []
        return ", ".join(parts) or f"columns out of order: {observed}"
    if kind == "expect_table_row_count_to_be_between":
        return f"{_plural(int(res.get('observed_value') or 0), 'row')}, expected {_bounds(kwargs)}"
    if kind == "expect_column_unique_value_count_to_be_between":
        word = ours.get("unexpected", "distinct value")
        return f"{_plural(int(res.get('observed_value') or 0), word)}, need {_bounds(kwargs)}"
    if kind == "expect_column_distinct_values_to_equal_set":
        missing = sorted_values(res.get("partial_missing_list") or [])
        extra = sorted_values(res.get("partial_unexpected_list") or [])
        parts = [f"missing {missing}"] if missing else []
        parts += [f"unexpected {extra}"] if extra else []
        return ", ".join(parts) or f"observed {res.get('observed_value')}"
    if ours.get("share"):
        total = int(res.get("element_count") or 0) - int(res.get("missing_count") or 0)
        in_class = total - unexpected if ours["share"] == "min" else unexpected
        share = in_class / total if total else 0.0
        bound = kwargs["mostly"] if ours["share"] == "min" else 1 - kwargs["mostly"]
        side = "least" if ours["share"] == "min" else "most"
        return f"share {share:.2%} ({in_class} of {total} rows), expected at {side} {bound:.2%}"
    if kind == "expect_column_values_to_not_be_null" and ours.get("target"):
        total = int(res.get("element_count") or 0)
        share = unexpected / total if total else 0.0
        return (
            f"{unexpected} of {total} rows have no target ({share:.1%}), at most "
            f"{1 - kwargs['mostly']:.1%} allowed (validate.max_missing_target)"
        )
    if kind == "expect_column_values_to_not_be_null":
        total = int(res.get("element_count") or 0)
        nulls = _plural(unexpected, "null")
        if "mostly" in kwargs and total:
            return (
                f"{nulls} ({unexpected / total:.1%}), at most {1 - kwargs['mostly']:.1%} allowed"
            )
        return nulls
    if kind == "expect_column_values_to_be_in_type_list" and "observed_value" in res:
        return f"type {res['observed_value']}, expected {_types(kwargs['type_list'])}"
    ids = _ids(r, data)
    if ours.get("unexpected"):
        noted = [f"{i} ({data.notes[i]})" if i in data.notes else i for i in ids]
        items = _listed(noted or _values(r), unexpected)
        total = int(res.get("element_count") or 0)
        bounds = f" (expected {_bounds(kwargs)})" if kind.endswith("_to_be_between") else ""
        return f"{unexpected} of {total} {ours['unexpected']}{bounds}: {items}"
    if kind == "expect_column_values_to_be_in_type_list":
        what = f"not {_types(kwargs['type_list'])}"
    elif kind == "expect_column_values_to_be_between":
        what = f"not {_bounds(kwargs)}"
    elif kind == "expect_column_values_to_be_in_set":
        what = "not in the expected set"
    else:
        what = "unexpected"
    values = _listed(_values(r), unexpected)
    where = f" (in {_listed(ids, unexpected)})" if ids else ""
    return f"{_plural(unexpected, 'value')} {what}: {values}{where}"


def _condition(condition: Any) -> str:
    """A row condition as text (`label == cat`), whether GX holds it as an object or a dict."""
    from great_expectations.expectations.row_conditions import deserialize_row_condition

    try:
        return repr(deserialize_row_condition(condition))
    except (TypeError, ValueError):
        return str(condition)


def entry(r: ExpectationValidationResult, data: Frame) -> dict[str, Any]:
    """One expectation's outcome for result.json."""
    config, res = r.expectation_config, r.result
    out: dict[str, Any] = {
        "name": name(r),
        "type": config.type,
        "column": config.kwargs.get("column"),
        "success": bool(r.success),
    }
    condition = config.kwargs.get("row_condition")
    if condition is not None:
        out["row_condition"] = _condition(condition)
    for key in ("observed_value", "element_count", "unexpected_count", "missing_count"):
        if key in res:
            out[key] = res[key]
    if res.get("partial_unexpected_list") and config.type != "expect_column_values_to_not_be_null":
        out["partial_unexpected_values"] = _values(r)
    if _ids(r, data):
        out[f"partial_unexpected_{data.id_column}s"] = _ids(r, data)
    if res.get("partial_missing_list"):
        out["missing_values"] = sorted_values(res["partial_missing_list"])
    error = _exception(r)
    if error:
        out["exception"] = error
    if not r.success:
        out["reason"] = why(r, data)
    return plain(out)


def message(where: Path, failures: list[str]) -> str:
    """`validation failed for <where>: <name>: <why>; ...` on one line, the first few failures."""
    shown = [one_line(f, 300) for f in failures[:MAX_REPORTED]]
    if len(failures) > MAX_REPORTED:
        shown.append(f"and {len(failures) - MAX_REPORTED} more (see result.json)")
    return one_line(f"validation failed for {where}: {'; '.join(shown)}", 2000)
