"""Promote: score a registered version against @champion on the test split; move the alias.

The new version becomes @champion only if its score is within `promote.threshold` and no worse
than the champion's on the same raw test rows; otherwise it is @challenger. The decision is
recorded as `promotion.*` tags on the version, and a version that has one is not judged again.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tasks import ledger, tracking
from tasks.config import LOWER_IS_BETTER, Config, ConfigError, require_task
from tasks.testhook import pause_point

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
    """One test metric from a pyfunc's output.

    Classification: `y` holds class indices and the output has `proba_<label>` per class, in
    class order; regression: `y` holds values and the output a `prediction` column.
    """
    from tasks.evaluate import CLASSIFICATION, REGRESSION, task_metrics

    if metric in CLASSIFICATION:
        proba = predictions[[c for c in predictions.columns if c.startswith("proba_")]]
        return task_metrics("classification", y, proba.to_numpy())[metric]
    if metric in REGRESSION:
        return task_metrics("regression", y, predictions["prediction"].to_numpy())[metric]
    raise ValueError(f"unknown promotion metric {metric!r}")


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    """The version holding an alias, if any (as a string: stores may return ints)."""
    # Not get_model_version_by_alias: a missing alias raises INVALID_PARAMETER_VALUE there.
    version = client.get_registered_model(name).aliases.get(alias)
    return None if version is None else str(version)


def _test_split(cfg: Config) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The raw test inputs as the pyfunc's input frame, the labels, and the task."""
    from models.preprocessing import load_split
    from models.pyfunc import to_model_input
    from tasks.utils import read_json

    split = Path(cfg.paths.processed_dir) / "split.json"
    if not split.is_file():
        raise FileNotFoundError(f"{split}: no processed splits; run tasks.preprocess first")
    info = read_json(split)
    x, y = load_split(cfg.paths.processed_dir, "test")
    return to_model_input(info["modality"], x), y, info["task"]


def _model_score(metric: str, uri: str, frame: pd.DataFrame, y: np.ndarray) -> float:
    import mlflow

    # suppress_warnings skips MLflow's scan of every installed distribution for requirement
    # mismatches (~2 s per process), which would only warn.
    model = mlflow.pyfunc.load_model(uri, suppress_warnings=True)
    return score(metric, y, model.predict(frame))


def _optional_float(text: str | None) -> float | None:
    return None if text in (None, NONE) else float(text)


def _recorded_score(mv: ModelVersion) -> float:
    value = _optional_float(mv.tags.get(TAG_NEW_SCORE))
    return math.nan if value is None else value


def _move_aliases(client: MlflowClient, name: str, version: str, promoted: bool) -> None:
    """The decision's commit point: @champion (or @challenger) moves to `version`."""
    if promoted:
        client.set_registered_model_alias(name, CHAMPION, version)
        if _alias_version(client, name, CHALLENGER) == version:
            client.delete_registered_model_alias(name, CHALLENGER)
    else:
        client.set_registered_model_alias(name, CHALLENGER, version)


def _recorded(client: MlflowClient, name: str, mv: ModelVersion) -> PromoteResult:
    """The decision already recorded on a version (nothing is scored).

    A run killed between recording the decision and moving the alias left the aliases as they
    were: when @champion is still the one the decision was made against (and, for a rejection,
    no newer version holds @challenger), the move is finished here; else they are left alone.
    """
    champion = _alias_version(client, name, CHAMPION)
    previous = mv.tags.get(TAG_CHAMPION_VERSION)
    promoted = mv.tags[TAG_DECISION] == PROMOTED
    version = str(mv.version)
    expected = None if previous in (None, NONE) else previous
    challenger = _alias_version(client, name, CHALLENGER)
    if promoted:
        pending = champion != version and champion == expected
    else:  # a newer version may hold @challenger by now: never move it back
        pending = champion == expected and (challenger is None or int(challenger) < int(version))
    if pending:
        _move_aliases(client, name, version, promoted)
        champion = _alias_version(client, name, CHAMPION)
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
    bound: float | None,
    champion_version: str | None,
    champion_score: float | None,
) -> tuple[bool, str]:
    """The gate: within the bound (a floor; rmse, mae: a ceiling), no worse than @champion."""
    lower = metric in LOWER_IS_BETTER
    better_or_equal = ">=" if not lower else "<="
    if bound is not None and (new_score > bound if lower else new_score < bound):
        side = "above the ceiling" if lower else "below the floor"
        return False, f"not promoted: {metric} {new_score:.4f} {side} {bound:g}"
    within = (
        ""
        if bound is None
        else f" {better_or_equal} {'ceiling' if lower else 'floor'} {bound:g} and"
    )
    if champion_version is None or champion_score is None:
        return True, f"promoted: {metric} {new_score:.4f}{within} no champion yet"
    if (new_score > champion_score) if lower else (new_score < champion_score):
        worse = ">" if lower else "<"
        return False, (
            f"not promoted: {metric} {new_score:.4f} {worse} champion v{champion_version} "
            f"{champion_score:.4f}"
        )
    return True, (
        f"promoted: {metric} {new_score:.4f}{within} {better_or_equal} champion "
        f"v{champion_version} {champion_score:.4f}"
    )


