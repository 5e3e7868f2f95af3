"""Validate: run a Great Expectations suite on the raw data; write result.json and GX Data Docs.

Each modality is validated through one frame: tables as they are, images as one row per file
(class, decodes, height, width, channels, sha256), sequences as one row per sequence (label,
length, channels, NaN and inf counts, min, max, split). The suite is
`<paths.suites_dir>/<data name>.json`, GX's own JSON (`ExpectationSuite.to_json_dict()`). When
that file does not exist, a suite is inferred from the data (column set and types, null
fractions, ranges, categories, classes and their shares, image and sequence shapes) and saved
there once the data passes, for the user to review and commit; every later run enforces it, so a
refreshed source whose schema or distribution moved fails loudly. The row-count bounds
(`validate.min_rows`, `min_rows_per_class`) and `image_min_size` always come from params.yaml.

Everything runs on an ephemeral GX context (nothing is read from or written to a GX project
folder), in one checkpoint run whose UpdateDataDocsAction writes the Data Docs into our folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.preprocessing import InputError, decode_image
from tasks.config import Config, ValidateConfig, load_config
from tasks.sources import (
    IMAGES_DIR,
    DataError,
    Manifest,
    list_images,
    one_line,
    read_sequences,
    read_table,
    sha256_bytes,
)
from tasks.utils import atomic_dir, write_json

if TYPE_CHECKING:
    import pandas as pd
    from great_expectations import ExpectationSuite
    from great_expectations.core.expectation_validation_result import (
        ExpectationValidationResult,
    )
    from great_expectations.expectations.expectation import Expectation

SITE_NAME = "dlops"
ARTIFACT_PATH = "validation"
SUCCESS_TAG = "validation.success"
META = "dlops"  # our key in the suite's and each expectation's `meta`
IMAGE_LABEL = "class"
SEQUENCE_LABEL = "label"
# The column that names an example in failure reports (tables: none, values are shown).
ID_COLUMNS = {"images": "file", "sequences": "sequence"}
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
MAX_REPORTED = 5  # failures in the one-line message; examples in a reason
PARTIAL = 20  # unexpected values / examples GX returns per expectation


class DataValidationError(ValueError):
    """The raw data is missing, unreadable or fails an expectation; the message is one line.

    `result` holds the report of a validation that ran (None when the data could not be read).
    """

    def __init__(self, message: str, result: ValidateResult | None = None) -> None:
        super().__init__(message)
        self.result = result


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


@dataclass
class _Data:
    """The validation frame of one modality and what the report says about it."""

    frame: pd.DataFrame
    modality: str
    task: str
    label: str | None
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def id_column(self) -> str | None:
        return ID_COLUMNS.get(self.modality)


# -- the validation frames -----------------------------------------------------------------------


def _normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """Plain numpy dtypes where GX understands them, `object` for text and anything else.

    GX's type check does not know pandas' string dtype (the default for text in pandas 3), nor
    the nullable extension types: text becomes `object` (checked value by value), nullable
    numbers become float64 (NaN for missing).
    """
    import pandas as pd

    columns: dict[str, Any] = {}
    for name in frame.columns:
        col = frame[name]
        dtype = col.dtype
        if isinstance(dtype, np.dtype) and dtype.kind in "biufmM":
            columns[str(name)] = col
        elif dtype.kind in "iuf":
            columns[str(name)] = (
                col.astype("float64") if col.isna().any() else col.astype(dtype.numpy_dtype)
            )
        elif dtype.kind == "b" and not col.isna().any():
            columns[str(name)] = col.astype(bool)
        else:
            columns[str(name)] = col.astype(object)
    return pd.DataFrame(columns, index=frame.index)


def _table_data(manifest: Manifest, path: Path) -> _Data:
    frame = _normalize(read_table(path))
    label = manifest.target
    if not label or label not in frame.columns:
        raise DataError(
            f"{path}: no target column {label!r} (columns: {', '.join(map(str, frame.columns))})"
        )
    summary = {"columns": list(frame.columns), "nulls": _int_dict(frame.isna().sum())}
    return _Data(frame, "tables", manifest.task, label, summary)


def _probe_image(item: tuple[Path, str], root: Path) -> tuple[Any, ...]:
    """(file, class, decodes, height, width, channels, sha256) of one image file."""
    path, cls = item
    file = path.relative_to(root).as_posix()
    try:
        data = path.read_bytes()
    except OSError:
        return file, cls, False, 0, 0, 0, ""
    try:  # decode the bytes already read: one read per file
        height, width, channels = (int(n) for n in decode_image(data, str(path)).shape)
    except InputError:
        return file, cls, False, 0, 0, 0, sha256_bytes(data)
    return file, cls, True, height, width, channels, sha256_bytes(data)


def _image_data(manifest: Manifest, root: Path) -> _Data:
    """One row per file; files are read and decoded in threads (PIL releases the GIL)."""
    import pandas as pd

    files = list_images(root)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        rows = list(pool.map(lambda item: _probe_image(item, root), files))
    columns = ["file", IMAGE_LABEL, "decodes", "height", "width", "channels", "sha256"]
    frame = _normalize(pd.DataFrame(rows, columns=columns))
    ok = frame[frame["decodes"]]
    summary = {
        "corrupt_files": frame.loc[~frame["decodes"], "file"].tolist(),
        "height": [int(ok["height"].min()), int(ok["height"].max())] if len(ok) else None,
        "width": [int(ok["width"].min()), int(ok["width"].max())] if len(ok) else None,
        "channels": sorted(int(c) for c in ok["channels"].unique()),
        "duplicate_files": int(frame["sha256"].duplicated().sum()),
    }
    return _Data(frame, "images", manifest.task, IMAGE_LABEL, summary)


def _sequence_data(manifest: Manifest, path: Path) -> _Data:
    """One row per sequence of x (split train) and x_test (split test)."""
    import pandas as pd

    arrays = read_sequences(path)
    parts = []
    for split, xk, yk in (("train", "x", "y"), ("test", "x_test", "y_test")):
        if xk not in arrays:
            continue
        x, y = arrays[xk], arrays[yk]
        finite = np.isfinite(x)
        has_finite = finite.any(axis=(1, 2))
        lo = np.where(finite, x, np.inf).min(axis=(1, 2)).astype(np.float64)
        hi = np.where(finite, x, -np.inf).max(axis=(1, 2)).astype(np.float64)
        lo[~has_finite] = np.nan
        hi[~has_finite] = np.nan
        n = len(x)
        parts.append(
            pd.DataFrame(
                {
                    "sequence": [f"{split}[{i}]" for i in range(n)],
                    SEQUENCE_LABEL: y.tolist(),
                    "length": np.full(n, x.shape[1], dtype=np.int64),
                    "channels": np.full(n, x.shape[2], dtype=np.int64),
                    "n_nan": np.isnan(x).sum(axis=(1, 2)).astype(np.int64),
                    "n_inf": np.isinf(x).sum(axis=(1, 2)).astype(np.int64),
                    "min": lo,
                    "max": hi,
                    "split": split,
                }
            )
        )
    frame = _normalize(pd.concat(parts, ignore_index=True))
    summary = {
        "shape": list(arrays["x"].shape[1:]),
        "splits": _int_dict(frame["split"].value_counts()),
        "sequences_with_nan": int((frame["n_nan"] > 0).sum()),
        "sequences_with_inf": int((frame["n_inf"] > 0).sum()),
    }
    return _Data(frame, "sequences", manifest.task, SEQUENCE_LABEL, summary)


def _read(manifest: Manifest, raw_dir: Path) -> _Data:
    path = manifest.data_path(raw_dir)
    if manifest.modality == "tables":
        return _table_data(manifest, path)
    if manifest.modality == "images":
        return _image_data(manifest, raw_dir / IMAGES_DIR)
    if manifest.modality == "sequences":
        return _sequence_data(manifest, path)
    raise DataError(f"{raw_dir}: unknown modality {manifest.modality!r} in the manifest")


# -- inferring a suite ---------------------------------------------------------------------------


def _lower(x: float) -> float:
    """Round down to 6 decimals, so that the observed value passes its inferred bound."""
    return math.floor(x * 1e6 + 1e-6) / 1e6


def _upper(x: float) -> float:
    return math.ceil(x * 1e6 - 1e-6) / 1e6


def _plain(value: Any) -> Any:
    """Plain JSON values for numpy scalars, NaN and containers of them."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _int_dict(counts: Any) -> dict[str, int]:
    return {str(k): int(v) for k, v in counts.items()}


