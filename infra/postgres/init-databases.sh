#!/bin/sh
# Run once by the postgres image on an empty volume (/docker-entrypoint-initdb.d): the role and
# databases `make up` creates on this machine, with the password from the environment.
set -eu
: "${DLOPS_DB_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v pw="$DLOPS_DB_PASSWORD" <<'SQL'
SELECT format('CREATE ROLE dlops LOGIN PASSWORD %L', :'pw') \gexec
CREATE DATABASE mlflow OWNER dlops;
CREATE DATABASE mlflow_auth OWNER dlops;
CREATE DATABASE prefect OWNER dlops;
CREATE DATABASE optuna OWNER dlops;
\c prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
SQL