class IncompatibleChampionError(ConfigError):
    """The champion was trained for another task, class set or input: scores would not compare."""


def _profile(signature: dict[str, Any] | None, pre: Any | None) -> dict[str, Any]:
    """What a model takes and gives: task, classes, input columns (and sequence shape)."""
    out: dict[str, Any] = {}
    if signature:
        inputs = json.loads(signature.get("inputs") or "[]")
        outputs = json.loads(signature.get("outputs") or "[]")
        names = [str(c.get("name")) for c in outputs]
        out["inputs"] = [str(c.get("name")) for c in inputs]
        probas = [n.removeprefix("proba_") for n in names if n.startswith("proba_")]
        out["task"] = "classification" if probas else "regression"
        out["classes"] = probas
    if pre is not None and getattr(pre, "kind", None) == "sequences":
        out["sequence"] = [pre.length, pre.channels]
    return out


def _champion_preprocessor(uri: str) -> Any | None:
    """The champion's fitted preprocessor (a JSON artifact of the logged model), if it has one."""
    import tempfile

    import mlflow
    from mlflow.exceptions import MlflowException

    from models.preprocessing import load

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                f"{uri}/artifacts/preprocessor.json", dst_path=tmp
            )
        except (MlflowException, OSError):
            return None
        return load(local)


def check_compatible(cfg: Config, name: str) -> None:
    """Refuse, before anything is registered, a model that @champion's scores cannot compare to.

    The new model (`paths.train_dir`) and the champion must share the task, the class set and
    the input signature (columns; sequences: length and channels): else promote would score the
    champion on data it was not made for. Raises IncompatibleChampionError in one line.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.models import get_model_info

    from models.preprocessing import load
    from models.pyfunc import signature

    client = tracking.client()
    try:
        champion = _alias_version(client, name, CHAMPION)
    except MlflowException:
        return  # no such registered model yet
    if champion is None:
        return
    pre = load(Path(cfg.paths.train_dir) / "preprocessor.json")
    new = _profile(signature(pre).to_dict(), pre)
    uri = f"models:/{name}/{champion}"
    theirs = get_model_info(uri).signature
    # sequences: the champion's length and channels are in its fitted preprocessing
    theirs_pre = _champion_preprocessor(uri) if pre.kind == "sequences" else None
    old = _profile(theirs.to_dict() if theirs else None, theirs_pre)
    differences = [
        f"{key} {_shown(old[key])} vs {_shown(new[key])}"
        for key in ("task", "classes", "inputs", "sequence")
        if key in old and key in new and old[key] != new[key]
    ]
    if differences:
        raise IncompatibleChampionError(
            f"promote: @{CHAMPION} {name} v{champion} is not comparable with this model "
            f"({'; '.join(differences)}); set data.name (or register.model_name) to register "
            "this model under its own name"
        )


def _shown(value: Any) -> str:
    if isinstance(value, list):
        more = f", ... ({len(value)})" if len(value) > 8 else ""
        return "[" + ", ".join(map(str, value[:8])) + more + "]"
    return str(value)


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
    frame, y, task = _test_split(cfg)
    require_task(cfg, task, "promote")
    metric = cfg.promote_metric(task)
    new_score = _model_score(metric, f"models:/{name}/{version}", frame, y)
    champion_score = None
    if champion is not None:
        champion_score = _model_score(metric, f"models:/{name}/{champion}", frame, y)
    bound = cfg.promote.bound(metric)
    promoted, reason = decide(metric, new_score, bound, champion, champion_score)

    # The decision tags first (the decision itself last of them), the aliases last: @champion
    # is unchanged until a promotion completes; a run cut short before the decision tag is judged
    # again, one cut short after it finishes the move (`_recorded`).
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
    pause_point("promote")  # test hook: killed here, the champion must not have moved
    _move_aliases(client, name, version, promoted)
    # the history `dlops rollback` reads (after the move: it records what happened)
    ledger.record(
        client,
        name,
        ledger.PROMOTE if promoted else ledger.KEEP,
        champion,
        version if promoted else champion,
        reason,
        judged=version,
        metric=metric,
        new_score=new_score,
        champion_score=champion_score,
    )
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
    from tasks.entry import run_stage

    def body(cfg: Config) -> str:
        r = run(cfg, args.name or cfg.model_name, args.version)
        return f"promote: {r.reason}; @{CHAMPION} is v{r.champion_version}"

    run_stage("promote", body, check_upstream=False)  # not a DVC stage


if __name__ == "__main__":
    main()