def _sorted(values: Any) -> list[Any]:
    values = [_plain(v) for v in values]
    try:
        return sorted(values)
    except TypeError:
        return sorted(values, key=str)


def _expect(kind: type[Expectation], name: str | None = None, **kwargs: Any) -> Expectation:
    """An expectation; `name` (its name in reports), `param` and `unexpected` go to meta."""
    ours = {k: kwargs.pop(k) for k in ("param", "unexpected", "share") if k in kwargs}
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


def _column_expectations(
    data: _Data, column: str, v: ValidateConfig, skip_values: bool = False
) -> list[Expectation]:
    """Type, nulls, and range or categories of one table column."""
    import great_expectations as gx

    ge = gx.expectations
    col = data.frame[column]
    out = []
    types = _type_list(col)
    if types:
        out.append(_expect(ge.ExpectColumnValuesToBeInTypeList, column=column, type_list=types))
    if column == data.label:
        out.append(_expect(ge.ExpectColumnValuesToNotBeNull, column=column))
    else:
        bound = float(col.isna().mean()) + v.null_slack
        if bound < 1:
            mostly = _lower(1 - bound)
            kwargs = {"mostly": mostly} if mostly < 1 else {}
            out.append(_expect(ge.ExpectColumnValuesToNotBeNull, column=column, **kwargs))
    if skip_values:
        return out
    if col.dtype.kind in "iuf":
        bounds = _range(col, v.range_slack)
        if bounds:
            out.append(
                _expect(
                    ge.ExpectColumnValuesToBeBetween,
                    column=column,
                    min_value=bounds[0],
                    max_value=bounds[1],
                )
            )
    elif _is_categorical(col):
        values = _sorted(col.dropna().unique())
        out.append(_expect(ge.ExpectColumnValuesToBeInSet, column=column, value_set=values))
    return out


