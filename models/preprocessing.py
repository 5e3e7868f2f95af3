"""Fitted preprocessing, shared by training and the registered model: RAW inputs in.

One preprocessor per modality, fitted on the training split only and saved as JSON (no pickles):
- tables: imputation (median or mean; most frequent for categoricals), one-hot or ordinal
  encoding, standardization;
- images: decoding (PNG/JPEG bytes or pixel arrays), channel conversion, resizing, per-channel
  normalization;
- sequences: per-channel standardization.
Each also encodes the target: class labels <-> indices, or a standardized regression target.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

OTHER = "__other__"


class InputError(ValueError):
    """Raw input the preprocessing cannot take; the message is one line naming the problem."""


# -- target ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """Class labels (classification) or the standardization of a regression target."""

    task: str
    classes: list[Any] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, task: str, y: Any, classes: list[Any] | None = None) -> Target:
        """Classes given (all the data's, so every split agrees), or mean/std of training y."""
        if task == "classification":
            return cls(task, classes=list(classes or []))
        y = np.asarray(y, dtype=np.float64)
        return cls(task, mean=float(y.mean()), std=float(y.std()) or 1.0)

    @property
    def n_outputs(self) -> int:
        """Network outputs: one per class, or one."""
        return len(self.classes) if self.task == "classification" else 1

    def encode(self, y: Any) -> np.ndarray:
        """Labels -> class indices (int64), or values -> standardized float32."""
        if self.task == "classification":
            index = {_key(c): i for i, c in enumerate(self.classes)}
            try:
                return np.array([index[_key(v)] for v in np.asarray(y).tolist()], dtype=np.int64)
            except KeyError as exc:
                raise InputError(f"unknown class label {exc.args[0]!r}") from None
        y = np.asarray(y, dtype=np.float64)
        return ((y - self.mean) / self.std).astype(np.float32)

    def decode(self, output: np.ndarray) -> np.ndarray:
        """Class indices -> labels, or standardized outputs -> target units."""
        if self.task == "classification":
            return np.array([self.classes[int(i)] for i in output], dtype=object)
        return np.asarray(output, dtype=np.float64) * self.std + self.mean


def _key(value: Any) -> str:
    """Labels compare by their text (1, 1.0 and "1" are one class)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


# -- tables ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TablePreprocessor:
    """Impute, encode categoricals, standardize; fitted on training rows."""

    target: Target
    numeric: list[str]
    categorical: list[str]
    fill: dict[str, Any]  # column -> imputation value
    categories: dict[str, list[str]]  # categorical column -> kept categories
    encode: str  # onehot | ordinal
    mean: list[float]
    std: list[float]
    kind: str = "tables"

    @classmethod
    def fit(
        cls,
        frame: Any,
        target: Target,
        impute: str = "median",
        encode: str = "onehot",
        max_categories: int = 50,
    ) -> TablePreprocessor:
        """Fit on the training features (a DataFrame without the target)."""
        import pandas as pd

        numeric = [
            str(c)
            for c in frame.columns
            if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])
        ]
        categorical = [str(c) for c in frame.columns if str(c) not in numeric]
        fill: dict[str, Any] = {}
        for c in numeric:
            col = frame[c].astype(np.float64)
            value = col.median() if impute == "median" else col.mean()
            fill[c] = 0.0 if pd.isna(value) else float(value)
        categories: dict[str, list[str]] = {}
        for c in categorical:
            col = frame[c].dropna().astype(str)
            fill[c] = str(col.mode().iloc[0]) if not col.empty else OTHER
            counts = col.value_counts()
            ranked = sorted(counts.index, key=lambda v: (-counts[v], v))
            categories[c] = sorted(ranked[:max_categories])
        draft = cls(target, numeric, categorical, fill, categories, encode, [], [])
        x = draft._encode(frame)
        std = x.std(axis=0)
        return cls(
            target,
            numeric,
            categorical,
            fill,
            categories,
            encode,
            x.mean(axis=0).tolist(),
            np.where(std > 0, std, 1.0).tolist(),
        )

    @property
    def columns(self) -> list[str]:
        """The raw feature columns, in order."""
        return [*self.numeric, *self.categorical]

    @property
    def feature_names(self) -> list[str]:
        """The encoded features the network sees."""
        names = list(self.numeric)
        for c in self.categorical:
            if self.encode == "onehot":
                names += [f"{c}={v}" for v in self.categories[c]] + [f"{c}={OTHER}"]
            else:
                names.append(c)
        return names

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(features,)."""
        return (len(self.feature_names),)

    def _encode(self, frame: Any) -> np.ndarray:
        import pandas as pd

        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise InputError(f"missing input column{'s' if len(missing) > 1 else ''}: {shown}")
        parts = []
        for c in self.numeric:
            col = frame[c]
            num = pd.to_numeric(col, errors="coerce")
            bad = num.isna() & col.notna()
            if bad.any():
                raise InputError(
                    f"column {c!r}: non-numeric value {col[bad].iloc[0]!r} in a numeric column"
                )
            parts.append(num.astype(np.float64).fillna(self.fill[c]).to_numpy()[:, None])
        for c in self.categorical:
            col = frame[c].map(lambda v: v if pd.isna(v) else str(v)).fillna(self.fill[c])
            known = self.categories[c]
            if self.encode == "onehot":
                onehot = np.stack([(col == v).to_numpy() for v in known], axis=1)
                other = ~onehot.any(axis=1, keepdims=True) if known else np.ones((len(col), 1))
                parts.append(np.concatenate([onehot, other], axis=1).astype(np.float64))
            else:
                index = {v: i for i, v in enumerate(known)}
                codes = [index.get(v, -1) for v in col]
                parts.append(np.asarray(codes, dtype=np.float64)[:, None])
        if not parts:
            return np.zeros((len(frame), 0))
        return np.concatenate(parts, axis=1)

    def transform(self, frame: Any) -> np.ndarray:
        """Raw rows (a DataFrame with the feature columns) -> (N, features) float32."""
        import pandas as pd

        if not isinstance(frame, pd.DataFrame):
            try:
                frame = pd.DataFrame(frame)
            except (TypeError, ValueError) as exc:
                raise InputError(f"expected a table of rows ({exc})") from None
        x = self._encode(frame)
        return ((x - np.asarray(self.mean)) / np.asarray(self.std)).astype(np.float32)


# -- images ---------------------------------------------------------------------------------------


def decode_image(data: Any, where: str = "image") -> np.ndarray:
    """Encoded bytes (PNG/JPEG, or base64 text of them) or a pixel array -> (H, W, C) uint8.

    C is 1 or 3 (alpha dropped). Float arrays are pixel values 0..255, clipped.
    """
    if isinstance(data, str):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise InputError(f"{where}: text that is not base64 of an encoded image") from None
    if isinstance(data, bytes | bytearray | memoryview):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(bytes(data))) as img:
                img.load()
                mode = "L" if img.mode in ("1", "L", "I", "I;16", "F", "LA") else "RGB"
                arr = np.asarray(img.convert(mode))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
            raise InputError(f"{where}: cannot decode image ({one_line(exc, 100)})") from None
    else:
        try:
            arr = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{where}: not an image (expected bytes or a pixel array)") from None
        if arr.size == 0 or not np.isfinite(arr).all():
            raise InputError(f"{where}: pixel array is empty or holds NaN or infinite values")
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
        raise InputError(f"{where}: expected an (H, W) or (H, W, 1|3|4) image, got {arr.shape}")
    return arr[:, :, :3] if arr.shape[2] == 4 else arr


