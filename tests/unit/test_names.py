"""Name collisions: a data name (and a registered model) belongs to one source.

`a/people.csv` and `b/people.csv` both default to the name `people`; the second is refused
before anything is written, in one line saying to set `data.name`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flows.cli import main
from tasks import ingest
from tasks.config import load_config
from tasks.names import NameInUseError, canonical, check_name
from tasks.validate import init_suite


def people(folder: Path, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n = 60
    frame = pd.DataFrame(
        {
            "age": rng.integers(20, 60, n),
            "city": rng.choice(["paris", "rome"], n),
            "label": np.where(np.arange(n) % 2 == 0, "cat", "dog"),
        }
    )
    frame.to_csv(folder / "people.csv", index=False)
    return folder / "people.csv"


def cfg_for(workspace: Path, src: Path | str, *extra: str):
    return load_config(
        workspace / "params.yaml",
        [f"data.source={src}", "data.target=label", "validate.min_rows=20", *extra],
    )


@pytest.fixture
def home(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The workspace as the checkout (relative sources resolve against it)."""
    monkeypatch.setenv("DLOPS_HOME", str(workspace))
    return workspace


def test_sources_compare_resolved_and_redacted(home: Path) -> None:
    assert canonical("people.csv") == canonical(str(home / "people.csv"))
    assert canonical(f"file://{home}/people.csv") == canonical(str(home / "./people.csv"))
    assert canonical("builtin:digits") == "builtin:digits"
    # credentials and presigned signatures differ between runs; the source does not
    first = canonical("https://ann:s3cret@example.org/d/people.csv?X-Amz-Signature=1")
    second = canonical("https://ann:other@example.org/d/people.csv?X-Amz-Signature=2")
    assert first == second == "https://ann:***@example.org/d/people.csv?***"
    assert canonical("s3://bucket/a/people.csv") != canonical("s3://bucket/b/people.csv")


def test_a_second_source_with_the_same_stem_is_refused_before_anything_is_written(
    home: Path, tmp_path: Path
) -> None:
    first = people(tmp_path / "a")
    cfg = cfg_for(home, first)
    ingest.run(cfg)
    init_suite(cfg)
    manifest = (home / "data/raw/manifest.json").read_text()
    suite = (home / "expectations/people.json").read_text()
    other = people(tmp_path / "b", seed=1)

    with pytest.raises(NameInUseError) as err:
        ingest.run(cfg_for(home, other))

    assert str(err.value) == (
        f"data.name 'people' is taken: its suite expectations/people.json was inferred from "
        f"{first}, this run reads {other}; set data.name to give this data its own suite and "
        "model (`dlops suite init --force` if it is the same data, moved)"
    )
    assert (home / "data/raw/manifest.json").read_text() == manifest  # nothing written
    assert (home / "expectations/people.json").read_text() == suite
    # the same source (another spelling of its path) keeps its name; a distinct name is free
    ingest.run(cfg_for(home, f"file://{first}"))
    renamed = cfg_for(home, other, "data.name=people-b")
    assert ingest.run(renamed).manifest.name == "people-b" and renamed.model_name == (
        "dlops-people-b"
    )


def _register(uri: str, name: str, source: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    client.create_registered_model(name)
    client.create_model_version(name, "file:///nowhere", tags={"data.source": source})


def test_a_registered_model_of_another_source_is_refused(
    home: Path, tmp_path: Path, sqlite_mlflow: str
) -> None:
    _register(sqlite_mlflow, "dlops-people", "/elsewhere/people.csv")
    src = people(tmp_path / "a")

    with pytest.raises(NameInUseError) as err:
        ingest.run(cfg_for(home, src))
    assert str(err.value) == (
        f"registered model 'dlops-people' holds models of /elsewhere/people.csv, this run reads "
        f"{src}; set data.name (or register.model_name) to register this data's models apart"
    )
    assert not (home / "data").exists()

    # an explicit model name is checked against the registry, whatever the suite says
    _register(sqlite_mlflow, "shared", "/elsewhere/people.csv")
    with pytest.raises(NameInUseError, match="; set register.model_name to register"):
        check_name(cfg_for(home, src, "data.name=mine", "register.model_name=shared"))
    check_name(cfg_for(home, src, "data.name=mine"))  # dlops-mine: free


def _suite_init(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        main(["suite", "init", *args])
    out = capsys.readouterr()
    return exc.value.code, out.out.strip(), out.err.strip()


def test_suite_init_writes_once_refuses_bad_data_and_force_moves_a_name(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = people(tmp_path / "a")
    opts = ["-S", "data.target=label", "-S", "validate.min_rows=20"]
    params = (home / "params.yaml").read_text()

    code, out, err = _suite_init(["--data", str(first), *opts], capsys)
    suite = home / "expectations" / "people.json"
    assert code == 0, err
    assert out.startswith(f"suite: wrote {Path('expectations/people.json')} (")
    assert f"inferred from {first}); review it and commit it" in out
    written = suite.read_text()
    assert json.loads(written)["meta"]["dlops"]["inferred_from"]["source"] == str(first)
    assert not list((home / ".dlops").iterdir())  # the scratch copy is gone
    assert not (home / "data").exists()  # data/raw (a DVC out) is not touched

    code, out, _ = _suite_init(["--data", str(first), *opts], capsys)
    assert code == 0 and "exists (enforced by every run); --force infers it again" in out

    moved = tmp_path / "moved" / "people.csv"
    moved.parent.mkdir()
    shutil.copy(first, moved)
    code, _, err = _suite_init(["--data", str(moved), *opts], capsys)
    assert code == 0  # exists: nothing inferred, nothing refused
    code, out, err = _suite_init(["--data", str(moved), "--force", *opts], capsys)
    assert code == 0 and f"inferred from {moved})" in out
    check_name(cfg_for(home, moved))  # the name moved with the data

    bad = tmp_path / "bad" / "people.csv"
    bad.parent.mkdir()
    pd.read_csv(first).assign(label="cat").to_csv(bad, index=False)
    suite.unlink()
    code, _, err = _suite_init(["--data", str(bad), *opts], capsys)
    assert code == 1 and "\n" not in err
    assert err == (
        f"dlops: validation failed for {bad}: min_classes(label): 1 class, need at least 2 "
        "(only 'cat')"
    )
    assert not suite.exists() and not list((home / ".dlops").iterdir())
    assert (home / "params.yaml").read_text() == params  # overrides are never written


def test_data_name_must_be_a_plain_file_name(workspace: Path) -> None:
    from tasks.config import ConfigError

    for bad in ("../escape", "a/b", ".hidden", ""):
        with pytest.raises(ConfigError, match=r"params.yaml: data.name: String should match"):
            load_config(workspace / "params.yaml", [f"data.name={bad!s}"])
    assert load_config(workspace / "params.yaml", ["data.name=people_v2"]).model_name == (
        "dlops-people_v2"
    )
