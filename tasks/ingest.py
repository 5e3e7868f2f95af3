"""Ingest: write scikit-learn's built-in digits set (shipped in the package) to the raw CSV."""

from __future__ import annotations

import argparse
import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tasks.config import Config, load_config

PIXELS = [f"pixel_{i}" for i in range(64)]
LABEL = "label"
COLUMNS = [*PIXELS, LABEL]


@dataclass(frozen=True)
class IngestResult:
    """Where the raw data went and what it holds."""

    path: Path
    rows: int
    sha256: str


def load_digits_frame() -> pd.DataFrame:
    """The 1,797 8x8 digits as a frame: pixel_0..pixel_63 (0..16) and label (0..9)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    frame = pd.DataFrame(bunch.data.astype("int64"), columns=PIXELS)
    frame[LABEL] = bunch.target.astype("int64")
    return frame


def run(cfg: Config) -> IngestResult:
    """Write the raw data set to `paths.raw` atomically (validation judges its content)."""
    path = Path(cfg.paths.raw)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if cfg.data.source:
        source = Path(cfg.data.source)
        if not source.is_file():
            raise FileNotFoundError(f"ingest: data.source {source} does not exist")
        shutil.copyfile(source, tmp)
    else:
        load_digits_frame().to_csv(tmp, index=False)
    tmp.replace(path)
    data = path.read_bytes()
    rows = max(len(data.splitlines()) - 1, 0)  # lines below the header
    return IngestResult(path=path, rows=rows, sha256=hashlib.sha256(data).hexdigest())


def main() -> None:
    """Entry point for `python -m tasks.ingest` (dvc.yaml)."""
    argparse.ArgumentParser(description=__doc__).parse_args()
    result = run(load_config())
    print(f"ingest: {result.rows} rows -> {result.path}")


if __name__ == "__main__":
    main()
