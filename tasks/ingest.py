"""Ingest: copy the data (a built-in set, or the user's file or folder) into the raw folder.

The source is a local path or any URI fsspec reads (file://, http(s)://, s3://). The raw folder
(a DVC out) gets the source's bytes in the modality's layout (see tasks.sources) and a
manifest.json with the source, its content hash, the modality, the task and the classes, so a
changed source changes the raw folder's hash and `dvc repro` re-runs what depends on it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from models.preprocessing import one_line
from tasks.config import BUILTINS, Config, DataConfig
from tasks.names import check_name
from tasks.redact import redact
from tasks.sources import (
    IMAGE_SUFFIXES,
    IMAGES_DIR,
    DataError,
    Manifest,
    list_images,
    read_sequences,
    read_table,
)
from tasks.utils import atomic_dir, file_sha256

TARGET = "target"  # the built-in tables' target column
MAX_CLASSES = 50  # a target with more distinct integer values than this is a regression


@dataclass(frozen=True)
class IngestResult:
    """Where the raw data went and what it holds."""

    raw_dir: Path
    manifest: Manifest


# -- built-ins (shipped inside packages, or generated: no network) ------------------------------


def write_digits(dest: Path) -> None:
    """scikit-learn's 1,797 8x8 digits as grayscale PNGs in dest/<digit>/<index>.png."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    pixels = np.rint(bunch.images * (255 / 16)).astype(np.uint8)
    for i, (img, label) in enumerate(zip(pixels, bunch.target, strict=True)):
        folder = dest / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(folder / f"{i:04d}.png", optimize=False)


def builtin_table(name: str) -> Any:
    """A scikit-learn table (breast_cancer, wine, diabetes) with its target as `target`."""
    from sklearn import datasets

    loader = {
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
        "diabetes": datasets.load_diabetes,
    }[name]
    frame = loader(as_frame=True, scaled=False).frame if name == "diabetes" else None
    if frame is None:
        frame = loader(as_frame=True).frame
    return frame


def waveforms(n: int = 1200, length: int = 64, seed: int = 1234) -> dict[str, np.ndarray]:
    """Noisy sine, square, sawtooth and triangle waves (4 classes), random frequency and phase."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, length, endpoint=False)
    y = np.arange(n) % 4
    freq = rng.uniform(1.5, 4.0, n)[:, None]
    phase = rng.uniform(0, 1, n)[:, None]
    amp = rng.uniform(1.0, 2.0, n)[:, None]
    cycle = (freq * t[None, :] + phase) % 1.0
    shapes = np.stack(
        [
            np.sin(2 * np.pi * cycle),
            np.where(cycle < 0.5, 1.0, -1.0),
            2 * cycle - 1,
            1 - 4 * np.abs(cycle - 0.5),
        ]
    )
    x = amp * shapes[y, np.arange(n)] + rng.normal(0, 0.25, (n, length))
    order = rng.permutation(n)
    return {"x": x[order].astype(np.float32), "y": y[order].astype(np.int64)}


# -- user sources --------------------------------------------------------------------------------


CHUNK = 1 << 20  # bytes per read while streaming a source


class _Budget:
    """What a source may still bring: bytes (data.max_bytes) and files (data.max_files)."""

    def __init__(self, max_bytes: int, max_files: int, shown: str) -> None:
        self.max_bytes, self.max_files, self.shown = max_bytes, max_files, shown
        self.bytes = self.files = 0

    def add_file(self, size: int | None = None) -> None:
        self.files += 1
        if self.files > self.max_files:
            raise DataError(
                f"{self.shown}: more than {self.max_files} files (data.max_files); refusing it"
            )
        if size:
            self.add_bytes(size, declared=True)

    def add_bytes(self, n: int, declared: bool = False) -> None:
        self.bytes += n
        if self.bytes > self.max_bytes:
            what = "declares" if declared else "holds"
            raise DataError(
                f"{self.shown}: {what} more than {self.max_bytes} bytes (data.max_bytes); "
                "refusing it"
            )


class _CountingWriter:
    """A file wrapper that charges every written chunk to the budget (raises when exceeded)."""

    def __init__(self, fh: Any, budget: _Budget) -> None:
        self.fh, self.budget = fh, budget

    def write(self, data: bytes) -> int:
        self.budget.add_bytes(len(data))
        return self.fh.write(data)


def _reading(shown: str, what: str, exc: Exception) -> DataError:
    """A one-line DataError for a failed read, the library's message redacted."""
    detail = one_line(exc, 160) or type(exc).__name__
    return DataError(redact(f"{shown}: cannot read {what} ({detail})"))


