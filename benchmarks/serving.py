"""`mlflow models serve` vs `dlops serve` on a digits champion, measured with `hey`.

Both servers serve the same registered version (a digits CNN with params.yaml's default cnn
options, trained a few steps into a temporary SQLite store, or --model/--tracking-uri for an
existing champion); every request is one base64 PNG in `dataframe_records`, as a client of
`mlflow models serve` sends it. Prints req/s, p50 and p99 at each concurrency, side by side,
then the requests that failed while @champion moved under load.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/serving.py --seconds 5
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.serving_models import Server, free_port, model_input, register, tiny_data  # noqa: E402

DIGITS_CNN = {"arch": "cnn", "options": {}, "dropout": 0.2}  # params.yaml's cnn defaults


def hey(url: str, body: Path, concurrency: int, seconds: float) -> dict[str, float]:
    out = subprocess.run(
        ["hey", "-z", f"{seconds}s", "-c", str(concurrency), "-m", "POST"]
        + ["-T", "application/json", "-D", str(body), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    def pick(pattern: str) -> float:
        m = re.search(pattern, out)
        return float(m.group(1)) if m else float("nan")

    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d+)\]\s+(\d+) responses", out)}
    errors = 0
    if "Error distribution" in out:  # connection errors, timeouts: "[count]\tmessage"
        tail = out.split("Error distribution")[1]
        errors = sum(int(n) for n in re.findall(r"\[(\d+)\]\s+\w", tail))
    return {
        "rps": pick(r"Requests/sec:\s+([\d.]+)"),
        "p50": pick(r"50% in ([\d.]+) secs") * 1000,
        "p99": pick(r"99% in ([\d.]+) secs") * 1000,
        "ok": codes.get(200, 0),
        "failed": sum(n for c, n in codes.items() if c != 200) + errors,
    }


def wait(url: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5, help="hey duration per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--model", help="an existing registered model (default: a fresh one)")
    parser.add_argument("--tracking-uri", help="its store (default: a temporary SQLite store)")
    parser.add_argument("--workers", type=int, default=1, help="dlops serve inference workers")
    args = parser.parse_args()
    if not shutil.which("hey"):
        sys.exit("benchmarks/serving.py: needs `hey` on PATH (Debian package hey)")

    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    uri = args.tracking_uri or f"sqlite:///{work / 'mlflow.db'}"
    name = args.model or "bench-digits"
    if not args.model:
        register("images", name, uri, work, steps=20, spec=DIGITS_CNN)
    body = work / "one.json"
    frame = model_input("images", tiny_data("images").x_test[:1])
    body.write_text(json.dumps({"dataframe_records": frame.to_dict(orient="records")}))

    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # mlflow runs uvicorn from PATH
    mlflow_port = free_port()
    mlflow_proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{name}@champion"]
        + ["--env-manager", "local", "--host", "127.0.0.1", "--port", str(mlflow_port)],
        env=env,
        stdout=(work / "mlflow.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    dlops = Server(name, uri, work / "dlops.log", "--workers", str(args.workers))
    results: dict[str, dict[int, dict[str, float]]] = {}
    try:
        wait(f"http://127.0.0.1:{mlflow_port}/ping", mlflow_proc)
        dlops.wait("/ready", timeout=180)
        targets = {
            "mlflow models serve": f"http://127.0.0.1:{mlflow_port}/invocations",
            f"dlops serve ({args.workers} worker)": f"{dlops.url}/invocations",
        }
        for label, url in targets.items():
            hey(url, body, 4, 1)  # warm-up
            results[label] = {c: hey(url, body, c, args.seconds) for c in args.concurrency}
    finally:
        os.killpg(mlflow_proc.pid, signal.SIGTERM)
        mlflow_proc.wait(timeout=30)

    print(f"\none base64 PNG per request, hey -z {args.seconds:g}s, {os.cpu_count()} CPUs")
    header = "| server | " + " | ".join(f"c={c} req/s (p50 / p99 ms)" for c in args.concurrency)
    print(header + " |")
    print("|---|" + "---|" * len(args.concurrency))
    for label, row in results.items():
        cells = []
        for r in (row[c] for c in args.concurrency):
            failed = f", {r['failed']} failed" if r["failed"] else ""
            cells.append(f"{r['rps']:.0f} ({r['p50']:.1f} / {r['p99']:.1f}){failed}")
        print(f"| {label} | " + " | ".join(cells) + " |")

    # requests that fail while @champion moves (a second version promoted under load)
    if not args.model:
        from mlflow import MlflowClient

        v2, _ = register("images", name, uri, work, alias=None, steps=25, seed=1, spec=DIGITS_CNN)
        client = MlflowClient(tracking_uri=uri)
        timer = threading.Timer(2.0, client.set_registered_model_alias, (name, "champion", v2))
        timer.start()
        swap = hey(f"{dlops.url}/invocations", body, 8, max(args.seconds, 8))
        served = requests.get(f"{dlops.url}/metadata", timeout=5).json()["version"]
        print(
            f"\nhot swap under load (c=8, @champion v1 -> v{v2} after 2 s): {swap['ok']} ok, "
            f"{swap['failed']} failed, serving v{served} at the end"
        )
    dlops.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
