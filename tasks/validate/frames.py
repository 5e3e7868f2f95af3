"""The validation frame of each modality: what Great Expectations checks, one row per example.

Tables are validated as they are; images as one row per file (class, decodes, height, width,
channels, sha256); sequences as one row per sequence (label, length, channels, NaN and inf
counts, min, max, split).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.preprocessing import InputError, decode_image
from tasks.sources import (
    IMAGES_DIR,
    DataError,
    Manifest,
    image_problem,
    list_images,
    read_sequences,
    read_table,
    sha256_bytes,
)

if TYPE_CHECKING:
    import pandas as pd

IMAGE_LABEL = "class"
SEQUENCE_LABEL = "label"
# The column that names an example in failure reports (tables: none, values are shown).
ID_COLUMNS = {"images": "file", "sequences": "sequence"}
UNDECODABLE = "cannot decode"


@dataclass
class Frame:
    """The validation frame of one modality and what the report says about it.

    `notes` maps an example's id to why it is unusable, when that says more than the failed
    expectation does (an empty or too large image file).
    """

    frame: pd.DataFrame
    modality: str
    task: str
    label: str | None
    summary: dict[str, Any] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def id_column(self) -> str | None:
        """The column naming an example (images: file, sequences: sequence; tables: none)."""
        return ID_COLUMNS.get(self.modality)

    @property
    def missing_target(self) -> int:
        """Rows without a target (tables, sequences)."""
        return int(self.frame[self.label].isna().sum()) if self.label else 0


def int_dict(counts: Any) -> dict[str, int]:
    """A pandas value count (or any mapping) as {str: int}."""
    return {str(k): int(v) for k, v in counts.items()}


def normalize(frame: pd.DataFrame) -> pd.DataFrame:
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


def table_frame(manifest: Manifest, path: Path) -> Frame:
    """The table as it is (normalized dtypes)."""
    frame = normalize(read_table(path))
    label = manifest.target
    if not label or label not in frame.columns:
        raise DataError(
            f"{path}: no target column {label!r} (columns: {', '.join(map(str, frame.columns))})"
        )
    summary = {"columns": list(frame.columns), "nulls": int_dict(frame.isna().sum())}
    return Frame(frame, "tables", manifest.task, label, summary)


def _probe_image(item: tuple[Path, str], root: Path) -> tuple[Any, ...]:
    """(file, class, decodes, height, width, channels, sha256, problem) of one image file."""
    path, cls = item
    file = path.relative_to(root).as_posix()
    try:
        data = path.read_bytes()
    except OSError as exc:
        return file, cls, False, 0, 0, 0, "", f"unreadable ({exc.strerror})"
    problem = image_problem(data)
    if problem:
        return file, cls, False, 0, 0, 0, sha256_bytes(data), problem
    try:  # decode the bytes already read: one read per file
        height, width, channels = (int(n) for n in decode_image(data, str(path)).shape)
    except InputError:
        return file, cls, False, 0, 0, 0, sha256_bytes(data), UNDECODABLE
    return file, cls, True, height, width, channels, sha256_bytes(data), ""


def image_frame(manifest: Manifest, root: Path) -> Frame:
    """One row per file; files are read and decoded in threads (PIL releases the GIL)."""
    import pandas as pd

    files = list_images(root)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        rows = list(pool.map(lambda item: _probe_image(item, root), files))
    columns = ["file", IMAGE_LABEL, "decodes", "height", "width", "channels", "sha256"]
    frame = normalize(pd.DataFrame([r[:-1] for r in rows], columns=columns))
    notes = {r[0]: r[-1] for r in rows if r[-1] and r[-1] != UNDECODABLE}
    ok = frame[frame["decodes"]]
    summary = {
        "corrupt_files": frame.loc[~frame["decodes"], "file"].tolist(),
        "height": [int(ok["height"].min()), int(ok["height"].max())] if len(ok) else None,
        "width": [int(ok["width"].min()), int(ok["width"].max())] if len(ok) else None,
        "channels": sorted(int(c) for c in ok["channels"].unique()),
        "duplicate_files": int(frame["sha256"].duplicated().sum()),
    }
    return Frame(frame, "images", manifest.task, IMAGE_LABEL, summary, notes)


def _labels(y: np.ndarray) -> list[Any]:
    """Labels as Python values, missing ones (NaN) as None."""
    if np.issubdtype(y.dtype, np.floating):
        return [None if np.isnan(v) else float(v) for v in y.tolist()]
    return y.tolist()


def sequence_frame(manifest: Manifest, path: Path) -> Frame:
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
                    SEQUENCE_LABEL: _labels(y),
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
    frame = normalize(pd.concat(parts, ignore_index=True))
    if manifest.task == "classification" and frame[SEQUENCE_LABEL].dtype.kind == "f":
        # float labels (NaN marks a missing one): integral values as the manifest's int classes
        frame[SEQUENCE_LABEL] = frame[SEQUENCE_LABEL].map(_integral).astype(object)
    summary = {
        "shape": list(arrays["x"].shape[1:]),
        "splits": int_dict(frame["split"].value_counts()),
        "sequences_with_nan": int((frame["n_nan"] > 0).sum()),
        "sequences_with_inf": int((frame["n_inf"] > 0).sum()),
    }
    return Frame(frame, "sequences", manifest.task, SEQUENCE_LABEL, summary)


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def read_frame(manifest: Manifest, raw_dir: Path) -> Frame:
    """The validation frame of the raw folder's modality; unreadable data -> DataError."""
    path = manifest.data_path(raw_dir)
    if manifest.modality == "tables":
        return table_frame(manifest, path)
    if manifest.modality == "images":
        return image_frame(manifest, raw_dir / IMAGES_DIR)
    if manifest.modality == "sequences":
        return sequence_frame(manifest, path)
    raise DataError(f"{raw_dir}: unknown modality {manifest.modality!r} in the manifest")