def _open_fs(source: str, shown: str) -> tuple[Any, str]:
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(source)
    except Exception as exc:  # unknown protocol, missing driver (s3fs), bad URL
        raise _reading(shown, "the source", exc) from exc
    return fs, path


def _copy(fs: Any, path: str, target: Path, budget: _Budget, shown: str) -> None:
    """Stream one file of the source to `target` in chunks, charging the byte budget."""
    # http(s): block_size=0 streams the response instead of fetching ranges or the whole body
    kwargs = {"block_size": 0} if "http" in _protocols(fs) else {}
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with fs.open(path, "rb", **kwargs) as src, target.open("wb") as dst:
            shutil.copyfileobj(src, _CountingWriter(dst, budget), CHUNK)
    except DataError:
        raise
    except Exception as exc:  # remote filesystems raise their own errors
        raise _reading(shown, repr(path) if path else "the source", exc) from exc


def _protocols(fs: Any) -> tuple[str, ...]:
    proto = fs.protocol
    return (proto,) if isinstance(proto, str) else tuple(proto)


def _member(name: str, root: str, info: dict[str, Any], shown: str) -> str:
    """A listed entry's path relative to the source folder; escaping or linked -> DataError."""
    if root and name.rstrip("/") == root:
        return ""
    prefix = f"{root}/" if root else ""
    rel = name[len(prefix) :] if name.startswith(prefix) else None
    parts = rel.rstrip("/").split("/") if rel else []
    if (
        rel is None
        or rel.startswith("/")
        or "\\" in rel
        or re.match(r"^[A-Za-z]:", rel)
        or any(p in ("..", ".") for p in parts)
    ):
        raise DataError(
            redact(
                f"{shown}: member {name!r} escapes the destination (.. or an absolute path); "
                "refusing the source"
            )
        )
    if info.get("linkname") or (info.get("islink") and not _link_inside(name, root)):
        raise DataError(
            redact(f"{shown}: member {name!r} is a link out of the source; links are not followed")
        )
    return rel.rstrip("/")


def _link_inside(name: str, root: str) -> bool:
    """A local folder's symlink that resolves inside the folder (archives' links never do)."""
    real_root = os.path.realpath(root)
    return os.path.realpath(name).startswith(real_root + os.sep)


def _fetch_images(fs: Any, path: str, dest: Path, budget: _Budget, shown: str) -> None:
    """Copy root/<class>/<image> files; top-level files (no class) and other files are skipped."""
    root = path.rstrip("/")
    try:
        listing = fs.find(root, withdirs=True, detail=True)
    except Exception as exc:
        raise _reading(shown, "the folder listing", exc) from exc
    entries = []
    # files first: an escaping member is named, not the folders its name implies
    ordered = sorted(listing.items(), key=lambda e: (e[1].get("type") == "directory", e[0]))
    for name, info in ordered:
        rel = _member(name, root, info, shown)
        if not rel:
            continue
        is_dir = info.get("type") == "directory"
        if not is_dir:
            budget.add_file(info.get("size"))
        entries.append((name, rel, is_dir))
    for name, rel, is_dir in entries:
        target = dest / rel
        if is_dir and "/" not in rel:
            target.mkdir(parents=True, exist_ok=True)  # list_images names empty classes
        elif not is_dir and "/" in rel and rel.lower().endswith(IMAGE_SUFFIXES):
            _copy(fs, name, target, budget, shown)


