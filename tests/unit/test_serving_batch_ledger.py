"""serving/ without a server: the scoring JSON, batch inference, the ledger and its commands."""

from __future__ import annotations

import json

import dvc.repo  # noqa: F401  (binds DVC's log handler before capfd; see tests/conftest.py)
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.cli import main
from serving.scoring import RequestError, count_rows, parse_body, to_frame
from tests.serving_models import drift_tables, model_input, register


def test_the_three_mlflow_formats_give_the_same_frame():
    cols = ["a", "b"]
    expected = pd.DataFrame({"a": [1, 3], "b": ["x", "y"]})
    for body in (
        {"dataframe_split": {"columns": cols, "data": [[1, "x"], [3, "y"]]}},
        {"dataframe_split": {"index": [0, 1], "columns": cols, "data": [[1, "x"], [3, "y"]]}},
        {"dataframe_records": [{"a": 1, "b": "x"}, {"a": 3, "b": "y"}]},
        {"inputs": {"a": [1, 3], "b": ["x", "y"]}},
        {"inputs": [{"a": 1, "b": "x"}, {"a": 3, "b": "y"}]},
        {"instances": [[1, "x"], [3, "y"]]},
    ):
        pd.testing.assert_frame_equal(to_frame(body, cols, 10), expected, check_dtype=False)
    # one-column modalities: a plain list is one value (an image, a sequence) per row
    frame = to_frame({"inputs": [[1.0, 2.0], [3.0, 4.0]]}, ["sequence"], 10)
    assert frame["sequence"].tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize(
    ("body", "status", "kind", "message"),
    [
        (b"{", 400, "malformed_json", "malformed JSON: Expecting property name"),
        (b"[1]", 400, "bad_format", "expected a JSON object with one of dataframe_split"),
        (b'{"x": 1}', 400, "bad_format", "expected exactly one of dataframe_split, "),
        (b'{"inputs": [1], "instances": [1]}', 400, "bad_format", "expected exactly one of"),
        (b'{"inputs": [1], "extra": 1}', 400, "bad_format", "unknown request field 'extra'"),
        (b'{"inputs": []}', 400, "bad_format", "inputs: no rows to predict"),
        (b'{"inputs": 3}', 400, "bad_format", "inputs: expected a list of rows"),
        (b'{"dataframe_split": [1]}', 400, "bad_format", "dataframe_split: expected an object"),
        (b'{"inputs": {"a": [1, 2], "b": [1]}}', 400, "bad_format", "inputs: columns of diff"),
        (b'{"inputs": [1, 2, 3, 4]}', 413, "too_many_rows", "inputs: 4 rows in one request; at"),
    ],
)
def test_bad_request_bodies_name_the_problem(body, status, kind, message):
    with pytest.raises(RequestError) as exc:
        count_rows(parse_body(body), max_rows=3)
    assert (exc.value.status, exc.value.kind) == (status, kind)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            {"dataframe_split": {"columns": ["a", "b"], "data": [[1, 2], [3]]}},
            "dataframe_split: row 1 has 1 values for 2 columns",
        ),
        (
            {"dataframe_split": {"columns": "a", "data": [[1]]}},
            "dataframe_split: 'columns' must be a list of names",
        ),
        ({"dataframe_records": [{"a": 1}, 5]}, "dataframe_records: row 1 is not an object"),
        ({"inputs": [[1, 2], [3]]}, "inputs: row 1 is not a list of 2 values (a, b)"),
    ],
)
def test_bad_rows_are_named(body, message):
    with pytest.raises(RequestError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        to_frame(body, ["a", "b"], 10)


@pytest.mark.slow
def test_predict_each_modality_writes_the_pyfunc_predictions(workspace, capfd):
    import mlflow

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    out = workspace / "out"
    for kind in ("images", "tables", "sequences"):
        _, data = register(kind, f"p-{kind}", uri, workspace)
        x = data.x_test[:25]
        if kind == "images":
            from PIL import Image

            folder = workspace / "imgs" / "sub"
            folder.mkdir(parents=True)
            for i, img in enumerate(x):
                Image.fromarray(img[:, :, 0]).save(folder / f"{i:03d}.png")
            src, keys = workspace / "imgs", [f"sub/{i:03d}.png" for i in range(25)]
        elif kind == "tables":
            src, keys = workspace / "rows.csv", list(range(25))
            x.to_csv(src, index=False)
        else:
            src, keys = workspace / "seq.npz", list(range(25))
            np.savez(src, x=x)
        dest = out / f"{kind}.parquet"

        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "predict",
                    "--model",
                    f"p-{kind}",
                    "--input",
                    str(src),
                    "--output",
                    str(dest),
                    "--chunk-rows",
                    "10",
                ]
            )

        assert exc.value.code == 0
        line = capfd.readouterr().out.strip().splitlines()[-1]
        assert line.startswith(f"predict: 25 rows of {src} scored by p-{kind} v1 -> {dest}")
        got = pd.read_parquet(dest)
        mlflow.set_tracking_uri(uri)
        pyfunc = mlflow.pyfunc.load_model(f"models:/p-{kind}@champion", suppress_warnings=True)
        expected = pyfunc.predict(model_input(kind, x))
        assert got["key"].tolist() == keys
        pd.testing.assert_frame_equal(got.drop(columns="key"), expected)
        assert not [p for p in out.iterdir() if p.name.startswith(".")]

    # a bad row: --on-error fail names it and writes nothing; skip writes the others
    rows = pd.read_csv(workspace / "rows.csv")
    rows[rows.columns[0]] = rows[rows.columns[0]].astype(object)
    rows.loc[7, rows.columns[0]] = "n/a?"
    rows.to_csv(workspace / "bad.csv", index=False)
    for mode, code in (("fail", 1), ("skip", 0)):
        dest = out / f"bad-{mode}.csv"
        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "predict",
                    "--model",
                    "p-tables",
                    "--input",
                    str(workspace / "bad.csv"),
                    "--output",
                    str(dest),
                    "--on-error",
                    mode,
                    "--chunk-rows",
                    "10",
                ]
            )
        assert exc.value.code == code
        captured = capfd.readouterr()
        if mode == "fail":
            assert captured.err.strip() == (
                f"dlops: {workspace / 'bad.csv'}: row 7: column {rows.columns[0]!r}: "
                "non-numeric value 'n/a?' in a numeric column"
            )
            assert not dest.exists()
        else:
            assert "predict: skipped row 7: column" in captured.out
            assert pd.read_csv(dest)["key"].tolist() == [i for i in range(25) if i != 7]
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary left

    with pytest.raises(SystemExit) as exc:
        main(["predict", "--model", "p-tables", "--input", str(src), "--output", "x.json"])
    assert exc.value.code == 1
    err = capfd.readouterr().err.strip()
    assert err == "dlops: x.json: the output must be a .parquet or .csv file"


