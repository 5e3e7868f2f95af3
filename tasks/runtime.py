"""Process-wide settings, set once by each entry point (the `dlops` CLI, `python -m tasks.*`).

- Nothing leaves the machine: every library's telemetry is off, servers bind to loopback.
- The team stack (`make up`) is picked up from the environment or from the ignored `.env` file
  it writes at the project root; values already in the environment win.
- `DLOPS_HOME` names the project checkout (the embedded MLflow store, the Optuna journal and
  the DVC cache live there) even when a run executes in a workspace elsewhere.
- Secrets never reach the logs: every log record and uncaught traceback goes through
  `tasks.redact` (URL passwords, query strings, secret environment values).
Light on purpose: `dlops --help` imports this module, so nothing heavy is imported here.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

# Nothing leaves the machine: every library's telemetry is off, every server on loopback.
LOCAL_ENV = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "true",
    "LITLOGGER_DISABLE": "1",
    # stage progress (logger "dlops") reaches the Prefect UI's run logs
    "PREFECT_LOGGING_EXTRA_LOGGERS": "dlops",
}
ENV_FILE = ".env"
HOME_VAR = "DLOPS_HOME"
LOGGER = "dlops"
# Loggers whose handlers get the redaction filter (records are redacted at creation as well).
REDACTED_LOGGERS = (LOGGER, "prefect", "prefect.flow_runs", "prefect.task_runs")

_done = False


def configure_environment() -> None:
    """Set the local, telemetry-free defaults without overriding what the user set."""
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` holding both params.yaml and dvc.yaml."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "params.yaml").is_file() and (folder / "dvc.yaml").is_file():
            return folder
    raise FileNotFoundError(f"no params.yaml and dvc.yaml in {here} or any folder above it")


def read_env_file(path: str | Path) -> dict[str, str]:
    """KEY=VALUE lines of a dotenv file (comments, blank lines and `export ` allowed)."""
    values: dict[str, str] = {}
    p = Path(path)
    if not p.is_file():
        return values
    for raw in p.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key.strip()] = value
    return values


def load_env_file(root: str | Path) -> dict[str, str]:
    """Put `<root>/.env` into the environment (existing variables win); return what it held."""
    values = read_env_file(Path(root) / ENV_FILE)
    for key, value in values.items():
        os.environ.setdefault(key, value)
    return values


def home() -> Path:
    """The project checkout: `DLOPS_HOME`, else the project root above the current folder."""
    if os.environ.get(HOME_VAR):
        return Path(os.environ[HOME_VAR])
    try:
        return find_project_root()
    except FileNotFoundError:
        return Path.cwd()


def setup(root: str | Path | None = None) -> Path:
    """Once per process: telemetry off, `.env` loaded, `DLOPS_HOME` set, warnings filtered.

    Returns the project checkout.
    """
    global _done
    configure_environment()
    if root is not None:  # the CLI found the checkout: it is the home of this process
        os.environ[HOME_VAR] = str(Path(root).resolve())
    else:
        os.environ.setdefault(HOME_VAR, str(home()))
    load_env_file(os.environ[HOME_VAR])
    from tasks.redact import install_log_redaction

    install_log_redaction(*REDACTED_LOGGERS)
    if not _done:
        # Noise from the stack that says nothing about the user's run.
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*is an invalid version and will not be supported.*")
        warnings.filterwarnings("ignore", ".*Checkpoint directory .* exists and is not empty.*")
        logging.getLogger(LOGGER).setLevel(logging.INFO)
        _done = True
    return Path(os.environ[HOME_VAR])


def set_torch_threads(threads: int) -> None:
    """Intra-op threads for this process (small models run fastest on one)."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
