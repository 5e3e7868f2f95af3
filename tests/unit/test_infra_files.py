"""infra/ for machines beyond this one: never built or applied here, so parsed and checked.

compose.yaml names every service with its image, command, ports and health check; every
Kubernetes manifest parses and is well-formed; credentials are only ever references; the
pipeline image pins the CPU torch before it installs the project.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"
K8S = INFRA / "k8s"
SERVICES = {"postgres", "mlflow", "prefect-server", "prefect-worker", "serving"}


@pytest.fixture
def _single_thread():
    """No torch in this module (the suite-wide fixture imports it)."""


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def _command(service: dict) -> list[str]:
    cmd = service.get("command", [])
    return cmd.split() if isinstance(cmd, str) else list(cmd)


def _health_test(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test) if isinstance(test, list) else test


def test_compose_names_every_service(compose):
    assert SERVICES <= set(compose["services"])
    for name in SERVICES:
        service = compose["services"][name]
        assert service.get("image"), f"{name} has no image"
        assert _health_test(service).strip(), f"{name} has no health check"


def test_compose_service_essentials(compose):
    s = compose["services"]
    assert s["postgres"]["image"].startswith("postgres:")
    assert "pg_isready" in _health_test(s["postgres"])

    # mlflow: the image's start script (basic auth, proxied artifacts) on loopback port 5000.
    assert _command(s["mlflow"]) == ["dlops-mlflow-server"]
    assert s["mlflow"]["build"]["dockerfile"] == "infra/Dockerfile"
    assert s["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    assert "/health" in _health_test(s["mlflow"])
    env = s["mlflow"]["environment"]
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert env["MLFLOW_ALLOWED_HOSTS"]
    script = (INFRA / "mlflow" / "serve.sh").read_text()
    for flag in ("--app-name basic-auth", "--serve-artifacts", "--allowed-hosts"):
        assert flag in script

    cmd = " ".join(_command(s["prefect-server"]))
    assert cmd.startswith("prefect server start") and "--port 4200" in cmd
    assert s["prefect-server"]["ports"] == ["127.0.0.1:4200:4200"]
    conn = s["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert conn.startswith("postgresql+asyncpg://")
    assert "/api/health" in _health_test(s["prefect-server"])

    cmd = " ".join(_command(s["prefect-worker"]))
    assert cmd.startswith("prefect worker start") and "--type process" in cmd
    assert "--pool dlops" in cmd
    assert s["prefect-worker"]["deploy"]["replicas"] == 2
    worker_env = s["prefect-worker"]["environment"]
    # the contract's keys, as make up writes them (test_infra.py checks those against .env)
    lib = (INFRA / "stack" / "lib.sh").read_text()
    contract = set(re.search(r"CONTRACT_KEYS=\(([^)]*)\)", lib).group(1).split())
    assert len(contract) == 9 and {"MLFLOW_TRACKING_PASSWORD", "DLOPS_REPO"} <= contract
    assert contract <= set(worker_env)
    assert worker_env["PREFECT_API_URL"] == "http://prefect-server:4200/api"

    assert _command(s["serving"]) == ["dlops", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert s["serving"]["build"]["dockerfile"] == "infra/serving.Dockerfile"
    assert s["serving"]["ports"] == ["127.0.0.1:8000:8000"]

    # Published ports never bind beyond loopback.
    for name, service in s.items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def _manifests() -> list[Path]:
    files = sorted(K8S.rglob("*.yaml")) + sorted(K8S.rglob("*.yml"))
    return [p for p in files if not p.name.endswith(".values.yaml")]  # Helm values: no kind


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_k8s_manifest_parses_and_is_named():
    assert _manifests(), "no Kubernetes manifests under infra/k8s"
    kinds = set()
    for path in _manifests():
        docs = _docs(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert doc.get("apiVersion") and doc.get("kind"), f"{path}: apiVersion/kind missing"
            assert doc.get("metadata", {}).get("name"), f"{path}: metadata.name missing"
            kinds.add((doc["kind"], doc["metadata"]["name"]))
    assert {("Deployment", "mlflow"), ("Service", "mlflow"), ("Secret", "dlops-secrets")} <= kinds


def _mlflow_deployment() -> dict:
    (doc,) = [d for d in _docs(K8S / "mlflow" / "deployment.yaml") if d["kind"] == "Deployment"]
    return doc


def test_mlflow_deployment_probes_and_secret_refs():
    (container,) = _mlflow_deployment()["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/health"
    env = {e["name"]: e for e in container["env"]}
    for name in ("DB_PASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "dlops-secrets" and ref["key"], name
        assert "value" not in env[name]
    # The store URIs are composed from the secret-backed variables, never literal passwords.
    assert "$(DB_PASSWORD)" in env["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert "$(DB_PASSWORD)" in env["MLFLOW_AUTH_DATABASE_URI"]["value"]
    service = _docs(K8S / "mlflow" / "service.yaml")[0]
    assert service["spec"]["selector"] == _mlflow_deployment()["spec"]["selector"]["matchLabels"]


def test_prefect_work_pool_template_and_worker_values():
    template = json.loads((K8S / "prefect" / "base-job-template.json").read_text())
    job = template["job_configuration"]["job_manifest"]
    assert job["kind"] == "Job" and template["variables"]["type"] == "object"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "dlops-secrets"
    # Every {{ placeholder }} in the job configuration is a declared variable.
    config = json.dumps(template["job_configuration"])
    placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", config))
    assert placeholders <= set(template["variables"]["properties"])

    values = yaml.safe_load((K8S / "prefect" / "worker.values.yaml").read_text())
    assert values["worker"]["apiConfig"] == "selfHostedServer"
    assert values["worker"]["config"] == {"workPool": "dlops-k8s", "type": "kubernetes"}
    assert values["worker"]["selfHostedServerApiConfig"]["apiUrl"].endswith("/api")


# --- no plaintext password anywhere in infra/ ------------------------------------------------
# A credential is fine as a reference ($VAR, ${VAR...}, $(VAR), a secretKeyRef) or, in a
# *.template.* file only, as the placeholder CHANGE-ME.
_URL_CREDENTIAL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s:/@'\"]+:([^\s@'\"]+)@")
# a key naming a credential (not itself inside a ${...} reference) and its scalar value
_KEY_VALUE = re.compile(
    r"""(?ix)(?<![\w${(.-])[\w.-]*(?:password|passwd|secret|token)[\w.-]*["']?\s*[:=]\s*["']?
    ([^\s"',}]*)"""
)
_REFERENCE = re.compile(r"^(\$\{?\w|\$\(|\{|\[)")  # $VAR ${VAR} $(VAR) {{ x }}, {...}, [...]


def _plaintext_credentials(text: str, template: bool = False, prose: bool = False) -> list[str]:
    found = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("#"):
            continue
        values = _URL_CREDENTIAL.findall(line) + ([] if prose else _KEY_VALUE.findall(line))
        for value in values:
            if not value or _REFERENCE.match(value):
                continue
            if template and value == "CHANGE-ME":
                continue
            found.append(f"{lineno}: {line.strip()}")
    return found


def test_the_plaintext_check_catches_passwords():
    assert _plaintext_credentials("POSTGRES_PASSWORD: hunter2")
    assert _plaintext_credentials('  "MLFLOW_TRACKING_PASSWORD=s3cr3t"')
    assert _plaintext_credentials("uri: postgresql://dlops:hunter2@db:5432/mlflow")
    assert _plaintext_credentials("db-password: CHANGE-ME")  # outside a template
    assert not _plaintext_credentials("db-password: CHANGE-ME", template=True)
    assert not _plaintext_credentials("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}")
    assert not _plaintext_credentials(
        "value: postgresql+psycopg2://$(DB_USER):$(DB_PASSWORD)@pg/x"
    )
    assert not _plaintext_credentials('echo "DB_PASSWORD=$(gen_secret)"')
    assert not _plaintext_credentials("admin_password = $MLFLOW_ADMIN_PASSWORD")
    assert not _plaintext_credentials("x: postgresql://u:${PW:?set PW}@pg/db")
    assert not _plaintext_credentials("valueFrom: {secretKeyRef: {name: s, key: db-password}}")
    assert _plaintext_credentials("see postgresql://u:hunter2@pg/db", prose=True)


def test_no_plaintext_password_in_infra():
    files = [p for p in INFRA.rglob("*") if p.is_file()]
    assert files
    offenders = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits = _plaintext_credentials(text, ".template." in path.name, path.suffix == ".md")
        offenders += [f"{path.relative_to(INFRA)}:{hit}" for hit in hits]
    assert offenders == []


def test_dockerfile_pins_cpu_torch_before_the_project():
    lines = (INFRA / "Dockerfile").read_text().splitlines()

    def where(pattern: str) -> list[int]:
        return [i for i, line in enumerate(lines) if re.search(pattern, line)]

    assert lines[where(r"^FROM ")[0]] == "FROM python:3.11-slim"
    torch = where(r"pip install .*torch==2\.13\.0")
    assert len(torch) == 1
    assert "--index-url https://download.pytorch.org/whl/cpu" in lines[torch[0]]
    copies, project = where(r"^COPY pyproject\.toml"), where(r"pip install (\.|-e)")
    assert copies and project
    assert torch[0] < copies[0] < project[0]
