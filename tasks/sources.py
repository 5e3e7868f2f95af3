"""Reading data of the three modalities, with one-line errors that name the problem and the file.

The raw folder (`paths.raw_dir`) holds what ingest copied, in one of three layouts, and a
`manifest.json` that says which:
- tables: `data.csv`, `data.tsv` or `data.parquet` (the source's bytes);
- images: `images/<class>/<file>` (PNG or JPEG, any size, grayscale or colour);
- sequences: `data.npz` with `x` (N, T) or (N, T, C), `y` (N,), optionally `x_test`, `y_test`.
"""

from __future__ import annotations

import hashlib
import io
import json
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
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(io.BytesIO(data))
        else:
            frame = pd.read_csv(io.BytesIO(data), sep="\t" if suffix == ".tsv" else ",")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except Exception as exc:  # parsers raise many types; all mean "unreadable"
        kind = "Parquet" if suffix in (".parquet", ".pq") else "CSV"
        raise DataError(f"{path}: not a readable {kind} file ({one_line(exc, 120)})") from None
    if frame.empty:
        raise DataError(f"{path}: no rows")
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


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to (H, W, C) uint8 (C 1 or 3); unreadable -> DataError naming it."""
    path = Path(path)
    try:
        return decode_image(path.read_bytes(), str(path))
    except InputError as exc:
        raise DataError(str(exc)) from None


def read_sequences(path: str | Path) -> dict[str, np.ndarray]:
    """X (N, T, C) float32, y (N,), and x_test/y_test when present; bad layout -> DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz file ({one_line(exc, 120)})") from None
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
            raise DataError(f"{path}: {yk} must be one label per sequence (N,), got {y.shape}")
        if len(x) != len(y):
            raise DataError(f"{path}: {xk} has {len(x)} sequences but {yk} has {len(y)} labels")
        if len(x) == 0:
            raise DataError(f"{path}: {xk} holds no sequences")
        if not np.issubdtype(x.dtype, np.number):
            raise DataError(f"{path}: {xk} is not numeric ({x.dtype})")
        if np.issubdtype(y.dtype, np.floating) and np.isnan(y).any():
            raise DataError(f"{path}: {yk} holds {int(np.isnan(y).sum())} NaN labels")
        out[xk], out[yk] = x.astype(np.float32), y
    if "x_test" in out and out["x_test"].shape[1:] != out["x"].shape[1:]:
        raise DataError(
            f"{path}: x_test sequences are {out['x_test'].shape[1:]}, x are {out['x'].shape[1:]}"
        )
    return out


def row_hashes(x: Any) -> np.ndarray:
    """A content hash per example (a frame's row, an array's first-axis slice)."""
    import pandas as pd

    if isinstance(x, pd.DataFrame):
        values = pd.util.hash_pandas_object(x, index=False).to_numpy()
        return np.array([f"{v:016x}" for v in values])
    arr = np.ascontiguousarray(x)
    return np.array([hashlib.sha256(row.tobytes()).hexdigest() for row in arr])
