"""Inferring a GX suite from a validation frame: what the data looks like, as expectations.

Learnt from the data: the column set and types, null fractions, ranges, categories, classes and
their shares, image channels, sequence shapes. Taken from params.yaml at validation time, as GX
suite parameters (`{"$PARAMETER": ...}`): the row-count bounds, the minimum image size and the
share of rows allowed without a target, so that a changed bound applies to a committed suite.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from tasks.config import Config, ValidateConfig
from tasks.sources import DataError, Manifest
from tasks.validate.frames import SEQUENCE_LABEL, Frame
from tasks.validate.values import META, lower, param, plain, sorted_values, upper

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations.expectations.expectation import Expectation

# Object columns with more distinct values than this (or than half their rows) are free text
# or identifiers: their types are checked, not their values.
CATEGORY_LIMIT = 100
NUMERIC_TYPES = [
    "int",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float",
    "float16",
    "float32",
    "float64",
]
# Python value types GX's pandas type check resolves by name (object columns).
OBJECT_TYPES = ("str", "bool", "int", "float", "bytes", "Timestamp", "Timedelta")
# The share of rows that must have a target, from params.yaml (GX evaluates the arithmetic).
TARGET_PRESENT = "1 - max_missing_target"


def expect(kind: type[Expectation], name: str | None = None, **kwargs: Any) -> Expectation:
    """An expectation; `name` (its name in reports), `unexpected`, `share`, `target` go to meta."""
    ours = {k: kwargs.pop(k) for k in ("unexpected", "share", "target") if k in kwargs}
    if name:
        ours["name"] = name
    return kind(**kwargs, meta={META: ours} if ours else {})


def _range(col: pd.Series, slack: float) -> tuple[float, float] | None:
    """The observed finite range widened by `slack` x its width on each side (ints stay ints)."""
    values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    lo, hi = float(values.min()), float(values.max())
    pad = slack * (hi - lo)
    if col.dtype.kind in "iu":
        return math.floor(lo - pad), math.ceil(hi + pad)
    return lo - pad, hi + pad


def _type_list(col: pd.Series) -> list[str] | None:
    """Types that tolerate int/float changes; object columns: their values' Python types."""
    kind = col.dtype.kind
    if kind in "iuf":
        return list(NUMERIC_TYPES)
    if kind == "b":
        return ["bool"]
    if kind in "mM":
        return [str(col.dtype)]
    names = sorted({type(v).__name__ for v in col.dropna()})
    if not names or not set(names) <= set(OBJECT_TYPES):
        return None
    if set(names) <= {"int", "float"}:
        return list(NUMERIC_TYPES)
    return names


