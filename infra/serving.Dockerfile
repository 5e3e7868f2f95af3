# The dlops model server: `dlops serve` (LitServe) for the registry's @champion, following the
# alias (hot swap on promotion and rollback). compose.yaml's `serving` service and
# k8s/serving/ run it. Build from the repository root:
#   docker build -f infra/serving.Dockerfile -t dlops-serving:0.1.0 .
# (Written and parsed here, never built: no Docker engine or registry is reachable on this machine.)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    LITLOGGER_DISABLE=1

# torch first, pinned to the CPU build (as the Makefile does), then the project.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

WORKDIR /opt/dlops
# params.yaml (its serve: section) and dvc.yaml mark the project root that `dlops` runs from.
COPY pyproject.toml README.md params.yaml dvc.yaml ./
COPY flows/ flows/
COPY tasks/ tasks/
COPY models/ models/
COPY serving/ serving/
RUN pip install . \
    && python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"

RUN useradd --create-home --uid 10001 dlops
USER dlops

# MLFLOW_TRACKING_URI (and MLFLOW_TRACKING_USERNAME/PASSWORD) come from the environment.
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
    CMD python -c "import urllib.request as u; u.urlopen('http://127.0.0.1:8000/health', timeout=3)"
CMD ["dlops", "serve", "--host", "0.0.0.0", "--port", "8000"]
