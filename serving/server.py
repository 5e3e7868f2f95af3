"""The HTTP side: LitServe's server with /invocations, /health, /ready, /metadata, /metrics.

The request guard (an ASGI middleware, in the HTTP processes) refuses what needs no model to
judge before it reaches the queue: a body over the size limit (413), malformed JSON (400), a
request in no known format (400), too many rows (413). Each answer is one line of JSON.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from serving.scoring import RequestError
from serving.settings import STATE_ENV, Settings

logger = logging.getLogger("dlops.serve")
INVOCATIONS = "/invocations"
KNOWN_PATHS = {INVOCATIONS, "/health", "/ready", "/metadata", "/metrics", "/info"}


def _json_response(status: int, content: dict[str, Any], kind: str | None = None) -> Any:
    from fastapi.responses import JSONResponse

    headers = {"x-dlops-error": kind} if kind else None
    return JSONResponse(content, status_code=status, headers=headers)


class RequestGuard:
    """ASGI middleware: size/JSON/format checks on /invocations; request metrics everywhere."""

    def __init__(self, app: Any, max_body_bytes: int, max_rows: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_rows = max_rows

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Check /invocations bodies, then pass the request on; count it either way."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from serving.metrics import metrics

        m = metrics()
        path = scope["path"] if scope["path"] in KNOWN_PATHS else "other"
        start = time.perf_counter()
        seen: dict[str, Any] = {"status": 500, "kind": None}

        async def send_counted(message: dict) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                for key, value in message.get("headers", []):
                    if key.lower() == b"x-dlops-error":
                        seen["kind"] = value.decode()
            await send(message)

        try:
            if path == INVOCATIONS and scope["method"] == "POST":
                try:
                    body = await self._read_body(scope, receive)
                    from serving.scoring import count_rows, parse_body

                    count_rows(parse_body(body), self.max_rows)
                except RequestError as exc:
                    response = _json_response(exc.status, {"error": str(exc)}, exc.kind)
                    await response(scope, receive, send_counted)
                    return
                receive = _replay(body, receive)
            await self.app(scope, receive, send_counted)
        finally:
            status = seen["status"]
            m.requests.labels(path, str(status)).inc()
            if path == INVOCATIONS:
                m.latency.observe(time.perf_counter() - start)
                if status >= 400:
                    kind = seen["kind"] or ("internal" if status >= 500 else "http")
                    m.errors.labels(kind).inc()

    async def _read_body(self, scope: dict, receive: Any) -> bytes:
        too_large = RequestError(
            f"request body over {self.max_body_bytes} bytes", status=413, kind="too_large"
        )
        for key, value in scope.get("headers", []):
            if key == b"content-length" and value.isdigit() and int(value) > self.max_body_bytes:
                raise too_large
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestError("client disconnected", status=400, kind="disconnected")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replayed() -> dict:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


def worker_states(state_dir: str | Path) -> list[dict[str, Any]]:
    """What each live inference worker reported (the model it holds, or why none)."""
    states = []
    for file in sorted(Path(state_dir).glob("worker-*.json")):
        try:
            state = json.loads(file.read_text())
            os.kill(int(state["pid"]), 0)
        except (OSError, ValueError, KeyError):
            continue  # half-written by os.replace's peer, or a worker that is gone
        states.append(state)
    return states


def add_routes(app: Any, settings: Settings, state_dir: str) -> None:
    """/ready, /metadata and /metrics (LitServe's own /health is the liveness probe)."""

    async def ready() -> Any:
        states = worker_states(state_dir)
        loaded = [s for s in states if s.get("model")]
        if states and len(loaded) >= settings.workers:
            versions = sorted({s["model"]["version"] for s in loaded})
            return _json_response(200, {"ready": True, "versions": versions})
        problems = sorted({s.get("problem") or "loading" for s in states}) or ["starting"]
        return _json_response(503, {"ready": False, "reason": "; ".join(problems)})

    async def metadata() -> Any:
        loaded = [s for s in worker_states(state_dir) if s.get("model")]
        if not loaded:
            return _json_response(503, {"error": "no model loaded yet (see /ready)"})
        newest = max(loaded, key=lambda s: s["model"]["loaded_at"])
        body = dict(newest["model"])
        body["workers"] = {s["worker"]: s["model"]["version"] for s in loaded}
        body["server"] = {
            k: v for k, v in settings.to_dict().items() if k not in ("state_dir", "host")
        }
        return _json_response(200, body)

    async def prometheus() -> Any:
        from fastapi.responses import Response
        from prometheus_client import CONTENT_TYPE_LATEST

        from serving.metrics import exposition

        return Response(exposition(), media_type=CONTENT_TYPE_LATEST)

    app.add_api_route("/ready", ready, methods=["GET"])
    app.add_api_route("/metadata", metadata, methods=["GET"])
    app.add_api_route("/metrics", prometheus, methods=["GET"])


_MAIN_PID: list[int] = []


def _interrupt(signum: int, frame: Any) -> None:
    if os.getpid() in _MAIN_PID:
        raise KeyboardInterrupt
    raise SystemExit(0)  # an HTTP process forked from the server, after uvicorn's own shutdown


def serve(settings: Settings) -> None:
    """Run the server until interrupted (blocks); its state folder is removed on the way out."""
    state_dir = settings.state_dir or tempfile.mkdtemp(prefix="dlops-serve-")
    owned = not settings.state_dir
    from serving.metrics import configure

    configure(Path(state_dir) / "metrics")  # before anything imports prometheus_client
    os.environ[STATE_ENV] = state_dir
    os.environ.setdefault("LITLOGGER_DISABLE", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # SIGTERM (docker stop, Kubernetes) shuts down as Ctrl+C does: workers stopped too.
    _MAIN_PID.append(os.getpid())
    signal.signal(signal.SIGTERM, _interrupt)
    import litserve as ls

    from serving.api import DlopsAPI

    try:
        from dataclasses import replace

        settings = replace(settings, state_dir=state_dir)
        server = ls.LitServer(
            DlopsAPI(settings),
            accelerator=settings.accelerator,
            devices=1,
            workers_per_device=settings.workers,
            timeout=settings.timeout_s,
            fast_queue=settings.fast_queue,
            healthcheck_path="/health",
            middlewares=[
                (
                    RequestGuard,
                    {"max_body_bytes": settings.max_body_bytes, "max_rows": settings.max_rows},
                )
            ],
        )
        add_routes(server.app, settings, state_dir)
        print(
            f"serve: models:/{settings.name}@{settings.alias} on "
            f"http://{settings.host}:{settings.port}/invocations "
            f"({settings.workers} worker(s), batches of <= {settings.max_batch_size}, "
            f"{settings.batch_timeout * 1000:g} ms wait)",
            flush=True,
        )
        server.run(
            host=settings.host,
            port=settings.port,
            num_api_servers=settings.api_servers,
            generate_client_file=False,
            log_level="warning",
        )
    finally:
        if owned:
            shutil.rmtree(state_dir, ignore_errors=True)
