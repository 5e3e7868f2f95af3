"""Promote: score a registered version against @champion on the test split; move the alias.

The new version becomes @champion only if its score reaches `promote.min_score` and is no worse
than the champion's on the same raw test rows; otherwise it is @challenger. The decision is
recorded as `promotion.*` tags on the version, and a version that has one is not judged again.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tasks import tracking
from tasks.config import Config, load_config

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_DECISION = "promotion.decision"
TAG_REASON = "promotion.reason"
TAG_METRIC = "promotion.metric"
TAG_NEW_SCORE = "promotion.new_score"
TAG_CHAMPION_SCORE = "promotion.champion_score"
TAG_CHAMPION_VERSION = "promotion.champion_version"
PROMOTED = "promoted"
REJECTED = "rejected"
NONE = "none"


@dataclass(frozen=True)
class PromoteResult:
    """The decision, its reason and the scores it compared."""

    promoted: bool
    reason: str
    new_score: float
    champion_version: str | None
    previous_champion: str | None
    previous_score: float | None


def score(metric: str, y: np.ndarray, predictions: pd.DataFrame) -> float:
    """One test metric from a pyfunc's output (`prediction`, `proba_0`..`proba_k`)."""
    from tasks.evaluate import METRICS, classification_metrics

    if metric not in METRICS:
        raise ValueError(f"unknown promotion metric {metric!r}")
    proba_cols = sorted(
        (c for c in predictions.columns if c.startswith("proba_")), key=lambda c: int(c[6:])
    )
    return classification_metrics(y, predictions[proba_cols].to_numpy())[metric]


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version holding an alias, if any (as a string: stores may return ints)."""
    # Not get_model_version_by_alias: a missing alias raises INVALID_PARAMETER_VALUE there.
    version = client.get_registered_model(name).aliases.get(alias)
    return None if version is None else str(version)


def _test_split(cfg: Config) -> tuple[pd.DataFrame, np.ndarray]:
    """The raw test rows as the pyfunc's input frame, and the labels."""
    import numpy as np
    import pandas as pd

    from models.preprocessing import load_split
    from models.pyfunc import pixel_columns

    path = Path(cfg.paths.processed_dir) / "test.npz"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no test split; run tasks.preprocess first")
    x, y = load_split(cfg.paths.processed_dir, "test")
    x = np.asarray(x, dtype=np.float64)
    return pd.DataFrame(x, columns=pixel_columns(x.shape[1])), y


def _model_score(cfg: Config, uri: str, frame: pd.DataFrame, y: np.ndarray) -> float:
    import mlflow

    # suppress_warnings skips MLflow's scan of every installed distribution for requirement
    # mismatches (~2 s per process), which would only warn.
    model = mlflow.pyfunc.load_model(uri, suppress_warnings=True)
    return score(cfg.promote.metric, y, model.predict(frame))


def _optional_float(text: str | None) -> float | None:
    return None if text in (None, NONE) else float(text)


def _recorded_score(mv: ModelVersion) -> float:
    value = _optional_float(mv.tags.get(TAG_NEW_SCORE))
    return math.nan if value is None else value


def _recorded(client: MlflowClient, name: str, mv: ModelVersion) -> PromoteResult:
    """The decision already recorded on a version (nothing is scored or moved)."""
    champion = _alias_version(client, name, CHAMPION)
    previous = mv.tags.get(TAG_CHAMPION_VERSION)
    return PromoteResult(
        promoted=mv.tags[TAG_DECISION] == PROMOTED,
        reason=mv.tags.get(TAG_REASON, ""),
        new_score=_recorded_score(mv),
        champion_version=champion,
        previous_champion=None if previous in (None, NONE) else previous,
        previous_score=_optional_float(mv.tags.get(TAG_CHAMPION_SCORE)),
    )


def decide(
    metric: str,
    new_score: float,
    floor: float,
    champion_version: str | None,
    champion_score: float | None,
) -> tuple[bool, str]:
    """The gate: at least the floor, and no worse than the champion (if any)."""
    if new_score < floor:
        return False, f"not promoted: {metric} {new_score:.4f} below the floor {floor:g}"
    if champion_version is None or champion_score is None:
        return True, f"promoted: {metric} {new_score:.4f} >= floor {floor:g} and no champion yet"
    if new_score < champion_score:
        return False, (
            f"not promoted: {metric} {new_score:.4f} < champion v{champion_version} "
            f"{champion_score:.4f}"
        )
    return True, (
        f"promoted: {metric} {new_score:.4f} >= floor {floor:g} and >= champion "
        f"v{champion_version} {champion_score:.4f}"
    )


def run(cfg: Config, name: str, version: str) -> PromoteResult:
    """Judge `models:/<name>/<version>` against @champion and move the aliases accordingly."""
    client = tracking.client()
    version = str(version)
    mv = client.get_model_version(name, version)
    if TAG_DECISION in mv.tags:
        return _recorded(client, name, mv)
    champion = _alias_version(client, name, CHAMPION)
    if champion == version:
        return PromoteResult(
            promoted=True,
            reason=f"v{version} already holds @{CHAMPION}: nothing to do",
            new_score=_recorded_score(mv),
            champion_version=version,
            previous_champion=version,
            previous_score=None,
        )

    import torch

    torch.set_num_threads(cfg.train.threads)  # as in training: tiny convolutions, one thread
    metric = cfg.promote.metric
    frame, y = _test_split(cfg)
    new_score = _model_score(cfg, f"models:/{name}/{version}", frame, y)
    champion_score = None
    if champion is not None:
        champion_score = _model_score(cfg, f"models:/{name}/{champion}", frame, y)
    promoted, reason = decide(metric, new_score, cfg.promote.min_score, champion, champion_score)

    # Aliases first, the decision tag last: a run cut short in between is judged again.
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
        if _alias_version(client, name, CHALLENGER) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)
    tags = {
        TAG_REASON: reason,
        TAG_METRIC: metric,
        TAG_NEW_SCORE: repr(new_score),
        TAG_CHAMPION_SCORE: NONE if champion_score is None else repr(champion_score),
        TAG_CHAMPION_VERSION: champion or NONE,
        TAG_DECISION: PROMOTED if promoted else REJECTED,
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    return PromoteResult(
        promoted=promoted,
        reason=reason,
        new_score=new_score,
        champion_version=version if promoted else champion,
        previous_champion=champion,
        previous_score=champion_score,
    )


def main() -> None:
    """Entry point for `python -m tasks.promote --version N [--name NAME]`."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--name", help="registered model name (default: register.model_name)")
    parser.add_argument("--version", required=True, help="the version to judge")
    args = parser.parse_args()
    cfg = load_config()
    r = run(cfg, args.name or cfg.register_.model_name, args.version)
    print(f"promote: {r.reason}; @{CHAMPION} is v{r.champion_version}")


if __name__ == "__main__":
    main()
