"""What `dlops run` prints where: progress on stdout, the one-line error alone on stderr.

Prefect's console log goes to stdout (it is progress), MLflow's own log setup is left out (its
messages reach the same console), and an expected error (bad data, bad config: one line that
says it all) is logged without its traceback. Unexpected errors keep theirs.
"""

from __future__ import annotations

import logging
import os

CONSOLE_ENV = {
    "PREFECT_LOGGING_HANDLERS_CONSOLE_STREAM": "ext://sys.stdout",
    "MLFLOW_CONFIGURE_LOGGING": "false",
}


class _OneLineErrors(logging.Filter):
    """Drop the traceback of records whose exception is one of `expected`."""

    def __init__(self, expected: tuple[type[BaseException], ...]) -> None:
        super().__init__()
        self.expected = expected

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, self.expected):
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_console(expected: tuple[type[BaseException], ...]) -> None:
    """Route Prefect's console to stdout; log `expected` errors without tracebacks.

    Call before anything imports Prefect (its logging is configured on import).
    """
    for key, value in CONSOLE_ENV.items():
        os.environ.setdefault(key, value)
    import prefect.main  # noqa: F401 (configures Prefect's logging: the console handler)

    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _OneLineErrors) for f in handler.filters):
            handler.addFilter(_OneLineErrors(expected))