def one_line(text: object, limit: int = 240) -> str:
    """Collapse whitespace and cut to `limit` characters."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def fit_image(img: np.ndarray, size: tuple[int, int], channels: int) -> np.ndarray:
    """(H, W, C) uint8 -> (height, width, channels) uint8: channel conversion, bilinear resize."""
    if img.shape[2] != channels:
        if channels == 3:
            img = np.repeat(img, 3, axis=2)
        else:  # ITU-R 601 luma, as PIL's "L"
            luma = img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
            img = np.clip(np.rint(luma), 0, 255).astype(np.uint8)[:, :, None]
    h, w = size
    if img.shape[:2] != (h, w):
        from PIL import Image

        resized = [
            np.asarray(Image.fromarray(img[:, :, c]).resize((w, h), Image.Resampling.BILINEAR))
            for c in range(channels)
        ]
        img = np.stack(resized, axis=2)
    return img


@dataclass(frozen=True)
class ImagePreprocessor:
    """Decode, convert channels, resize, normalize per channel (fitted on training images)."""

    target: Target
    size: tuple[int, int]
    channels: int
    mean: list[float]
    std: list[float]
    kind: str = "images"

    @classmethod
    def fit(
        cls, images: np.ndarray, target: Target, size: tuple[int, int], channels: int
    ) -> ImagePreprocessor:
        """Fit on training images already at (N, H, W, C) uint8."""
        x = np.asarray(images, dtype=np.float64)
        std = x.std(axis=(0, 1, 2))
        return cls(
            target,
            (int(size[0]), int(size[1])),
            int(channels),
            x.mean(axis=(0, 1, 2)).tolist(),
            np.where(std > 0, std, 1.0).tolist(),
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(C, H, W)."""
        return (self.channels, *self.size)

    def prepare(self, images: Any) -> np.ndarray:
        """Raw images (bytes, base64 text or arrays, any size) -> (N, H, W, C) uint8."""
        arr = images if isinstance(images, np.ndarray) else None
        if (
            arr is not None
            and arr.dtype == np.uint8
            and arr.shape[1:] == (*self.size, self.channels)
        ):
            return arr  # already prepared (the processed splits)
        out = [
            fit_image(decode_image(img, f"image {i}"), self.size, self.channels)
            for i, img in enumerate(images)
        ]
        if not out:
            raise InputError("no images")
        return np.stack(out)

    def transform(self, images: Any) -> np.ndarray:
        """Raw images -> normalized (N, C, H, W) float32."""
        x = self.prepare(images).astype(np.float32)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


