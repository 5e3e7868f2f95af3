#!/bin/sh
# The MLflow tracking server in a container (compose.yaml, k8s/mlflow): basic auth with its user
# store on PostgreSQL, the backend store on PostgreSQL, proxied artifacts. Every secret comes from
# the environment (compose: variables; Kubernetes: secretKeyRef); the auth ini is written here,
# mode 600, because MLflow reads the auth database URI from that file only.
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?a postgresql+psycopg2:// URI}"
: "${MLFLOW_AUTH_DATABASE_URI:?a postgresql+psycopg2:// URI for the auth database}"
: "${MLFLOW_AUTH_ADMIN_PASSWORD:?the admin password (used on the first start only)}"
: "${MLFLOW_FLASK_SERVER_SECRET_KEY:?the same key on every replica}"
: "${MLFLOW_ALLOWED_HOSTS:?host[:port] names clients use, e.g. mlflow:5000,localhost:5000}"

umask 077
ini="${TMPDIR:-/tmp}/basic_auth.ini"
cat >"$ini" <<INI
[mlflow]
default_permission = READ
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$ini"
# The GenAI job runner (four more processes) does nothing for dlops.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

exec mlflow server \
  --host 0.0.0.0 --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" \
  --app-name basic-auth --allowed-hosts "$MLFLOW_ALLOWED_HOSTS" \
  --serve-artifacts --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/mlartifacts}"
