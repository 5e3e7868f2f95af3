"""The suite file of a data name: where it is, reading it, its parameters, writing it.

`<paths.suites_dir>/<data.name>.json` holds GX's own JSON (`ExpectationSuite.to_json_dict()`),
written once by the suite step (`dlops suite init`, or `dlops run` on a source's first run) and
reviewed and committed by the user. The validate stage only reads it: the suite is one of its
dependencies, never one of its outputs.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from tasks.config import Config
from tasks.sources import DataError, one_line
from tasks.validate.frames import Frame
from tasks.validate.values import META

INIT_HINT = "run `dlops suite init` (or `dlops run`, which infers it on a source's first run)"


class SuiteMissingError(DataError):
    """The data has no suite yet: the suite step has not run for it."""


def suite_path(cfg: Config) -> Path:
    """`<paths.suites_dir>/<data.name>.json`, relative to the working directory."""
    return Path(cfg.paths.suites_dir) / f"{cfg.data.name}.json"


def parameters(cfg: Config) -> dict[str, Any]:
    """The values a suite's `{"$PARAMETER": ...}` bounds resolve to: params.yaml's validate."""
    return cfg.validate_.model_dump()


def read_suite(path: Path) -> dict[str, Any]:
    """The suite's JSON dict; missing or unreadable -> DataError naming the file."""
    if not path.is_file():
        raise SuiteMissingError(f"no suite {path}: {INIT_HINT}")
    try:
        suite = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"suite {path}: not a readable JSON file ({one_line(exc, 100)})") from None
    if not isinstance(suite, dict) or not isinstance(suite.get("expectations"), list):
        raise DataError(f"suite {path}: not a GX expectation suite (no expectations list)")
    return suite


def recorded(suite: dict[str, Any]) -> dict[str, Any]:
    """What dlops recorded in a suite's meta (data name, modality, task, label, source)."""
    meta = suite.get("meta") if isinstance(suite, dict) else None
    ours = meta.get(META) if isinstance(meta, dict) else None
    return ours if isinstance(ours, dict) else {}


def recorded_source(path: Path) -> str | None:
    """The source a committed suite was inferred from, or None (no file, no record)."""
    try:
        suite = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    source = (recorded(suite).get("inferred_from") or {}).get("source")
    return str(source) if source else None


def load_suite(path: Path, data: Frame) -> dict[str, Any]:
    """The committed suite, refused when it was inferred for another modality, task or target."""
    suite = read_suite(path)
    ours = recorded(suite)
    for key, have in (("modality", data.modality), ("task", data.task)):
        if ours.get(key) not in (None, have):
            raise DataError(
                f"suite {path}: inferred for {ours[key]} data, the data is {have} "
                "(`dlops suite init --force` infers a new one)"
            )
    if ours.get("label") not in (None, data.label):
        raise DataError(
            f"suite {path}: inferred for target {ours['label']!r}, the data's target is "
            f"{data.label!r} (`dlops suite init --force` infers a new one; or set data.name "
            "for a suite of its own)"
        )
    return suite


def write_suite(path: Path, suite: dict[str, Any]) -> Path:
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
    return path
