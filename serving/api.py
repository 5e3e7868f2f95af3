"""The LitServe API: MLflow scoring JSON in, one forward pass per batch of requests, hot swap.

Per batch: each request's rows are parsed and preprocessed on their own (a bad request fails
alone, with a 4xx that names the row), the good ones are concatenated into one array and the
network runs once. A watcher thread follows `models:/<name>@<alias>` and swaps the loaded model
by one reference assignment; a batch holds the model it started with, so a swap lands between
batches and no request fails during it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import litserve as ls
import numpy as np

from serving.scoring import RequestError
from serving.settings import Settings, tracking_uri

logger = logging.getLogger("dlops.serve")
ERROR_HEADER = "x-dlops-error"  # the error kind, counted by the HTTP process's metrics


@dataclass
class Item:
    """One request inside a batch: its rows, or the error that stopped it."""

    frame: Any = None
    rows: int = 0
    error: RequestError | None = None
    out: Any = None  # the request's predictions (records)
    model: Any = None  # the model that computed them


@dataclass
class Batch:
    """The requests of one forward pass and the model they all use."""

    model: Any
    items: list[Item]
    x: np.ndarray | None = None
    out: np.ndarray | None = None
    single: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class DlopsAPI(ls.LitAPI):
    """Serves the registered model an alias points to; follows the alias."""

    def __init__(self, settings: Settings) -> None:
        from serving.loop import GreedyBatchedLoop

        batched = settings.max_batch_size > 1
        super().__init__(
            max_batch_size=settings.max_batch_size,
            batch_timeout=settings.batch_timeout if batched else 0.0,
            api_path="/invocations",
            loop=GreedyBatchedLoop() if batched else "auto",
        )
        self.settings = settings

    # -- worker lifecycle ---------------------------------------------------------------------

    def setup(self, device: str) -> None:
        """Set torch threads and start the watcher, which loads the model (see /ready)."""
        import torch

        from serving.metrics import metrics

        torch.set_num_threads(self.settings.threads)
        self.uri = tracking_uri()
        self.model = None
        self.problem = "loading"
        self.worker = os.environ.get("LITSERVE_WORKER_ID", "0")
        self.metrics = metrics()
        self._write_state()
        self._watcher = threading.Thread(target=self._watch, name="dlops-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        from serving import model as served

        while True:
            try:
                version = served.alias_version(self.uri, self.settings.name, self.settings.alias)
                current = None if self.model is None else self.model.version
                if version is None:
                    if current is None:
                        self.problem = (
                            f"no models:/{self.settings.name}@{self.settings.alias} in the "
                            "registry yet"
                        )
                        self._write_state()
                elif version != current:
                    new = served.load(self.uri, self.settings.name, self.settings.alias, version)
                    self.model = new  # the swap: batches that start from now on use it
                    self.problem = ""
                    self.metrics.swaps.inc()
                    logger.info(
                        "serving %s v%s (was %s)", new.name, new.version, current or "nothing"
                    )
                    self._write_state()
            except Exception as exc:  # keep serving the model already loaded
                self.problem = f"cannot load the model: {' '.join(str(exc).split())[:300]}"
                logger.warning(self.problem)
                self._write_state()
            time.sleep(self.settings.poll_s)

    def _write_state(self) -> None:
        folder = Path(self.settings.state_dir or os.environ.get("DLOPS_SERVE_STATE", ""))
        if not str(folder):
            return
        state = {
            "pid": os.getpid(),
            "worker": self.worker,
            "problem": self.problem,
            "model": None if self.model is None else self.model.metadata(),
        }
        path = folder / f"worker-{self.worker}.json"
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, default=str))
        os.replace(tmp, path)

    # -- the hot path -------------------------------------------------------------------------

    # No annotations on `request` and the return: LitServe reads them as the FastAPI types.
    def decode_request(self, request):  # noqa: ANN001, ANN201
        """The request's JSON -> its rows (errors are kept, not raised: they fail alone)."""
        from serving.scoring import to_frame

        model = self.model
        if model is None:
            return Item(error=RequestError(f"not ready: {self.problem}", 503, "not_ready"))
        try:
            frame = to_frame(request, model.columns, self.settings.max_rows)
        except RequestError as exc:
            return Item(error=exc)
        return Item(frame=frame, rows=len(frame))

    def batch(self, inputs: list[Item]) -> Batch:
        """Preprocess each request with one model; concatenate the good ones."""
        from models.preprocessing import InputError
        from serving.model import prepare_many

        model = self.model
        for item in inputs:
            item.model = model
        todo = [item for item in inputs if item.error is None]
        parts = []
        for item, x in zip(todo, prepare_many(model, [i.frame for i in todo]), strict=True):
            if isinstance(x, InputError):
                item.error = RequestError(str(x), 400, "bad_input")
            else:
                parts.append(x)
        x = np.concatenate(parts) if parts else None
        return Batch(model=model, items=list(inputs), x=x)

    def predict(self, batch: Any) -> Batch:
        """One forward pass over every good row of the batch."""
        from serving.model import forward, outputs_frame
        from serving.scoring import records

        if isinstance(batch, Item):  # max_batch_size 1: LitServe skips batch()/unbatch()
            batch = self.batch([batch])
            batch.single = True
        good = [item for item in batch.items if item.error is None]
        if batch.x is not None and len(batch.x):
            out = forward(batch.model, batch.x)
            # one output frame for the batch, its records split per request
            rows = records(outputs_frame(batch.model, out))
            start = 0
            for item in good:
                item.out = rows[start : start + item.rows]
                start += item.rows
            self.metrics.batch_size.observe(len(good))
            self.metrics.batch_rows.observe(len(batch.x))
        return batch.items[0] if batch.single else batch

    def unbatch(self, output: Batch) -> list[Item]:
        """One result per request."""
        return output.items

    def encode_response(self, output):  # noqa: ANN001, ANN201
        """`{"predictions": [...]}` as mlflow models serve answers, or a one-line 4xx error."""
        from fastapi.responses import JSONResponse

        item, model = output, output.model
        if item.error is not None:
            return JSONResponse(
                {"error": str(item.error)},
                status_code=item.error.status,
                headers={ERROR_HEADER: item.error.kind},
            )
        return JSONResponse(
            {"predictions": item.out},
            headers={"x-dlops-model-version": model.version},
        )
