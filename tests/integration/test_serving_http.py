"""`dlops serve` over real HTTP: a real SQLite MLflow store, real tiny models of each modality.

Each server is a real `dlops serve` process group on a free 127.0.0.1 port, stopped (with its
workers) by the test that started it.
"""

from __future__ import annotations

import json
import threading
import time

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
from mlflow import MlflowClient

from tests.serving_models import Server, model_input, register

pytestmark = [pytest.mark.integration, pytest.mark.slow]
FAST = ["-S", "serve.poll_s=0.5"]


@pytest.fixture(scope="session")
def prefect_server():
    """No Prefect here (overrides the integration suite's session server)."""
    yield


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A SQLite store with a champion of each modality: {kind: (name, data)}."""
    work = tmp_path_factory.mktemp("serving-store")
    uri = f"sqlite:///{work / 'mlflow.db'}"
    models = {}
    for kind in ("images", "tables", "sequences"):
        _, data = register(kind, f"tiny-{kind}", uri, work)
        models[kind] = (f"tiny-{kind}", data)
    yield uri, work, models
    mlflow.set_tracking_uri(None)


@pytest.fixture
def serve(store, tmp_path):
    """serve(name, *args) -> a started Server; all stopped after the test."""
    uri = store[0]
    servers: list[Server] = []

    def start(name: str, *args: str) -> Server:
        servers.append(Server(name, uri, tmp_path / f"serve-{len(servers)}.log", *FAST, *args))
        return servers[-1]

    yield start
    for s in servers:
        s.stop()


def offline(uri: str, name: str, frame: pd.DataFrame) -> pd.DataFrame:
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/{name}@champion", suppress_warnings=True)
    return model.predict(frame)


def post(server: Server, body: object) -> requests.Response:
    return requests.post(server.url + "/invocations", json=body, timeout=30)


def assert_same(served: requests.Response, expected: pd.DataFrame) -> None:
    assert served.status_code == 200, served.text
    got = pd.DataFrame(served.json()["predictions"])
    assert list(got.columns) == list(expected.columns)
    assert got["prediction"].tolist() == expected["prediction"].tolist()
    proba = [c for c in expected.columns if c.startswith("proba_")]
    np.testing.assert_allclose(got[proba].to_numpy(), expected[proba].to_numpy(), atol=1e-6)


@pytest.mark.parametrize("kind", ["tables", "sequences"])
def test_served_predictions_equal_the_pyfunc(store, serve, kind):
    uri, _, models = store
    name, data = models[kind]
    frame = model_input(kind, data.x_test[:12])
    server = serve(name)
    server.wait("/ready")

    expected = offline(uri, name, frame)
    jsonable = json.loads(frame.to_json(orient="records"))

    assert_same(post(server, {"dataframe_records": jsonable}), expected)
    split = json.loads(frame.to_json(orient="split", index=False))
    assert_same(post(server, {"dataframe_split": split}), expected)
    if kind == "sequences":
        assert_same(post(server, {"inputs": [row["sequence"] for row in jsonable]}), expected)
    else:
        columns = {c: [r[c] for r in jsonable] for c in frame.columns}
        assert_same(post(server, {"inputs": columns}), expected)

    if kind == "tables":
        bad = [dict(r) for r in jsonable[:3]]
        bad[2][frame.columns[0]] = "lots"
        r = post(server, {"dataframe_records": bad})
        assert r.status_code == 400
        assert r.json() == {
            "error": f"row 2: column {frame.columns[0]!r}: non-numeric value 'lots' in a "
            "numeric column"
        }
        missing = [{k: v for k, v in jsonable[0].items() if k != "grade"}]
        r = post(server, {"dataframe_records": missing})
        assert (r.status_code, r.json()) == (400, {"error": "missing input column: grade"})
    else:
        r = post(server, {"inputs": [jsonable[0]["sequence"][:-3]]})
        assert r.status_code == 400
        assert r.json()["error"].startswith("expected sequences of 32 steps x 1 channels")


def test_images_formats_metadata_metrics_and_bad_requests(store, serve):
    uri, _, models = store
    name, data = models["images"]
    frame = model_input("images", data.x_test[:9])
    server = serve(name, "-S", "serve.batch_timeout=0.05", "-S", "serve.max_body_bytes=1000000")
    assert server.wait("/health").text == "ok"
    server.wait("/ready")
    expected = offline(uri, name, frame)
    records = frame.to_dict(orient="records")

    # the three formats of mlflow models serve, and pixel lists instead of PNG text
    assert_same(post(server, {"dataframe_records": records}), expected)
    split = {"columns": ["image"], "data": [[v] for v in frame["image"]]}
    assert_same(post(server, {"dataframe_split": split}), expected)
    assert_same(post(server, {"inputs": list(frame["image"])}), expected)
    assert_same(post(server, {"inputs": [x[:, :, 0].tolist() for x in data.x_test[:9]]}), expected)

    meta = requests.get(server.url + "/metadata", timeout=5).json()
    assert (meta["name"], meta["alias"], meta["version"]) == (name, "champion", "1")
    assert meta["tags"]["git.commit"] == "0123abc"
    assert meta["input_schema"] == {"modality": "images", "columns": ["image"], "shape": [1, 8, 8]}
    assert meta["classes"] == list(range(10))
    assert meta["server"]["max_batch_size"] == 64 and meta["server"]["workers"] == 1

    # bad requests: 4xx, one line of JSON naming the problem
    def bad(body: bytes | object, status: int, error: str) -> None:
        if isinstance(body, bytes):
            r = requests.post(
                server.url + "/invocations",
                data=body,
                headers={"Content-Type": "application/json"},
                timeout=30,
            )
        else:
            r = post(server, body)
        assert r.status_code == status, r.text
        assert r.json()["error"].startswith(error), r.json()
        assert "\n" not in r.text and "Traceback" not in r.text

    bad(b"{not json", 400, "malformed JSON: Expecting property name")
    bad({"rows": []}, 400, "expected exactly one of dataframe_split, dataframe_records")
    bad({"dataframe_records": [{"img": "x"}]}, 400, "expected a DataFrame with a 'image' column")
    bad({"inputs": ["aGVsbG8="]}, 400, "image 0: cannot decode image")
    bad({"inputs": [records[0]["image"], 3]}, 400, "image 1: expected an (H, W)")
    bad(
        {"dataframe_split": {"columns": ["image"], "data": [[1, 2]]}},
        400,
        "dataframe_split: row 0 has 2 values for 1 columns",
    )
    bad({"inputs": [records[0]["image"]] * 1025}, 413, "inputs: 1025 rows in one request")
    bad(b'{"inputs": ["' + b"A" * 1_000_001 + b'"]}', 413, "request body over 1000000 bytes")

    # a bad request batched with good ones fails alone
    results: dict[int, requests.Response] = {}

    def send(i: int) -> None:
        body = {"inputs": ["aGVsbG8="]} if i == 3 else {"dataframe_records": records[i : i + 1]}
        results[i] = post(server, body)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results[3].status_code == 400
    for i in set(results) - {3}:
        assert_same(results[i], expected.iloc[i : i + 1].reset_index(drop=True))

    text = requests.get(server.url + "/metrics", timeout=5).text
    metrics = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert metrics['dlops_requests_total{path="/invocations",status="200"}'] == 4 + 7
    assert metrics['dlops_errors_total{kind="malformed_json"}'] == 1
    assert metrics['dlops_errors_total{kind="too_many_rows"}'] == 1
    assert metrics['dlops_errors_total{kind="too_large"}'] == 1
    assert metrics['dlops_errors_total{kind="bad_input"}'] == 4
    assert metrics['dlops_errors_total{kind="bad_format"}'] == 2
    assert metrics["dlops_request_latency_seconds_count"] == 4 + 7 + 9
    # 8 concurrent requests within a 50 ms batch window: some forward pass held several
    assert metrics["dlops_batch_size_sum"] > metrics["dlops_batch_size_count"]
    assert metrics["dlops_batch_rows_sum"] == 4 * 9 + 7


def test_ready_after_promotion_hot_swap_and_rollback(store, serve, tmp_path):
    from tasks import ledger

    uri, work, _ = store
    name = "tiny-swap"
    v1, data = register("images", name, uri, work, alias=None, steps=5)
    v2, _ = register("images", name, uri, work, alias=None, steps=40, seed=1)
    client = MlflowClient(tracking_uri=uri)
    frame = model_input("images", data.x_test[:5])
    body = {"dataframe_records": frame.to_dict(orient="records")}

    server = serve(name)
    server.wait("/health")
    deadline = time.monotonic() + 60
    while (r := requests.get(server.url + "/ready", timeout=5)).json()["reason"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert r.status_code == 503
    assert r.json() == {
        "ready": False,
        "reason": f"no models:/{name}@champion in the registry yet",
    }
    r = post(server, body)
    assert r.status_code == 503 and r.json()["error"].startswith("not ready: no models:/")
    assert requests.get(server.url + "/metadata", timeout=5).status_code == 503

    # the first promotion: the server loads it
    client.set_registered_model_alias(name, "champion", v1)
    ledger.record(client, name, ledger.PROMOTE, None, v1, "promoted: first")
    server.wait("/ready")
    assert requests.get(server.url + "/metadata", timeout=5).json()["version"] == v1
    served_v1 = post(server, body)
    assert served_v1.headers["x-dlops-model-version"] == v1

    # promotion of v2 under load: every request answered, the version switches
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            r = post(server, body)
            seen.append((r.status_code, r.headers.get("x-dlops-model-version", "")))

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1)
    client.set_registered_model_alias(name, "champion", v2)
    ledger.record(client, name, ledger.PROMOTE, v1, v2, "promoted: better")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if requests.get(server.url + "/metadata", timeout=5).json()["version"] == v2:
            break
        time.sleep(0.2)
    time.sleep(1)
    stop.set()
    for t in threads:
        t.join()
    assert {status for status, _ in seen} == {200}, seen[:5]
    versions = [v for _, v in seen]
    assert versions[0] == v1 and versions[-1] == v2
    assert versions == sorted(versions, key=int)  # one switch, never back
    assert_same(post(server, body), offline(uri, name, frame))  # @champion is v2 now

    # rollback: the alias goes back to v1, the ledger says so, the server follows
    before, after = ledger.rollback(client, name, reason="v2 misbehaves")
    assert (before, after) == (v2, v1)
    assert str(client.get_registered_model(name).aliases["champion"]) == v1
    entries = ledger.history(client, name)
    assert [(e["action"], e["from"], e["to"]) for e in entries] == [
        ("promote", None, v1),
        ("promote", v1, v2),
        ("rollback", v2, v1),
    ]
    assert entries[-1]["reason"] == "v2 misbehaves"
    deadline = time.monotonic() + 60
    while requests.get(server.url + "/metadata", timeout=5).json()["version"] != v1:
        assert time.monotonic() < deadline, "the server did not follow the rollback"
        time.sleep(0.2)
    assert post(server, body).json() == served_v1.json()
