"""Tracking: the validation report, Data Docs and suite as MLflow artifacts, and a tag."""

from __future__ import annotations

from pathlib import Path

ARTIFACT_PATH = "validation"
SUCCESS_TAG = "validation.success"


def log_validation(run_id: str, success: bool, *files: Path) -> None:
    """Log result.json, the Data Docs folder and the suite (those given); tag the outcome."""
    from tasks import tracking

    client = tracking.client()
    for path in files:
        if path.is_dir():
            client.log_artifacts(run_id, str(path), f"{ARTIFACT_PATH}/{path.name}")
        elif path.is_file():
            client.log_artifact(run_id, str(path), ARTIFACT_PATH)
    client.set_tag(run_id, SUCCESS_TAG, "true" if success else "false")