def _is_categorical(col: pd.Series) -> bool:
    values = col.dropna()
    if col.dtype != object or not len(values) or not all(isinstance(v, str) for v in values):
        return False
    n = values.nunique()
    return n <= CATEGORY_LIMIT and n <= max(2, len(values) // 2)


def _target_present(column: str) -> Expectation:
    """At most `validate.max_missing_target` of the rows lack a target (preprocess drops them)."""
    import great_expectations as gx

    return expect(
        gx.expectations.ExpectColumnValuesToNotBeNull,
        column=column,
        mostly=param(TARGET_PRESENT),
        description="At most validate.max_missing_target of the rows lack a target.",
        target=True,
    )


def _column_expectations(
    data: Frame, column: str, v: ValidateConfig, skip_values: bool = False
) -> list[Expectation]:
    """Type, nulls, and range or categories of one column."""
    import great_expectations as gx

    ge = gx.expectations
    col = data.frame[column]
    out = []
    types = _type_list(col)
    if types:
        out.append(expect(ge.ExpectColumnValuesToBeInTypeList, column=column, type_list=types))
    if column == data.label:
        out.append(_target_present(column))
    else:
        bound = float(col.isna().mean()) + v.null_slack
        if bound < 1:
            mostly = lower(1 - bound)
            kwargs = {"mostly": mostly} if mostly < 1 else {}
            out.append(expect(ge.ExpectColumnValuesToNotBeNull, column=column, **kwargs))
    if skip_values:
        return out
    if col.dtype.kind in "iuf":
        bounds = _range(col, v.range_slack)
        if bounds:
            out.append(
                expect(
                    ge.ExpectColumnValuesToBeBetween,
                    column=column,
                    min_value=bounds[0],
                    max_value=bounds[1],
                )
            )
    elif _is_categorical(col):
        values = sorted_values(col.dropna().unique())
        out.append(expect(ge.ExpectColumnValuesToBeInSet, column=column, value_set=values))
    return out


def _class_expectations(data: Frame, v: ValidateConfig) -> list[Expectation]:
    """At least two classes, the class set, rows per class and each class's share."""
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    ge = gx.expectations
    label = data.label
    counts = data.frame[label].value_counts()
    classes = sorted_values(counts.index)
    if len(classes) < 2:
        found = f" (only {classes[0]!r})" if classes else ""
        raise DataError(
            f"min_classes({label}): {len(classes)} class{'' if len(classes) == 1 else 'es'}, "
            f"need at least 2{found}"
        )
    total = int(counts.sum())
    out = [
        expect(
            ge.ExpectColumnUniqueValueCountToBeBetween,
            f"min_classes({label})",
            column=label,
            min_value=2,
            unexpected="class",
        ),
        expect(ge.ExpectColumnDistinctValuesToEqualSet, column=label, value_set=classes),
    ]
    for k in classes:
        where = f"{label} == {k}"
        out.append(
            expect(
                ge.ExpectTableRowCountToBeBetween,
                f"min_rows_per_class({where})",
                min_value=param("min_rows_per_class"),
                row_condition=Column(label) == k,
                description=f"Class {where} must have at least validate.min_rows_per_class rows.",
            )
        )
    for k in classes:
        where = f"{label} == {k}"
        share = int(counts[k]) / total
        low, high = lower(share * (1 - v.balance_slack)), upper(share * (1 + v.balance_slack))
        if low > 0:
            out.append(
                expect(
                    ge.ExpectColumnValuesToBeInSet,
                    f"min_class_share({where})",
                    column=label,
                    value_set=[k],
                    mostly=low,
                    description=f"Class {where} must make up at least {low:.2%} of the rows.",
                    share="min",
                )
            )
        if high < 1:
            out.append(
                expect(
                    ge.ExpectColumnValuesToNotBeInSet,
                    f"max_class_share({where})",
                    column=label,
                    value_set=[k],
                    mostly=lower(1 - high),
                    description=f"Class {where} must make up at most {high:.2%} of the rows.",
                    share="max",
                )
            )
    return out


def _image_expectations(data: Frame) -> list[Expectation]:
    """Every file decodes; the channel counts seen; height and width >= image_min_size."""
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    ge = gx.expectations
    frame = data.frame
    decoded = Column("decodes") == True  # noqa: E712 (a GX condition, not a comparison)
    out = [
        expect(
            ge.ExpectColumnValuesToBeInSet,
            column="decodes",
            value_set=[True],
            unexpected="files do not decode",
        )
    ]
    channels = sorted(int(c) for c in frame.loc[frame["decodes"], "channels"].unique())
    if channels:
        out.append(
            expect(
                ge.ExpectColumnValuesToBeInSet,
                column="channels",
                value_set=channels,
                row_condition=decoded,
                description=f"Decoded images have {' or '.join(map(str, channels))} channels.",
                unexpected="images have other channels",
            )
        )
    for dim in ("height", "width"):
        out.append(
            expect(
                ge.ExpectColumnValuesToBeBetween,
                column=dim,
                min_value=param("image_min_size"),
                row_condition=decoded,
                description=f"Decoded images are at least validate.image_min_size px in {dim}.",
                unexpected=f"images are too small in {dim}",
            )
        )
    return out


def _sequence_expectations(data: Frame, v: ValidateConfig) -> list[Expectation]:
    """One length and channel count, no NaN or inf, the value range, the splits, the labels."""
    import great_expectations as gx

    ge = gx.expectations
    frame = data.frame
    out = []
    for column in ("length", "channels"):
        values = sorted_values(frame[column].unique())
        out.append(expect(ge.ExpectColumnValuesToBeInSet, column=column, value_set=values))
    for column, what in (("n_nan", "NaN"), ("n_inf", "infinite values")):
        out.append(
            expect(
                ge.ExpectColumnValuesToBeInSet,
                column=column,
                value_set=[0],
                unexpected=f"sequences hold {what}",
            )
        )
    lo, hi = frame["min"].min(), frame["max"].max()
    if np.isfinite(lo) and np.isfinite(hi):
        pad = v.range_slack * float(hi - lo)
        for column in ("min", "max"):
            out.append(
                expect(
                    ge.ExpectColumnValuesToBeBetween,
                    column=column,
                    min_value=float(lo) - pad,
                    max_value=float(hi) + pad,
                    unexpected="sequences are out of range",
                )
            )
    out.append(
        expect(
            ge.ExpectColumnDistinctValuesToEqualSet,
            column="split",
            value_set=sorted_values(frame["split"].unique()),
        )
    )
    if data.task == "classification":
        out.append(_target_present(SEQUENCE_LABEL))
    else:
        out += _column_expectations(data, SEQUENCE_LABEL, v)
    return out


def infer_expectations(data: Frame, v: ValidateConfig) -> list[Expectation]:
    """Every expectation of a suite inferred from `data`."""
    import great_expectations as gx

    ge = gx.expectations
    frame = data.frame
    out: list[Expectation] = []
    if data.modality == "tables":
        out.append(
            expect(ge.ExpectTableColumnsToMatchOrderedList, column_list=list(frame.columns))
        )
    out.append(expect(ge.ExpectTableRowCountToBeBetween, min_value=param("min_rows")))
    classification = data.task == "classification"
    if data.modality == "tables":
        for column in frame.columns:
            out += _column_expectations(
                data, column, v, skip_values=classification and column == data.label
            )
    elif data.modality == "images":
        out += _image_expectations(data)
    else:
        out += _sequence_expectations(data, v)
    if classification:
        out += _class_expectations(data, v)
    return out


def infer_suite(data: Frame, cfg: Config, manifest: Manifest) -> dict[str, Any]:
    """A suite inferred from the data, as GX's JSON dict (what is saved for review)."""
    import great_expectations as gx

    meta = {
        META: {
            "data": cfg.data.name,
            "modality": data.modality,
            "task": data.task,
            "label": data.label,
            "inferred_from": {
                "source": manifest.source,
                "sha256": manifest.sha256,
                "rows": len(data.frame),
            },
            "params": cfg.validate_.model_dump(),
        }
    }
    suite = gx.ExpectationSuite(
        name=cfg.data.name,
        expectations=infer_expectations(data, cfg.validate_),
        meta=meta,
        notes=f"Inferred by dlops from {manifest.source}. Review and commit this file; every "
        "later run enforces it. `dlops suite init --force` infers it again from the current data. "
        "Bounds written {'$PARAMETER': ...} come from params.yaml's validate section.",
    )
    return plain(suite.to_json_dict())