# -- sequences ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SequencePreprocessor:
    """Per-channel standardization of fixed-length sequences (fitted on training sequences)."""

    target: Target
    length: int
    channels: int
    mean: list[float]
    std: list[float]
    kind: str = "sequences"

    @classmethod
    def fit(cls, x: np.ndarray, target: Target) -> SequencePreprocessor:
        """Fit on training sequences (N, T, C)."""
        x = np.asarray(x, dtype=np.float64)
        std = x.std(axis=(0, 1))
        return cls(
            target,
            int(x.shape[1]),
            int(x.shape[2]),
            x.mean(axis=(0, 1)).tolist(),
            np.where(std > 0, std, 1.0).tolist(),
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        """(T, C)."""
        return (self.length, self.channels)

    def transform(self, x: Any) -> np.ndarray:
        """Raw sequences (N, T) or (N, T, C), arrays or nested lists -> (N, T, C) float32."""
        try:
            arr = np.asarray(
                x if isinstance(x, np.ndarray) else [np.asarray(s, np.float64) for s in x],
                dtype=np.float64,
            )
        except (TypeError, ValueError) as exc:
            raise InputError(
                f"expected sequences of {self.length} steps x {self.channels} channels ({exc})"
            ) from None
        if arr.ndim == 2 and self.channels == 1:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[1:] != (self.length, self.channels):
            raise InputError(
                f"expected sequences of {self.length} steps x {self.channels} channels, "
                f"got shape {arr.shape}"
            )
        if not np.isfinite(arr).all():
            raise InputError("sequences hold NaN or infinite values")
        out = (arr - np.asarray(self.mean)) / np.asarray(self.std)
        return out.astype(np.float32)


Preprocessor = TablePreprocessor | ImagePreprocessor | SequencePreprocessor
KINDS = {
    "tables": TablePreprocessor,
    "images": ImagePreprocessor,
    "sequences": SequencePreprocessor,
}


def save(pre: Preprocessor, path: str | Path) -> Path:
    """Write a preprocessor as JSON."""
    path = Path(path)
    path.write_text(json.dumps(asdict(pre), indent=2, default=str) + "\n")
    return path


def load(path: str | Path) -> Preprocessor:
    """Read a preprocessor written by `save`."""
    data = json.loads(Path(path).read_text())
    data["target"] = Target(**data["target"])
    kind = KINDS[data["kind"]]
    if "size" in data:
        data["size"] = tuple(data["size"])
    return kind(**data)


def load_split(processed_dir: str | Path, split: str) -> tuple[Any, np.ndarray]:
    """Raw inputs (a DataFrame for tables, else an array) and labels of one processed split."""
    folder = Path(processed_dir)
    table = folder / f"{split}.parquet"
    if table.is_file():
        import pandas as pd

        frame = pd.read_parquet(table)
        y = frame.pop("__target__").to_numpy().copy()  # writable, as torch wants
        return frame, y
    with np.load(folder / f"{split}.npz", allow_pickle=False) as npz:
        return npz["x"], npz["y"]
