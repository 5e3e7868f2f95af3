"""MLflow's scoring JSON (`dataframe_split`, `dataframe_records`, `inputs`, `instances`) -> rows.

The same request bodies as `mlflow models serve` takes, so its clients work unchanged. Every
problem is a `RequestError`: an HTTP status, a kind (the metrics label) and one line that names
the field or row.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

SPLIT = "dataframe_split"
RECORDS = "dataframe_records"
INPUTS = "inputs"
INSTANCES = "instances"
FORMATS = (SPLIT, RECORDS, INPUTS, INSTANCES)


class RequestError(ValueError):
    """A request the server refuses: `status` (4xx), `kind` (metrics label), one-line message."""

    def __init__(self, message: str, status: int = 400, kind: str = "bad_request") -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind


def parse_body(body: bytes) -> dict[str, Any]:
    """The JSON object of a request body; one-line error otherwise."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"malformed JSON: {exc}", kind="malformed_json") from None
    if not isinstance(payload, dict):
        raise RequestError(
            f"expected a JSON object with one of {', '.join(FORMATS)}; got a "
            f"{type(payload).__name__}",
            kind="bad_format",
        )
    return payload


def _format(payload: dict[str, Any]) -> str:
    keys = [k for k in FORMATS if k in payload]
    if len(keys) != 1:
        found = ", ".join(sorted(map(str, payload))[:5]) or "none"
        raise RequestError(
            f"expected exactly one of {', '.join(FORMATS)} in the request; got keys: {found}",
            kind="bad_format",
        )
    extra = sorted(set(payload) - {keys[0], "params"})
    if extra:
        raise RequestError(f"unknown request field {extra[0]!r}", kind="bad_format")
    return keys[0]


def count_rows(payload: dict[str, Any], max_rows: int) -> int:
    """Rows in a request (structure checked, values not); 413 above `max_rows`."""
    fmt = _format(payload)
    value = payload[fmt]
    if fmt == SPLIT:
        if not isinstance(value, dict) or not isinstance(value.get("data"), list):
            raise RequestError(
                f"{SPLIT}: expected an object with 'columns' and 'data' (a list of rows)",
                kind="bad_format",
            )
        n = len(value["data"])
    elif isinstance(value, dict):
        lengths = {len(v) if isinstance(v, list) else 1 for v in value.values()}
        if len(lengths) > 1:
            raise RequestError(f"{fmt}: columns of different lengths", kind="bad_format")
        n = lengths.pop() if lengths else 0
    elif isinstance(value, list):
        n = len(value)
    else:
        raise RequestError(
            f"{fmt}: expected a list of rows (or an object of columns); got a "
            f"{type(value).__name__}",
            kind="bad_format",
        )
    if n == 0:
        raise RequestError(f"{fmt}: no rows to predict", kind="bad_format")
    if n > max_rows:
        raise RequestError(
            f"{fmt}: {n} rows in one request; at most {max_rows}", status=413, kind="too_many_rows"
        )
    return n


def to_frame(payload: dict[str, Any], columns: list[str], max_rows: int) -> pd.DataFrame:
    """The request's rows as the pyfunc's input frame (`columns`: the model's raw inputs)."""
    count_rows(payload, max_rows)
    fmt = _format(payload)
    value = payload[fmt]
    if fmt == SPLIT:
        names = value.get("columns")
        if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
            raise RequestError(f"{SPLIT}: 'columns' must be a list of names", kind="bad_format")
        for i, row in enumerate(value["data"]):
            if not isinstance(row, list) or len(row) != len(names):
                got = f"{len(row)} values" if isinstance(row, list) else type(row).__name__
                raise RequestError(
                    f"{SPLIT}: row {i} has {got} for {len(names)} columns", kind="bad_format"
                )
        return _frame(value["data"], names)
    if isinstance(value, dict):  # columns -> values
        cols = {k: v if isinstance(v, list) else [v] for k, v in value.items()}
        return pd.DataFrame(cols)
    if all(isinstance(row, dict) for row in value):
        return pd.DataFrame.from_records(value)
    if fmt == RECORDS:
        bad = next(i for i, row in enumerate(value) if not isinstance(row, dict))
        raise RequestError(f"{RECORDS}: row {bad} is not an object", kind="bad_format")
    # inputs/instances as a plain list: one value per row (images, sequences) or rows of values
    if len(columns) == 1:
        return pd.DataFrame({columns[0]: pd.Series(value, dtype=object)})
    for i, row in enumerate(value):
        if not isinstance(row, list) or len(row) != len(columns):
            raise RequestError(
                f"{fmt}: row {i} is not a list of {len(columns)} values ({', '.join(columns[:5])}"
                f"{', ...' if len(columns) > 5 else ''})",
                kind="bad_format",
            )
    return _frame(value, columns)


def _frame(rows: list[list[Any]], columns: list[str]) -> pd.DataFrame:
    """Rows as a frame; cells that are lists (images, sequences) stay whole."""
    return pd.DataFrame(
        {c: pd.Series([r[j] for r in rows], dtype=object) for j, c in enumerate(columns)}
    ).infer_objects()


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """An output frame as MLflow's `predictions` (records of native Python values)."""
    return frame.to_dict(orient="records")
