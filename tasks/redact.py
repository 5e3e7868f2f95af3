"""Redaction of secrets, at one place: URL credentials, query strings and secret env values.

Every URL that is recorded (manifest, lineage tags, MLflow params and tags, dvc.lock, logs,
error messages) goes through `redact_url` or `redact`. A password in `user:pass@host` becomes
`***`, a query string (presigned URLs carry their signature there) becomes `***`, and secrets
held in the environment are replaced wherever they appear in text: the values of
secret-looking variables (`*_PASSWORD`, `*_TOKEN`, `*_SECRET*`, `*_KEY`), and the passwords and
query values of URLs held in any variable (`DLOPS_OPTUNA_STORAGE`, `DLOPS_DATA_URL`, ...).

`install_log_redaction()` makes every log record pass through `redact`; `tasks.runtime.setup`
calls it once per process.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

MASK = "***"
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
_SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|_KEY$|CREDENTIALS)", re.IGNORECASE)
_MIN_SECRET = 4  # shorter values would mask ordinary words
_TRAILING = ".,:;!?)]}"  # punctuation after a URL in text is not part of it
_MIN_QUERY_SECRET = 8  # query values shorter than this (`1`, `true`) are not signatures


def redact_url(url: str) -> str:
    """The URL with its password and query string masked; other text is returned as it is.

    An fsspec chain (`zip://member::https://user:pw@host/a.zip?sig`) is redacted link by link.
    """
    if "::" in url:
        return "::".join(redact_url(link) for link in url.split("::"))
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{host}" if ":" in userinfo else f"{MASK}@{host}"
        if not user:
            netloc = f"{MASK}@{host}"
    query = MASK if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def has_secrets(url: str) -> bool:
    """Whether a URL (or any link of an fsspec chain `a::b`) carries credentials or a query."""
    for link in url.split("::"):
        try:
            parts = urlsplit(link)
        except ValueError:
            return True  # unparseable: treat as secret-bearing
        if parts.scheme and (parts.query or "@" in parts.netloc):
            return True
    return False


def _url_secrets(value: str) -> set[str]:
    """Passwords and long query values of the URLs inside an environment value."""
    found: set[str] = set()
    for match in _URL.finditer(value):
        try:
            parts = urlsplit(match.group(0))
        except ValueError:
            continue
        userinfo = parts.netloc.rpartition("@")[0]
        if ":" in userinfo:
            password = userinfo.split(":", 1)[1]
            found |= {password, unquote(password)}
        for _, query_value in parse_qsl(parts.query, keep_blank_values=False):
            if len(query_value) >= _MIN_QUERY_SECRET:
                found.add(query_value)
    return found


_cache: tuple[dict[Any, Any] | None, list[str]] = (None, [])


def secret_values() -> list[str]:
    """Secrets held in the environment, longest first (recomputed when the environment changes).

    Every log record is redacted: the environment is compared (a C-level dict comparison of
    CPython's raw environ mapping) rather than scanned again each time.
    """
    global _cache
    raw = getattr(os.environ, "_data", None)
    if raw is not None and _cache[0] == raw:
        return _cache[1]
    found: set[str] = set()
    for name, value in os.environ.items():
        if _SECRET_ENV.search(name):
            found.add(value)
        if "://" in value:
            found |= _url_secrets(value)
    values = sorted((v for v in found if len(v) >= _MIN_SECRET), key=len, reverse=True)
    _cache = (dict(raw) if raw is not None else None, values)
    return values


def _redact_match(m: re.Match[str]) -> str:
    url = m.group(0)
    kept = len(url.rstrip(_TRAILING))  # `<URL>: message`, `(<URL>).`: punctuation stays
    return redact_url(url[:kept]) + url[kept:]


def redact(text: object) -> str:
    """Text with every URL redacted and every secret environment value masked."""
    out = _URL.sub(_redact_match, str(text))
    for value in secret_values():
        out = out.replace(value, MASK)
    return out


class RedactFilter(logging.Filter):
    """A logging filter that redacts a record's message, arguments and traceback in place."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        redact_record(record)
        return True


def _redacted_value(value: Any) -> Any:
    """A log argument redacted; left as it is (type included) when it holds no secret."""
    if value is None or isinstance(value, int | float):
        return value  # `%d` and `%.2f` keep working
    text = str(value)
    masked = redact(text)
    return value if masked == text else masked


def redact_record(record: logging.LogRecord) -> logging.LogRecord:
    """Redact a record's message, arguments, traceback and stack in place (idempotent).

    The arguments stay arguments (formatters such as uvicorn's access log unpack them); only
    those that hold a URL or a secret are replaced by their redacted text.
    """
    if getattr(record, "_dlops_redacted", False):
        return record
    record.msg = _redacted_value(record.msg)
    if isinstance(record.args, dict):
        record.args = {k: _redacted_value(v) for k, v in record.args.items()}
    elif isinstance(record.args, tuple):
        record.args = tuple(_redacted_value(v) for v in record.args)
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    record._dlops_redacted = True  # type: ignore[attr-defined]
    return record


_installed = False
FILTER = RedactFilter()


def install_handler_filters(*logger_names: str) -> None:
    """Put the redaction filter on every handler of the root logger and of `logger_names`."""
    for name in ("", *logger_names):
        for handler in logging.getLogger(name or None).handlers:
            if FILTER not in handler.filters:
                handler.addFilter(FILTER)


def install_log_redaction(*logger_names: str) -> None:
    """Redact every log record of this process, and every uncaught exception printed.

    Records are redacted when they are created (a record factory), so handlers configured
    later (Prefect configures its own when imported) get redacted records too; the handlers
    that exist now also get the filter. Uncaught exceptions are printed through `redact`.
    """
    global _installed
    install_handler_filters(*logger_names)
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        return redact_record(make_record(*args, **kwargs))

    logging.setLogRecordFactory(factory)

    def excepthook(kind: type[BaseException], exc: BaseException, tb: Any) -> None:
        sys.stderr.write(redact("".join(traceback.format_exception(kind, exc, tb))))

    sys.excepthook = excepthook
    _installed = True
