"""Drift of new inputs against the training reference, per feature, with Evidently (tables).

`dlops drift --input new.csv` compares the rows a model is asked about (a batch file, or a
sample of served requests saved as one) with the rows it was trained on (the processed train
split): one drift test per raw input column, the share of drifted columns, an HTML and a JSON
report, both logged to MLflow with the share as a metric. Above `max_share` the data set has
drifted and the command exits 1, so that a deployment can trigger retraining.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

TARGET = "__target__"  # the processed splits' label column
EXPERIMENT = "dlops-drift"


class DriftError(ValueError):
    """Inputs the drift report cannot compare; one line."""


@dataclass(frozen=True)
class DriftResult:
    """Per-column drift, the share of drifted columns, the reports and their MLflow run."""

    columns: dict[str, dict[str, Any]]
    share: float
    drifted: bool
    html: Path
    json: Path
    run_id: str
    version: str


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV/TSV/Parquet file as a frame."""
    p = Path(path)
    if not p.is_file():
        raise DriftError(f"{p}: no such file")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if suffix in (".csv", ".tsv"):
        return pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",")
    raise DriftError(f"{p}: expected a .csv, .tsv or .parquet table")


def compare(reference: pd.DataFrame, current: pd.DataFrame, columns: list[str]) -> Any:
    """Evidently's data drift report of `columns`; (snapshot, per-column results, share)."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    for name, frame in (("reference", reference), ("input", current)):
        missing = [c for c in columns if c not in frame.columns]
        if missing:
            raise DriftError(f"drift: the {name} has no column {missing[0]!r}")
    snapshot = Report([DataDriftPreset(columns=columns)]).run(
        current_data=current[columns], reference_data=reference[columns]
    )
    per_column: dict[str, dict[str, Any]] = {}
    share = 0.0
    for metric in snapshot.dict()["metrics"]:
        config, value = metric["config"], metric["value"]
        if config["type"].endswith("DriftedColumnsCount"):
            share = float(value["share"])
        elif config["type"].endswith("ValueDrift"):
            method, threshold = config["method"], float(config["threshold"])
            # p-values drift below the threshold, distances at or above it
            drift = value < threshold if "p_value" in method else value >= threshold
            per_column[config["column"]] = {
                "method": method,
                "score": float(value),
                "threshold": threshold,
                "drifted": bool(drift),
            }
    return snapshot, per_column, share


def run(
    tracking_uri: str,
    name: str,
    alias: str,
    reference_path: str | Path,
    input_path: str | Path,
    out_dir: str | Path,
    max_share: float = 0.5,
) -> DriftResult:
    """Compare `input_path` with `reference_path` on the model's raw input columns; log it."""
    from mlflow import MlflowClient

    from serving.model import alias_version, load

    version = alias_version(tracking_uri, name, alias)
    if version is None:
        raise DriftError(f"drift: no models:/{name}@{alias} in the registry")
    model = load(tracking_uri, name, alias, version)
    if model.kind != "tables":
        raise DriftError(f"drift: {name} takes {model.kind}; drift reports cover tables only")
    reference = read_table(reference_path).drop(columns=[TARGET], errors="ignore")
    current = read_table(input_path)
    snapshot, per_column, share = compare(reference, current, model.columns)
    drifted = share >= max_share

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "model": name,
        "version": version,
        "reference": str(reference_path),
        "input": str(input_path),
        "rows": {"reference": len(reference), "input": len(current)},
        "share_drifted": share,
        "max_share": max_share,
        "drifted": drifted,
        "columns": per_column,
        "evidently": snapshot.dict(),
    }
    html, js = out / "drift.html", out / "drift.json"
    _write_atomic(html, snapshot.get_html_str(as_iframe=False))
    _write_atomic(js, json.dumps(summary, indent=2, default=str) + "\n")

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp else client.create_experiment(EXPERIMENT)
    run_id = client.create_run(
        exp_id,
        run_name=f"drift {name} v{version}",
        tags={"dlops.model": name, "dlops.model_version": version, "dlops.drifted": str(drifted)},
    ).info.run_id
    client.log_metric(run_id, "drift/share", share)
    client.log_metric(run_id, "drift/columns", sum(c["drifted"] for c in per_column.values()))
    client.log_artifact(run_id, str(html), "drift")
    client.log_artifact(run_id, str(js), "drift")
    client.set_terminated(run_id)
    return DriftResult(per_column, share, drifted, html, js, run_id, version)


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)
