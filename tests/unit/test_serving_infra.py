"""infra/ for the model server: the image, the compose service and the Kubernetes manifests."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
SERVING = INFRA / "k8s" / "serving"


@pytest.fixture
def _single_thread():
    """No torch in this module (the suite-wide fixture imports it)."""


def _docs(name: str) -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((SERVING / name).read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_serving_deployment_probes_service_and_autoscaler():
    deploy = _docs("deployment.yaml")["Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["command"][:2] == ["dlops", "serve"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    port = container["ports"][0]
    assert (port["name"], port["containerPort"]) == ("http", 8000)
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_URI"]["value"] == "http://mlflow:5000"
    ref = env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] == "dlops-secrets" and "value" not in env["MLFLOW_TRACKING_PASSWORD"]

    service = _docs("service.yaml")["Service"]
    labels = deploy["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == labels
    assert deploy["spec"]["template"]["metadata"]["labels"].items() >= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"

    hpa = _docs("hpa.yaml")["HorizontalPodAutoscaler"]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deploy["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]


def test_serving_image_runs_dlops_serve_and_ships_the_serving_package():
    text = (INFRA / "serving.Dockerfile").read_text()
    assert "torch==2.13.0" in text and "download.pytorch.org/whl/cpu" in text
    assert text.index("torch==2.13.0") < text.index("pip install .")
    assert "COPY serving/ serving/" in text
    (cmd,) = re.findall(r"^CMD (.+)$", text, re.M)
    assert yaml.safe_load(cmd) == ["dlops", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "/health" in text and "USER dlops" in text
    ignore = (INFRA / "serving.Dockerfile.dockerignore").read_text().split()
    assert "!serving/" in ignore and "!params.yaml" in ignore
    # every package the wheel ships is copied into both images (pip install . needs them)
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]
    for dockerfile in ("serving.Dockerfile", "Dockerfile"):
        image = (INFRA / dockerfile).read_text()
        for pkg in packages:
            assert f"COPY {pkg}/ {pkg}/" in image, f"{dockerfile} does not copy {pkg}/"


def test_compose_serving_service_uses_the_serving_image():
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    service = compose["services"]["serving"]
    assert service["build"]["dockerfile"] == "infra/serving.Dockerfile"
    assert (ROOT / service["build"]["dockerfile"]).is_file()
    assert service["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