def fetch(
    source: str,
    dest_dir: Path,
    modality: str,
    max_bytes: int = DataConfig.model_fields["max_bytes"].default,
    max_files: int = DataConfig.model_fields["max_files"].default,
) -> str:
    """Copy a source into dest_dir in the modality's layout; return the copy's relative path.

    Files are streamed in chunks, never read whole; a source larger than `max_bytes` or with
    more than `max_files` files, or an archive member that escapes the destination, is refused.
    Messages show the source redacted (no password, no query string).
    """
    shown = redact(source)
    budget = _Budget(max_bytes, max_files, shown)
    fs, path = _open_fs(source, shown)
    try:
        if modality == "images":
            exists = fs.exists(path)
            is_dir = exists and fs.isdir(path)
        else:  # info, not isdir: http's isdir downloads the whole body to look for links
            info = fs.info(path)
            exists, is_dir = True, info.get("type") == "directory"
    except FileNotFoundError as exc:
        # fsspec's http reports any refusal (403: bad credentials or signature) as not found
        cause = exc.__cause__
        if cause is not None and getattr(cause, "status", None) not in (None, 404):
            raise _reading(shown, "the source", cause) from exc
        exists = False
    except Exception as exc:  # remote filesystems raise their own errors
        raise _reading(shown, "the source", exc) from exc
    if not exists:
        raise DataError(f"{shown}: file not found")
    if modality == "images":
        if not is_dir:
            raise DataError(f"{shown}: images need a folder root/<class>/<image>, got a file")
        _fetch_images(fs, path, dest_dir / IMAGES_DIR, budget, shown)
        return IMAGES_DIR
    if is_dir:
        raise DataError(f"{shown}: expected a file for {modality}, got a folder")
    budget.add_file(info.get("size"))
    suffix = Path(path.split("?", 1)[0]).suffix.lower()
    if modality == "sequences":
        name = "data.npz"
    else:
        name = "data.parquet" if suffix in (".parquet", ".pq") else f"data{suffix or '.csv'}"
    _copy(fs, path, dest_dir / name, budget, shown)
    return name


def write_builtin(name: str, modality: str, dest_dir: Path) -> str:
    """Write a built-in set into dest_dir in its modality's layout; return the relative path."""
    if modality == "images":
        write_digits(dest_dir / IMAGES_DIR)
        return IMAGES_DIR
    if modality == "tables":
        builtin_table(name).to_csv(dest_dir / "data.csv", index=False)
        return "data.csv"
    np.savez(dest_dir / "data.npz", **waveforms())
    return "data.npz"


def infer_task(values: Any, where: str) -> str:
    """Classification for strings, booleans and few distinct integers; else regression."""
    import pandas as pd

    s = pd.Series(values).dropna()
    if s.empty:
        raise DataError(f"{where}: the target holds no values")
    if not pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s):
        return "classification"
    integral = bool(np.all(np.asarray(s, dtype=np.float64) % 1 == 0))
    return "classification" if integral and s.nunique() <= MAX_CLASSES else "regression"


def _classes(values: Any) -> list[Any]:
    import pandas as pd

    s = pd.Series(values).dropna()
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        uniq = np.unique(np.asarray(s, dtype=np.float64))
        if np.all(uniq % 1 == 0):
            return [int(v) for v in uniq]
        return [float(v) for v in uniq]
    return sorted({str(v) for v in s})


def describe(cfg: Config, raw_dir: Path, file: str, source: str, sha256: str) -> Manifest:
    """Read the copied data once to decide the task and the classes; bad layout -> DataError."""
    modality = cfg.modality
    path = raw_dir / file
    target = group = None
    fixed_test = False
    if modality == "tables":
        frame = read_table(path)
        target = TARGET if cfg.data.source is None else cfg.data.target
        where = cfg.data.shown_source or cfg.data.dataset
        if target not in frame.columns:
            shown = ", ".join(map(str, frame.columns[:8])) + (
                ", ..." if frame.shape[1] > 8 else ""
            )
            raise DataError(f"{where}: no target column {target!r} (columns: {shown})")
        if frame.shape[1] < 2:
            raise DataError(f"{where}: no feature columns besides the target {target!r}")
        group = cfg.data.group
        if group is not None and group not in frame.columns:
            raise DataError(f"{where}: no group column {group!r}")
        labels, rows = frame[target], len(frame)
    elif modality == "images":
        files = list_images(path)
        labels, rows = [c for _, c in files], len(files)
    else:
        arrays = read_sequences(path)
        labels, rows = arrays["y"], len(arrays["y"])
        fixed_test = "x_test" in arrays
    where = f"{cfg.data.shown_source or cfg.data.dataset}"
    if modality == "images":
        task = "classification"
    elif cfg.data.task != "auto":
        task = cfg.data.task
    elif cfg.data.source is None:
        task = BUILTINS[cfg.data.dataset][1]
    else:
        task = infer_task(labels, where)
    # train.* and promote.* against the task: checked by the stages that read them (the flow
    # right after ingest), so ingest's params are `data` alone
    if task == "regression":
        import pandas as pd

        if not pd.api.types.is_numeric_dtype(pd.Series(labels)):
            raise DataError(f"{where}: task regression needs a numeric target")
    classes = _classes(labels) if task == "classification" else []
    return Manifest(
        name=cfg.data.name,
        modality=modality,
        task=task,
        source=source,
        sha256=sha256,
        file=file,
        rows=rows,
        target=target,
        group=group,
        classes=classes,
        fixed_test=fixed_test,
    )