@pytest.mark.slow
def test_rollback_and_history_follow_the_ledger(workspace, capfd):
    from tasks import ledger

    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    name = "ledger-digits"
    client = MlflowClient(tracking_uri=uri)
    v1, _ = register("images", name, uri, workspace, alias=None, steps=3)

    def cli(*args: str) -> tuple[int, str, str]:
        capfd.readouterr()  # what came before (registration) is not the command's
        with pytest.raises(SystemExit) as exc:
            main([*args, "--model", name])
        captured = capfd.readouterr()
        return exc.value.code, captured.out.strip(), captured.err.strip()

    none = f"dlops: rollback: {name} has no @champion to roll back from"
    assert cli("rollback") == (1, "", none)
    client.set_registered_model_alias(name, "champion", v1)
    ledger.record(
        client,
        name,
        ledger.PROMOTE,
        None,
        v1,
        "promoted: no champion yet",
        metric="accuracy",
        new_score=0.5,
        champion_score=None,
    )
    assert cli("rollback") == (
        1,
        "",
        f"dlops: rollback: no previous champion recorded for {name} v1; name one with "
        "--to VERSION",
    )

    v2, _ = register("images", name, uri, workspace, alias=None, steps=6)
    client.set_registered_model_alias(name, "champion", v2)
    ledger.record(
        client,
        name,
        ledger.PROMOTE,
        v1,
        v2,
        "promoted: better",
        metric="accuracy",
        new_score=0.7,
        champion_score=0.5,
    )
    # a version with other inputs (a table model registered under this name) is refused
    v3, _ = register("tables", name, uri, workspace, alias=None)
    code, _, err = cli("rollback", "--to", v3)
    assert code == 1 and err == (
        f"dlops: rollback: {name} v3 takes or gives other columns than v2 (signatures differ); "
        "clients of the champion would break"
    )

    assert cli("rollback", "--reason", "drifted") == (
        0,
        f"rollback: {name} @champion v2 -> v1 (servers follow within poll_s)",
        "",
    )
    assert str(client.get_registered_model(name).aliases["champion"]) == v1
    code, out, _ = cli("history")
    lines = out.splitlines()
    assert code == 0 and lines[0] == f"{name}: @champion is v1; 3 entries"
    assert [line.split()[1:4] for line in lines[1:]] == [
        ["promote", "v-", "->"],
        ["promote", "v1", "->"],
        ["rollback", "v2", "->"],
    ]
    assert "accuracy 0.7000 vs 0.5000" in lines[2] and lines[3].endswith("drifted")
    entry = ledger.history(client, name)[-1]
    assert (entry["action"], entry["from"], entry["to"], entry["reason"]) == (
        "rollback",
        "2",
        "1",
        "drifted",
    )
    assert "@" in entry["by"]


