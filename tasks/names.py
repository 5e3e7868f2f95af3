"""Whose name is it: a data name (`data.name`, by default a file's stem) belongs to one source.

`a/data.csv` and `b/data.csv` both default to the name `data`, which names the GX suite
(`expectations/data.json`) and the default registered model (`dlops-data`): sharing it would
enforce one source's suite on the other and score one's champion on the other's test split.
A run whose source differs from the one already holding its name is refused before anything is
written, in one line that says to set `data.name` (it renames the suite and the default model
at once; `register.model_name` alone would leave the suite shared).

Who holds a name: the committed suite's recorded source (`meta.dlops.inferred_from.source`)
when there is a suite, since the user reviewed and committed it (`dlops suite init --force`
moves a name to a new location of the same data); else the latest registered version's
`data.source` lineage tag. An explicit `register.model_name` is always checked against the
registry (the suite does not cover it). Sources compare in their redacted, resolved form: an
absolute path (relative ones from the checkout, `tasks.runtime.home()`), or the URL with its
credentials and query string masked.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from tasks.config import ENV_PREFIX, Config, ConfigError, resolve_source
from tasks.redact import redact_url

BUILTIN = "builtin:"
SOURCE_TAG = "data.source"


class NameInUseError(ConfigError):
    """The data name (or the registered model's name) already belongs to another source."""


def source_of(cfg: Config) -> str:
    """The source as the manifest records it: `builtin:<name>` or `data.source`."""
    return cfg.data.source or f"{BUILTIN}{cfg.data.dataset}"


def canonical(source: str) -> str:
    """A source's comparable form: redacted, and an absolute path for local files."""
    if source.startswith(BUILTIN):
        return source
    if source.startswith(ENV_PREFIX):  # the URL it names (a suite records that, redacted)
        try:
            source = resolve_source(source)
        except ValueError:
            return source
    parts = urlsplit(source)
    if parts.scheme == "file":
        source = parts.path
    elif parts.scheme and len(parts.scheme) > 1:  # a URL (one letter: a Windows drive)
        return redact_url(source).rstrip("/")
    path = Path(source).expanduser()
    if not path.is_absolute():
        from tasks.runtime import home

        path = home() / path
    return str(path.resolve()).rstrip("/")


def _registered_source(name: str) -> str | None:
    """The `data.source` tag of the model's latest version; None: no such model (or store)."""
    from tasks import tracking

    uri = tracking.tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return None  # no store yet: nothing registered (and do not create one to look)
    from mlflow.exceptions import MlflowException

    client = tracking.client()
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return None
    if not versions:
        return None
    latest = max(versions, key=lambda mv: int(mv.version))
    return latest.tags.get(SOURCE_TAG)


def check_name(cfg: Config, rehome: bool = False) -> None:
    """Refuse a source whose data name or registered model belongs to another source.

    `rehome` (`dlops suite init --force`): the suite is about to be inferred again from this
    source, which then holds the name; only an explicit `register.model_name` is checked.
    """
    from tasks.validate.suites import recorded_source, suite_path

    mine = source_of(cfg)
    here = canonical(mine)
    name = cfg.data.name
    path = suite_path(cfg)
    theirs = None if rehome else recorded_source(path)
    if rehome and cfg.register_.model_name is None:
        return
    if theirs is not None and canonical(theirs) != here:
        raise NameInUseError(
            f"data.name {name!r} is taken: its suite {path} was inferred from "
            f"{redact_url(theirs)}, this run reads {redact_url(mine)}; set data.name to give "
            "this data its own suite and model (`dlops suite init --force` if it is the same "
            "data, moved)"
        )
    explicit = cfg.register_.model_name is not None
    if theirs is not None and not explicit:
        return  # the suite holds the name, and with it the default model's
    model = cfg.model_name
    registered = _registered_source(model)
    if registered is not None and canonical(registered) != here:
        key = "register.model_name" if explicit else "data.name (or register.model_name)"
        raise NameInUseError(
            f"registered model {model!r} holds models of {redact_url(registered)}, this run "
            f"reads {redact_url(mine)}; set {key} to register this data's models apart"
        )
