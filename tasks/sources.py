"""Reading data of the three modalities, with one-line errors that name the problem and the file.

The raw folder (`paths.raw_dir`) holds what ingest copied, in one of three layouts, and a
`manifest.json` that says which:
- tables: `data.csv`, `data.tsv` or `data.parquet` (the source's bytes);
- images: `images/<class>/<file>` (PNG or JPEG, any size, grayscale or colour);
- sequences: `data.npz` with `x` (N, T) or (N, T, C), `y` (N,), optionally `x_test`, `y_test`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from models.preprocessing import InputError, decode_image, one_line

if TYPE_CHECKING:
    import pandas as pd

MANIFEST = "manifest.json"
IMAGES_DIR = "images"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# Larger images are refused from their header, before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 50_000_000


class DataError(ValueError):
    """The data cannot be used as it is; the message is one line naming the problem and file."""


@dataclass(frozen=True)
class Manifest:
    """What ingest copied: the modality, the task, where it came from and its content hash."""

    name: str
    modality: str
    task: str
    source: str
    sha256: str
    file: str  # relative to the raw folder: data.csv, images, data.npz, ...
    rows: int
    target: str | None = None
    group: str | None = None
    classes: list[Any] = field(default_factory=list)  # classification: labels, sorted
    fixed_test: bool = False  # sequences: x_test/y_test given
    params_hash: str = ""  # of the `data` section it was ingested with

    def save(self, raw_dir: str | Path) -> Path:
        """Write manifest.json into the raw folder."""
        path = Path(raw_dir) / MANIFEST
        path.write_text(json.dumps(asdict(self), indent=2, default=str) + "\n")
        return path

    @classmethod
    def load(cls, raw_dir: str | Path) -> Manifest:
        """Read manifest.json from the raw folder."""
        path = Path(raw_dir) / MANIFEST
        if not path.is_file():
            raise DataError(f"{path}: no manifest; run the ingest stage first")
        return cls(**json.loads(path.read_text()))

    def data_path(self, raw_dir: str | Path) -> Path:
        """The copied data inside the raw folder."""
        return Path(raw_dir) / self.file


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def _text(path: Path, data: bytes) -> str:
    """The bytes of a CSV/TSV as text: UTF-8 (a BOM is dropped), else a DataError naming it."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None


def _header(text: str, sep: str) -> list[str]:
    """The header row's names as written (pandas renames duplicates to `a.1`)."""
    return next(csv.reader(io.StringIO(text), delimiter=sep), [])


def _check_columns(path: Path, frame: pd.DataFrame, header: list[str] | None) -> None:
    """Refuse what pandas would read silently wrong.

    Duplicate names (pandas renames them `a.1`), a wrong delimiter (one column), a header
    repeated as a data row (files concatenated).
    """
    names = header if header is not None else [str(c) for c in frame.columns]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise DataError(f"{path}: duplicate column names {', '.join(map(repr, dupes))}")
    if frame.shape[1] == 1:
        only = str(frame.columns[0])
        for sep, word in ((";", "semicolon"), ("\t", "tab"), ("|", "pipe")):
            if sep in only:
                raise DataError(
                    f"{path}: one column {one_line(only, 60)!r}: the file looks {word}-separated; "
                    "tables are read comma-separated (.csv) or tab-separated (.tsv)"
                )
    text_cols = [c for c in frame.columns if frame[c].dtype == object]
    if text_cols and len(text_cols) == frame.shape[1]:
        repeated = (frame.astype(str) == [str(c) for c in frame.columns]).all(axis=1)
        if repeated.any():
            line = int(np.flatnonzero(repeated.to_numpy())[0]) + 2
            raise DataError(f"{path}: line {line} repeats the header (files concatenated?)")


