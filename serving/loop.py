"""Dynamic batching that never waits on an idle server.

LitServe's batched loop waits `batch_timeout` for every batch, even a lone request's (latency
at concurrency 1), and with `batch_timeout` 0 it spins on the queue. This loop blocks for the
first request, then takes what is already queued; only when that was more than the one request
(the server is busy) does it wait up to `batch_timeout` for a fuller batch. An idle server
answers at once; under load, the requests that arrive while a batch runs make up the next one.
"""

from __future__ import annotations

import time
from queue import Empty
from types import SimpleNamespace
from typing import Any

from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError, collate_requests
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType

FIRST_WAIT_S = 1.0  # how long a get blocks before the loop checks for shutdown again


class GreedyBatchedLoop(BatchedLoop):
    """`BatchedLoop` whose batches start as soon as a request is there."""

    def get_batch_requests(self, lit_api: Any, request_queue: Any, transport: Any) -> tuple:
        """The first request (blocking), then the rest up to `max_batch_size`."""
        try:
            first = request_queue.get(timeout=FIRST_WAIT_S)
        except Empty:
            return [], []
        if first == _SENTINEL_VALUE:
            raise _StopLoopError()
        response_queue_id, uid, timestamp, x_enc = first
        # what collate_requests does for each request it takes: tell the HTTP side it started
        self.put_response(
            transport=transport,
            response_queue_id=response_queue_id,
            uid=uid,
            response_data=(),
            status=LitAPIStatus.START,
            response_type=LoopResponseType.REGULAR,
        )
        payloads, timed_out = [], []
        timeout = lit_api.request_timeout
        if timeout not in (-1, False, None) and time.monotonic() - timestamp > timeout:
            timed_out.append((response_queue_id, uid))
        else:
            payloads.append((response_queue_id, uid, x_enc))
        # what is queued already; then, only if that was something (the server is busy), wait
        # up to batch_timeout for a fuller batch: an idle server answers a lone request at once
        for wait in (0.0, lit_api.batch_timeout):
            room = lit_api.max_batch_size - len(payloads) - len(timed_out)
            if room <= 0 or (wait > 0 and len(payloads) + len(timed_out) < 2):
                break
            rest = SimpleNamespace(
                batch_timeout=wait, max_batch_size=room, request_timeout=timeout, stream=False
            )
            more, more_timed_out = collate_requests(self, rest, request_queue, transport)
            payloads += more
            timed_out += more_timed_out
        return payloads, timed_out
