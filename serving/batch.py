"""Batch inference: a table file, an `.npz` or an image folder -> a predictions file.

The same path as the server (`serving.model.prepare` + `forward`: the registered model's own
preprocessing, one forward pass per chunk), in chunks so that memory stays bounded (Parquet row
groups, CSV chunks, image files a chunk at a time). The output is written to a temporary file
next to it and renamed: it appears whole or not at all.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from models.preprocessing import InputError
from models.pyfunc import IMAGE, SEQUENCE
from serving import model as served

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}
TABLE_SUFFIXES = {".csv", ".tsv", ".parquet", ".pq"}
OUTPUT_SUFFIXES = {".parquet", ".csv"}
KEY = "key"  # the input's row key in the output: row index, or the image's relative path


class BatchError(ValueError):
    """An input or output the batch cannot take, or a bad row (with --on-error fail)."""


@dataclass(frozen=True)
class BatchResult:
    """What was written."""

    output: Path
    rows: int
    skipped: int
    version: str
    seconds: float


def _chunks(path: Path, kind: str, columns: list[str], size: int) -> Iterator[tuple[Any, Any]]:
    """(keys, pyfunc input frame) per chunk of the input."""
    if path.is_dir():
        files = sorted(
            p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise BatchError(f"{path}: no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        for start in range(0, len(files), size):
            part = files[start : start + size]
            keys = [str(p.relative_to(path)) for p in part]
            yield keys, pd.DataFrame({IMAGE: [p.read_bytes() for p in part]})
        return
    suffix = path.suffix.lower()
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            if "x" not in npz:
                raise BatchError(f"{path}: no array 'x' (keys: {', '.join(npz.files)})")
            x = npz["x"]
        column = IMAGE if kind == "images" else SEQUENCE
        for start in range(0, len(x), size):
            part = x[start : start + size]
            keys = list(range(start, start + len(part)))
            yield keys, pd.DataFrame({column: pd.Series(list(part), dtype=object)})
        return
    offset = 0
    if suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=size):
            frame = batch.to_pandas()
            yield list(range(offset, offset + len(frame))), frame
            offset += len(frame)
        return
    if suffix in (".csv", ".tsv"):
        sep = "\t" if suffix == ".tsv" else ","
        for frame in pd.read_csv(path, sep=sep, chunksize=size):
            yield list(range(offset, offset + len(frame))), frame.reset_index(drop=True)
            offset += len(frame)
        return
    raise BatchError(f"{path}: expected a .csv, .tsv, .parquet or .npz file or an image folder")


def _bad_rows(
    model: served.ServedModel, frame: pd.DataFrame, keys: list[Any]
) -> list[tuple[int, str]]:
    """(position, one line naming its key) per row that the preprocessing refuses."""
    bad = []
    for j in range(len(frame)):
        try:
            served.prepare(model, frame.iloc[[j]])
        except InputError as exc:
            text = re.sub(r"^(image|row) 0: ", "", str(exc))
            bad.append((j, f"row {keys[j]}: {text}"))
    return bad


def predict_file(
    tracking_uri: str,
    name: str,
    alias: str,
    input_path: str | Path,
    output_path: str | Path,
    on_error: str = "fail",
    chunk_rows: int = 4096,
    version: str | None = None,
) -> BatchResult:
    """Score every row of `input_path` with the model; write `output_path` atomically."""
    start = time.perf_counter()
    src, out = Path(input_path), Path(output_path)
    if not src.exists():
        raise BatchError(f"{src}: no such file or folder")
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise BatchError(f"{out}: the output must be a .parquet or .csv file")
    if chunk_rows < 1:
        raise BatchError(f"--chunk-rows must be at least 1, not {chunk_rows}")
    model = served.load(tracking_uri, name, alias, version)
    parts, skipped, rows = [], 0, 0
    for keys, frame in _chunks(src, model.kind, model.columns, chunk_rows):
        try:
            x = served.prepare(model, frame)
        except InputError:
            bad = _bad_rows(model, frame, keys)
            if on_error == "fail" or not bad:
                raise BatchError(f"{src}: {bad[0][1] if bad else 'a chunk failed'}") from None
            for _, line in bad[:5]:
                print(f"predict: skipped {line}")
            skipped += len(bad)
            dropped = {j for j, _ in bad}
            keep = [j for j in range(len(keys)) if j not in dropped]
            if not keep:
                continue
            frame = frame.iloc[keep].reset_index(drop=True)
            keys = [keys[j] for j in keep]
            x = served.prepare(model, frame)
        result = served.outputs_frame(model, served.forward(model, x))
        result.insert(0, KEY, keys)
        parts.append(result)
        rows += len(result)
    if not parts:
        raise BatchError(f"{src}: no rows scored")
    table = pd.concat(parts, ignore_index=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix)
    os.close(fd)
    try:
        if out.suffix.lower() == ".parquet":
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return BatchResult(out, rows, skipped, model.version, time.perf_counter() - start)