def _previous(cfg: Config, raw_dir: Path) -> Manifest | None:
    try:
        m = Manifest.load(raw_dir)
    except (DataError, TypeError, ValueError):
        return None
    ok = m.params_hash == cfg.section_hash("data") and m.data_path(raw_dir).exists()
    return m if ok else None


def run(cfg: Config, verify_name: bool = True, raw_dir: Path | None = None) -> IngestResult:
    """Copy the data into `paths.raw_dir` with its manifest, atomically.

    The stage runs on every pipeline run (the source may have changed outside the repository),
    but leaves the raw folder untouched when the content is the same: downstream stages skip.
    First (unless `verify_name` is false: `dlops suite init --force` moves a name) a source
    whose data name another source holds is refused (tasks.names). `raw_dir` (default:
    `paths.raw_dir`) is where the copy goes: `dlops suite init` copies to a scratch folder.
    """
    if verify_name:
        check_name(cfg)  # before anything is written
    raw_dir = Path(raw_dir or cfg.paths.raw_dir)
    previous = _previous(cfg, raw_dir)
    if previous is not None and cfg.data.source is None:  # built-ins are deterministic
        return IngestResult(raw_dir=raw_dir, manifest=previous)
    raw_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=raw_dir.parent, prefix=".ingest.") as scratch:
        tmp = Path(scratch) / "raw"
        tmp.mkdir()
        if cfg.data.source:
            source = cfg.data.shown_source  # recorded: credentials and query masked
            d = cfg.data
            file = fetch(d.resolved_source, tmp, cfg.modality, d.max_bytes, d.max_files)
        else:
            source = f"builtin:{cfg.data.dataset}"
            file = write_builtin(cfg.data.dataset, cfg.modality, tmp)
        sha = content_hash(tmp / file)
        if previous is not None and (previous.source, previous.sha256) == (source, sha):
            return IngestResult(raw_dir=raw_dir, manifest=previous)
        try:
            manifest = describe(cfg, tmp, file, source, sha)
        except DataError as exc:  # name the user's source, not the temporary copy
            raise DataError(str(exc).replace(str(tmp / file), source)) from exc.__cause__
        manifest = replace(manifest, params_hash=cfg.section_hash("data"))
        manifest.save(tmp)
        with atomic_dir(raw_dir) as out:
            out.rmdir()
            tmp.rename(out)
    return IngestResult(raw_dir=raw_dir, manifest=manifest)


def content_hash(path: Path) -> str:
    """sha256 of a file, or of a folder's (relative path, file hash) pairs in sorted order."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        digest.update(rel.encode() + b"\0" + bytes.fromhex(file_sha256(f)))
    return digest.hexdigest()


def main() -> None:
    """Entry point for `python -m tasks.ingest` (dvc.yaml): exit non-zero on bad data."""
    from tasks.entry import run_stage

    argparse.ArgumentParser(description=__doc__).parse_args()

    def body(cfg: Config) -> str:
        r = run(cfg)
        m = r.manifest
        return f"ingest: {m.rows} {m.modality} rows ({m.task}) from {m.source} -> {r.raw_dir}"

    # setup(): .env, and redaction of logs and tracebacks (the source URL may carry secrets)
    run_stage("ingest", body, check_upstream=False)  # the first stage: nothing upstream


if __name__ == "__main__":
    main()
