"""Redaction of secrets, at one place: URL credentials, query strings and secret env values.

Every URL that is recorded (manifest, lineage tags, MLflow params and tags, dvc.lock, logs,
error messages) goes through `redact_url` or `redact`. A password in `user:pass@host` becomes
`***`, a query string (presigned URLs carry their signature there) becomes `***`, and the values
of secret-looking environment variables (`*_PASSWORD`, `*_TOKEN`, `*_SECRET*`, `*_KEY`) are
replaced wherever they appear in text.
"""

from __future__ import annotations

import os
import re
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`]+")
_SECRET_ENV = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|_KEY$|CREDENTIALS)", re.IGNORECASE)
_MIN_SECRET = 4  # shorter values would mask ordinary words


def redact_url(url: str) -> str:
    """The URL with its password and query string masked; other text is returned as it is."""
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


def secret_values() -> list[str]:
    """Values of secret-looking environment variables, longest first."""
    found = {
        value
        for key, value in os.environ.items()
        if _SECRET_ENV.search(key) and len(value) >= _MIN_SECRET
    }
    return sorted(found, key=len, reverse=True)


def redact(text: object) -> str:
    """Text with every URL redacted and every secret environment value masked."""
    out = _URL.sub(lambda m: redact_url(m.group(0)), str(text))
    for value in secret_values():
        out = out.replace(value, MASK)
    return out