@pytest.mark.slow
def test_promote_writes_the_ledger(tmp_path, tiny_model, sqlite_mlflow):
    from tasks import ledger, promote, tracking
    from tests.unit.test_register_promote import NAME, make_cfg, register_weights

    cfg = make_cfg(tmp_path)
    v1 = register_weights(tiny_model, cfg)
    assert promote.run(cfg, NAME, v1.version).promoted
    (entry,) = ledger.history(tracking.client(), NAME)
    assert (entry["action"], entry["from"], entry["to"], entry["metric"]) == (
        "promote",
        None,
        "1",
        "accuracy",
    )
    assert entry["reason"].startswith("promoted: accuracy")
    assert json.dumps(entry)  # JSON-safe


@pytest.mark.slow
def test_drift_flags_a_shifted_table_and_passes_an_unshifted_one(workspace, capfd):
    uri = f"sqlite:///{workspace / 'mlflow.db'}"
    data, numeric = drift_tables(workspace, "drift-wine", uri)

    def drift(src: str, out: str) -> tuple[int, str]:
        capfd.readouterr()
        with pytest.raises(SystemExit) as exc:
            main(
                [
                    "drift",
                    "--model",
                    "drift-wine",
                    "--input",
                    str(workspace / src),
                    "--reference",
                    str(workspace / "train.parquet"),
                    "--out",
                    out,
                ]
            )
        return exc.value.code, capfd.readouterr().out

    code, out = drift("same.csv", "reports/same")
    assert code == 0 and "drift: no drift: " in out
    code, out = drift("shifted.csv", "reports/shifted")
    assert code == 1 and "drift: drifted: " in out
    report = json.loads((workspace / "reports/shifted/drift.json").read_text())
    assert all(report["columns"][c]["drifted"] for c in numeric)
    assert report["share_drifted"] >= 5 / 6 and report["drifted"] is True
    assert (workspace / "reports/shifted/drift.html").read_text().lstrip().startswith("<")
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dlops-drift")
    runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.data.tags["dlops.drifted"] for r in runs] == ["False", "True"]
    assert runs[1].data.metrics["drift/share"] == report["share_drifted"]
    names = {a.path for a in client.list_artifacts(runs[1].info.run_id, "drift")}
    assert names == {"drift/drift.html", "drift/drift.json"}

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "drift",
                "--model",
                "drift-wine",
                "--input",
                str(workspace / "nope.csv"),
                "--reference",
                str(workspace / "train.parquet"),
            ]
        )
    assert exc.value.code == 2
    assert capfd.readouterr().err.strip() == f"dlops: {workspace / 'nope.csv'}: no such file"