def _class_expectations(data: _Data, v: ValidateConfig) -> list[Expectation]:
    """At least two classes, the class set, rows per class and each class's share."""
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    ge = gx.expectations
    label = data.label
    counts = data.frame[label].value_counts()
    classes = _sorted(counts.index)
    if len(classes) < 2:
        found = f" (only {classes[0]!r})" if classes else ""
        raise DataError(
            f"min_classes({label}): {len(classes)} class{'' if len(classes) == 1 else 'es'}, "
            f"need at least 2{found}"
        )
    total = int(counts.sum())
    out = [
        _expect(
            ge.ExpectColumnUniqueValueCountToBeBetween,
            f"min_classes({label})",
            column=label,
            min_value=2,
            unexpected="class",
        ),
        _expect(ge.ExpectColumnDistinctValuesToEqualSet, column=label, value_set=classes),
    ]
    for k in classes:
        where = f"{label} == {k}"
        out.append(
            _expect(
                ge.ExpectTableRowCountToBeBetween,
                f"min_rows_per_class({where})",
                min_value=v.min_rows_per_class,
                row_condition=Column(label) == k,
                # the bound follows params.yaml (rebound on load): not spelled out here
                description=f"Class {where} must have at least validate.min_rows_per_class rows.",
                param="min_rows_per_class",
            )
        )
    for k in classes:
        where = f"{label} == {k}"
        share = int(counts[k]) / total
        low, high = _lower(share * (1 - v.balance_slack)), _upper(share * (1 + v.balance_slack))
        if low > 0:
            out.append(
                _expect(
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
                _expect(
                    ge.ExpectColumnValuesToNotBeInSet,
                    f"max_class_share({where})",
                    column=label,
                    value_set=[k],
                    mostly=_lower(1 - high),
                    description=f"Class {where} must make up at most {high:.2%} of the rows.",
                    share="max",
                )
            )
    return out


def _infer_expectations(data: _Data, v: ValidateConfig) -> list[Expectation]:
    import great_expectations as gx
    from great_expectations.expectations.row_conditions import Column

    ge = gx.expectations
    frame = data.frame
    out: list[Expectation] = []
    if data.modality == "tables":
        out.append(
            _expect(ge.ExpectTableColumnsToMatchOrderedList, column_list=list(frame.columns))
        )
    out.append(_expect(ge.ExpectTableRowCountToBeBetween, min_value=v.min_rows, param="min_rows"))
    classification = data.task == "classification"
    if data.modality == "tables":
        for column in frame.columns:
            out += _column_expectations(
                data, column, v, skip_values=classification and column == data.label
            )
    elif data.modality == "images":
        decoded = Column("decodes") == True  # noqa: E712 (a GX condition, not a comparison)
        out.append(
            _expect(
                ge.ExpectColumnValuesToBeInSet,
                column="decodes",
                value_set=[True],
                unexpected="files do not decode",
            )
        )
        channels = sorted(int(c) for c in frame.loc[frame["decodes"], "channels"].unique())
        if channels:
            out.append(
                _expect(
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
                _expect(
                    ge.ExpectColumnValuesToBeBetween,
                    column=dim,
                    min_value=v.image_min_size,
                    row_condition=decoded,
                    description=f"Decoded images are at least validate.image_min_size px in "
                    f"{dim}.",
                    param="image_min_size",
                    unexpected=f"images are too small in {dim}",
                )
            )
    else:
        for column in ("length", "channels"):
            values = _sorted(frame[column].unique())
            out.append(_expect(ge.ExpectColumnValuesToBeInSet, column=column, value_set=values))
        for column, what in (("n_nan", "NaN"), ("n_inf", "infinite values")):
            out.append(
                _expect(
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
                    _expect(
                        ge.ExpectColumnValuesToBeBetween,
                        column=column,
                        min_value=float(lo) - pad,
                        max_value=float(hi) + pad,
                        unexpected="sequences are out of range",
                    )
                )
        out.append(
            _expect(
                ge.ExpectColumnDistinctValuesToEqualSet,
                column="split",
                value_set=_sorted(frame["split"].unique()),
            )
        )
        if not classification:
            out += _column_expectations(data, SEQUENCE_LABEL, v)
    if classification:
        out += _class_expectations(data, v)
    return out


def _infer_suite(data: _Data, cfg: Config, manifest: Manifest) -> dict[str, Any]:
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
        expectations=_infer_expectations(data, cfg.validate_),
        meta=meta,
        notes=f"Inferred by dlops from {manifest.source}. Review and commit this file; every "
        "later run enforces it. Delete it to infer a new suite from the current data.",
    )
    return _plain(suite.to_json_dict())


# -- loading and running a suite -----------------------------------------------------------------


def _load_suite(path: Path, data: _Data, v: ValidateConfig) -> dict[str, Any]:
    """The saved suite; the row-count and size bounds are rebound to the current params."""
    try:
        suite = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"suite {path}: not a readable JSON file ({one_line(exc, 100)})") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise DataError(f"suite {path}: not a GX expectation suite (no expectations list)")
    ours = (suite.get("meta") or {}).get(META) or {}
    for key, have in (("modality", data.modality), ("task", data.task)):
        if ours.get(key) not in (None, have):
            raise DataError(
                f"suite {path}: inferred for {ours[key]} data, the data is {have} "
                "(delete the suite to infer a new one)"
            )
    for exp in suite["expectations"]:
        if not isinstance(exp, dict):
            continue  # _build_suite names it
        param = ((exp.get("meta") or {}).get(META) or {}).get("param")
        if param and isinstance(exp.get("kwargs"), dict):
            exp["kwargs"]["min_value"] = getattr(v, param)
    return suite


def _build_suite(suite: dict[str, Any], path: Path) -> ExpectationSuite:
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


def _validate(
    data: _Data, suite: ExpectationSuite, docs_dir: Path
) -> tuple[list[ExpectationValidationResult], dict[str, Any]]:
    """Run the suite through one checkpoint that builds Data Docs into `docs_dir`.

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
            # The validation page shows every expectation; the suite is its own JSON file.
            "site_section_builders": {"expectations": "0", "profiling": "0"},
        },
    )
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
    # sequence ids by `_ids`). Asking GX for `unexpected_index_column_names` instead costs a
    # pandas lookup per unexpected row: seconds for class shares, whose "unexpected" rows are
    # all the other classes.
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": PARTIAL}
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name=name,
            validation_definitions=[definition],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="docs", site_names=[SITE_NAME])],
            result_format=result_format,
        )
    )
    result = checkpoint.run(batch_parameters={"dataframe": data.frame})
    suite_result = next(iter(result.run_results.values()))
    order = {e.id: i for i, e in enumerate(suite.expectations)}
    results = sorted(suite_result.results, key=lambda r: order.get(r.expectation_config.id, 0))
    return results, dict(suite_result.statistics)


# -- reporting -----------------------------------------------------------------------------------


def _ours(r: ExpectationValidationResult) -> dict[str, Any]:
    return (r.expectation_config.meta or {}).get(META) or {}


def _name(r: ExpectationValidationResult) -> str:
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
    return _sorted(seen.values())


def _ids(r: ExpectationValidationResult, data: _Data) -> list[Any]:
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


def _why(r: ExpectationValidationResult, data: _Data) -> str:
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
        return f"{res.get('observed_value')} rows, expected {_bounds(kwargs)}"
    if kind == "expect_column_unique_value_count_to_be_between":
        word = ours.get("unexpected", "distinct value")
        return f"{_plural(int(res.get('observed_value') or 0), word)}, need {_bounds(kwargs)}"
    if kind == "expect_column_distinct_values_to_equal_set":
        missing = _sorted(res.get("partial_missing_list") or [])
        extra = _sorted(res.get("partial_unexpected_list") or [])
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
        items = _listed(ids or _values(r), unexpected)
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


def _entry(r: ExpectationValidationResult, data: _Data) -> dict[str, Any]:
    """One expectation's outcome for result.json."""
    config, res = r.expectation_config, r.result
    entry: dict[str, Any] = {
        "name": _name(r),
        "type": config.type,
        "column": config.kwargs.get("column"),
        "success": bool(r.success),
    }
    condition = config.kwargs.get("row_condition")
    if condition is not None:
        entry["row_condition"] = _condition(condition)
    for key in ("observed_value", "element_count", "unexpected_count", "missing_count"):
        if key in res:
            entry[key] = res[key]
    if res.get("partial_unexpected_list") and config.type != "expect_column_values_to_not_be_null":
        entry["partial_unexpected_values"] = _values(r)
    if _ids(r, data):
        entry[f"partial_unexpected_{data.id_column}s"] = _ids(r, data)
    if res.get("partial_missing_list"):
        entry["missing_values"] = _sorted(res["partial_missing_list"])
    error = _exception(r)
    if error:
        entry["exception"] = error
    if not r.success:
        entry["reason"] = _why(r, data)
    return _plain(entry)


def _message(where: Path, failures: list[str]) -> str:
    """`validation failed for <where>: <name>: <why>; ...` on one line, the first few failures."""
    shown = [one_line(f, 300) for f in failures[:MAX_REPORTED]]
    if len(failures) > MAX_REPORTED:
        shown.append(f"and {len(failures) - MAX_REPORTED} more (see result.json)")
    return one_line(f"validation failed for {where}: {'; '.join(shown)}", 2000)


def _write_suite(path: Path, suite: dict[str, Any]) -> None:
    """Write the suite as indented JSON, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, 0o644)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(suite, indent=2) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _log_to_mlflow(run_id: str, success: bool, *files: Path) -> None:
    """Log result.json, the Data Docs folder and the suite (those given); tag the outcome."""
    from tasks import tracking

    client = tracking.client()
    for path in files:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"{ARTIFACT_PATH}/{path.name}")
        elif path.is_file():
            client.log_artifact(run_id, str(path), ARTIFACT_PATH)
    client.set_tag(run_id, SUCCESS_TAG, "true" if success else "false")


def _unreadable(where: Path, exc: DataError, run_id: str | None) -> DataValidationError:
    """The reader's one-line message, without repeating `where`; tags the run as failed."""
    if run_id:
        _log_to_mlflow(run_id, False)
    reason = str(exc).removeprefix(f"{where}: ")
    return DataValidationError(one_line(f"validation failed for {where}: {reason}", 600))


def run(cfg: Config, mlflow_run_id: str | None = None) -> ValidateResult:
    """Validate the raw data; write `result.json` and Data Docs under `paths.validation_dir`.

    Enforces `<paths.suites_dir>/<data name>.json`, or infers it from the data when it does not
    exist (saved once the data passes). The report is written (and logged to `mlflow_run_id`,
    when given) whether or not the data passes; then `DataValidationError` is raised on failure
    with one line naming every failed expectation (the first few, and how many more).
    """
    os.environ["GX_ANALYTICS_ENABLED"] = "false"
    raw_dir = Path(cfg.paths.raw_dir)
    suite_path = Path(cfg.paths.suites_dir) / f"{cfg.data.name}.json"
    out_dir = Path(cfg.paths.validation_dir)
    where = raw_dir
    try:
        manifest = Manifest.load(raw_dir)
        where = manifest.data_path(raw_dir)
        data = _read(manifest, raw_dir)
        inferred = not suite_path.is_file()
        if inferred:
            suite = _infer_suite(data, cfg, manifest)
        else:
            suite = _load_suite(suite_path, data, cfg.validate_)
        gx_suite = _build_suite(suite, suite_path)
    except DataError as exc:
        raise _unreadable(where, exc, mlflow_run_id) from None

    docs_dir = out_dir / "html"
    with atomic_dir(docs_dir) as tmp_docs:
        results, stats = _validate(data, gx_suite, tmp_docs)
    failed = [r for r in results if not r.success]
    success = not failed
    if inferred and success:
        _write_suite(suite_path, suite)

    label = data.label
    counts = data.frame[label].value_counts() if data.task == "classification" else None
    report = {
        "success": success,
        "modality": data.modality,
        "task": data.task,
        "raw_path": str(where),
        "raw_sha256": manifest.sha256,
        "source": manifest.source,
        "rows": len(data.frame),
        "suite": str(suite_path),
        "suite_inferred": inferred,
        "suite_saved": suite_path.is_file(),
        "statistics": {
            key: stats[key]
            for key in (
                "evaluated_expectations",
                "successful_expectations",
                "unsuccessful_expectations",
                "success_percent",
            )
        },
        "label": label,
        "per_class_counts": {str(k): int(counts[k]) for k in _sorted(counts.index)}
        if counts is not None
        else {},
        **data.summary,
        "params": cfg.validate_.model_dump(),
        "expectations": [_entry(r, data) for r in results],
        "failed": [_name(r) for r in failed],
    }
    result_path = write_json(out_dir / "result.json", _plain(report))
    if mlflow_run_id:
        _log_to_mlflow(mlflow_run_id, success, result_path, docs_dir, suite_path)
    result = ValidateResult(
        success=success,
        result_path=result_path,
        docs_path=docs_dir / "index.html",
        n_expectations=len(results),
        failed=[_name(r) for r in failed],
        suite_path=suite_path,
        suite_inferred=inferred,
    )
    if not success:
        reasons = [f"{_name(r)}: {_why(r, data)}" for r in failed]
        raise DataValidationError(_message(where, reasons), result)
    return result


def main() -> None:
    """Entry point for `python -m tasks.validate` (dvc.yaml): exit non-zero on failure."""
    argparse.ArgumentParser(description=__doc__).parse_args()
    try:
        result = run(load_config())
    except DataValidationError as exc:
        sys.exit(str(exc))
    how = "inferred and saved" if result.suite_inferred else "enforced"
    print(
        f"validate: {result.n_expectations} expectations passed (suite {how}: "
        f"{result.suite_path}) -> {result.result_path}"
    )


if __name__ == "__main__":
    main()