def _check_parquet_types(path: Path, data: bytes) -> None:
    """Nested Parquet columns (lists, structs, maps) are refused: flatten them first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(pa.BufferReader(data))
    for column in schema:
        if pa.types.is_nested(column.type):
            raise DataError(
                f"{path}: column {column.name!r} holds nested values ({column.type}); "
                "flatten it into plain columns"
            )


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV, TSV or Parquet file as a frame; missing, empty or unparseable -> DataError."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    data = path.read_bytes()
    if not data.strip():
        raise DataError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    parquet = suffix in (".parquet", ".pq")
    header = None
    try:
        if parquet:
            frame = pd.read_parquet(io.BytesIO(data))
        else:
            text = _text(path, data)
            sep = "\t" if suffix == ".tsv" else ","
            header = _header(text, sep)
            frame = pd.read_csv(io.StringIO(text), sep=sep)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except DataError:
        raise
    except Exception as exc:  # parsers raise many types; all mean "unreadable"
        kind = "Parquet" if parquet else "CSV"
        raise DataError(f"{path}: not a readable {kind} file ({one_line(exc, 120)})") from None
    if parquet:
        _check_parquet_types(path, data)
    if frame.empty:
        raise DataError(f"{path}: no rows")
    _check_columns(path, frame, header)
    return frame


def list_images(root: str | Path) -> list[tuple[Path, str]]:
    """(file, class) for every image under root/<class>/, sorted; layout problems -> DataError."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (images need root/<class>/<image>)")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"{root}: no class sub-folders (images need root/<class>/<image>)")
    files: list[tuple[Path, str]] = []
    for folder in classes:
        found = sorted(
            p
            for p in folder.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not found:
            raise DataError(f"{folder}: class folder {folder.name!r} holds no PNG or JPEG image")
        files += [(p, folder.name) for p in found]
    return files


def image_problem(data: bytes) -> str | None:
    """Why an image file cannot be used without decoding it (empty, too large), or None.

    The size comes from the file's header: a decompression bomb is refused before any pixel
    is decoded (PIL itself only warns below twice its own limit).
    """
    if not data:
        return "empty file"
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
    except Image.DecompressionBombError:
        return f"too large: over {MAX_IMAGE_PIXELS:,} pixels"
    except Exception:  # noqa: BLE001 (PIL raises many types; decode_image names the problem)
        return None
    if width * height > MAX_IMAGE_PIXELS:
        return f"too large: {width} x {height} pixels, at most {MAX_IMAGE_PIXELS:,}"
    return None


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, C) uint8 (C 1 or 3); unusable -> DataError naming it."""
    path = Path(path)
    data = path.read_bytes()
    problem = image_problem(data)
    if problem:
        raise DataError(f"{path}: {problem}")
    try:
        return decode_image(data, str(path))
    except InputError as exc:
        raise DataError(str(exc)) from None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz; object arrays (ragged sequences, Python objects) are refused."""
    try:
        npz = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({one_line(exc, 120)})") from None
    arrays: dict[str, np.ndarray] = {}
    with npz:
        for key in npz.files:
            try:
                arrays[key] = npz[key]
            except ValueError as exc:
                if "allow_pickle" not in str(exc):
                    raise DataError(f"{path}: array {key!r} is unreadable ({exc})") from None
                raise DataError(
                    f"{path}: {key} is an object array (ragged sequences or Python objects); "
                    "store one numeric array, sequences padded to one length"
                ) from None
            except Exception as exc:  # a truncated member: zipfile and zlib errors
                raise DataError(
                    f"{path}: array {key!r} is unreadable ({one_line(exc, 120)})"
                ) from None
    return arrays


def read_sequences(path: str | Path) -> dict[str, np.ndarray]:
    """X (N, T, C) float32, y (N,), and x_test/y_test when present; bad layout -> DataError.

    Labels may be missing (NaN): those sequences are dropped by preprocess and counted.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    arrays = _load_npz(path)
    out: dict[str, np.ndarray] = {}
    for xk, yk in (("x", "y"), ("x_test", "y_test")):
        if xk not in arrays and yk not in arrays and xk == "x_test":
            continue
        for k in (xk, yk):
            if k not in arrays:
                raise DataError(f"{path}: no array {k!r} (has {sorted(arrays)})")
        x, y = arrays[xk], arrays[yk]
        if x.ndim == 2:
            x = x[:, :, None]
        if x.ndim != 3:
            raise DataError(f"{path}: {xk} must be (N, T) or (N, T, C), got shape {x.shape}")
        if y.ndim != 1:
            raise DataError(
                f"{path}: {yk} must be one label per sequence (N,), got {y.shape} "
                "(one-hot labels: store the class index)"
            )
        if len(x) != len(y):
            raise DataError(f"{path}: {xk} has {len(x)} sequences but {yk} has {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{path}: {xk} holds no sequences")
        if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
            raise DataError(f"{path}: {xk} is not numeric ({x.dtype})")
        out[xk], out[yk] = x.astype(np.float32), y
    if "x_test" in out and out["x_test"].shape[1:] != out["x"].shape[1:]:
        raise DataError(
            f"{path}: x_test sequences are {out['x_test'].shape[1:]}, x are {out['x'].shape[1:]}"
        )
    return out


def missing_labels(y: np.ndarray) -> np.ndarray:
    """A mask of missing labels (NaN in a float array, None/NaN in others)."""
    if np.issubdtype(y.dtype, np.floating):
        return np.isnan(y)
    return np.zeros(len(y), dtype=bool)


def row_hashes(x: Any) -> np.ndarray:
    """A content hash per example (a frame's row, an array's first-axis slice)."""
    import pandas as pd

    if isinstance(x, pd.DataFrame):
        values = pd.util.hash_pandas_object(x, index=False).to_numpy()
        return np.array([f"{v:016x}" for v in values])
    arr = np.ascontiguousarray(x)
    return np.array([hashlib.sha256(row.tobytes()).hexdigest() for row in arr])
