"""Register: log the trained model as a raw-input pyfunc into its training run, then register it.

Idempotent: when a version of the model already carries the current model.pt's sha256 as its
`dlops.model_sha256` tag, nothing is logged or registered and that version is returned.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tasks import tracking
from tasks.config import PARAMS_FILE, Config
from tasks.redact import redact
from tasks.testhook import pause_point
from tasks.utils import file_sha256, read_json

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

SHA_TAG = "dlops.model_sha256"
PIPELINE_RUN_TAG = "dlops.pipeline_run_id"
REGISTERED_TAG = "dlops.registered_model"  # set on the pipeline's parent run: "<name>/<version>"
DVC_LOCK = "dvc.lock"


@dataclass(frozen=True)
class RegisterResult:
    """The registered version (new, or the one that already holds these weights)."""

    name: str
    version: str
    run_id: str
    model_uri: str
    created: bool


def _versions_with(client: MlflowClient, name: str, sha256: str) -> list[ModelVersion]:
    """Every version of `name` tagged with these weights' hash."""
    matches: list[ModelVersion] = []
    token = None
    while True:
        page = client.search_model_versions(f"name = '{name}'", page_token=token)
        matches += [mv for mv in page if mv.tags.get(SHA_TAG) == sha256]
        token = page.token
        if not token:
            break
    return matches


def find_version(client: MlflowClient, name: str, sha256: str) -> ModelVersion | None:
    """The newest version of `name` tagged with these weights' hash, if any."""
    return max(_versions_with(client, name, sha256), key=lambda mv: int(mv.version), default=None)


def oldest_version(client: MlflowClient, name: str, sha256: str) -> ModelVersion | None:
    """The first version registered with these weights (the one concurrent runs all keep)."""
    return min(_versions_with(client, name, sha256), key=lambda mv: int(mv.version), default=None)


def input_example(cfg: Config) -> pd.DataFrame | None:
    """Two raw test inputs as the logged input example (images as base64 PNG text)."""
    import pandas as pd

    from models.preprocessing import load_split
    from models.pyfunc import IMAGE, encode_png, to_model_input

    split = Path(cfg.paths.processed_dir) / "split.json"
    if not split.is_file():
        return None
    kind = read_json(split)["modality"]
    x, _ = load_split(cfg.paths.processed_dir, "test")
    if kind == "images":
        return pd.DataFrame({IMAGE: [encode_png(img) for img in x[:2]]})
    return to_model_input(kind, x[:2])


def run(
    cfg: Config,
    lineage: dict[str, str],
    parent_run_id: str | None = None,
    trained_here: bool = True,
) -> RegisterResult:
    """Log and register the model in `paths.train_dir` unless these weights are registered.

    `trained_here`: the training run of model.json belongs to this pipeline run (train ran);
    False (train restored from DVC's run cache, or skipped): that run is an earlier one's and is
    not written to; the pyfunc goes into a `register` run nested under `parent_run_id`, tagged
    with the training run (`dlops.model_run_id`), and so does the version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from models.pyfunc import log_model

    train_dir = Path(cfg.paths.train_dir)
    weights = train_dir / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"{weights}: no trained model; run tasks.train first")
    sha256 = file_sha256(weights)
    name = cfg.model_name
    client = tracking.client()

    existing = find_version(client, name, sha256)
    if existing is not None:
        result = RegisterResult(
            name=name,
            version=str(existing.version),
            run_id=existing.run_id,
            model_uri=f"models:/{name}/{existing.version}",
            created=False,
        )
    else:
        model_run = read_json(train_dir / "model.json")["mlflow_run_id"]
        try:
            client.get_run(model_run)
        except MlflowException as exc:
            raise LookupError(
                f"training run {model_run} (from {train_dir / 'model.json'}) is not in the "
                f"tracking store {redact(tracking.tracking_uri())}: retrain, or point "
                "MLFLOW_TRACKING_URI at it"
            ) from exc
        own = not trained_here
        run_id = model_run
        if own:
            run_id = tracking.start_run(
                cfg.register_.experiment,
                "register",
                parent_run_id,
                tags={"dlops.stage": "register", tracking.MODEL_RUN_TAG: model_run},
            )
        with tracking.ending(run_id, own):
            info, _ = log_model(train_dir, run_id, input_example(cfg))
            pause_point("register")  # test hook: killed here, the model is logged, not registered
            tags = {**{k: str(v) for k, v in lineage.items()}, SHA_TAG: sha256}
            tags[tracking.MODEL_RUN_TAG] = model_run
            if parent_run_id:
                tags.setdefault(PIPELINE_RUN_TAG, parent_run_id)
            mv = mlflow.register_model(info.model_uri, name, tags=tags)
            first = oldest_version(client, name, sha256)
            if first is not None and str(first.version) != str(mv.version):
                # a run with identical inputs (on another worker) registered these weights
                # first: keep one version per weights, the oldest, whatever the interleaving
                client.delete_model_version(name, mv.version)
                mv = first
            else:
                for path in (DVC_LOCK, PARAMS_FILE):
                    if Path(path).is_file():
                        client.log_artifact(run_id, path)
        result = RegisterResult(
            name=name,
            version=str(mv.version),
            run_id=mv.run_id,
            model_uri=f"models:/{name}/{mv.version}",
            created=mv.run_id == run_id,
        )
    if parent_run_id:
        client.set_tag(parent_run_id, REGISTERED_TAG, f"{name}/{result.version}")
    return result


def main() -> None:
    """Entry point for `python -m tasks.register`."""
    from tasks.entry import run_stage

    argparse.ArgumentParser(description=__doc__).parse_args()

    def body(cfg: Config) -> str:
        r = run(cfg, lineage={})
        state = "registered" if r.created else "already registered, nothing new"
        return f"register: {r.name} version {r.version} ({state}); {r.model_uri}"

    run_stage("register", body, check_upstream=False)  # not a DVC stage


if __name__ == "__main__":
    main()
