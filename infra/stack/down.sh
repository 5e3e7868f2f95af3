#!/usr/bin/env bash
# `make down`: stop exactly what `make up` started (each service's whole process group and its
# descendants, verified gone) and take the stack's entries out of `.env`. The databases are kept
# unless PURGE=1, which also drops the role and deletes the secrets and the MLflow artifacts.
# shellcheck source=infra/stack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if [[ ! -d $STACK_DIR ]]; then
  echo "nothing to stop: no stack at $STACK_DIR"
  [[ ${PURGE:-0} == 1 ]] || exit 0
else
  exec 9>"$STACK_DIR/.lock"
  flock -w 30 9 || die "another make up/down is running on $STACK_DIR"
fi
load_config recorded

# Workers first (they hold flow runs), then the servers; every worker that has a pid file.
workers=()
for f in "$RUN_DIR"/worker-*.pid; do
  if [[ -e $f ]]; then workers+=("$(basename "$f" .pid)"); fi
done
if ((${#workers[@]})); then stop_services "${workers[@]}"; fi
servers=()
for svc in prefect-server mlflow; do
  if [[ -e $RUN_DIR/$svc.pid ]]; then servers+=("$svc"); fi
done
if ((${#servers[@]})); then stop_services "${servers[@]}"; fi
((${#workers[@]} + ${#servers[@]})) || echo "no service of $STACK_DIR was running"

# .env: the stack's lines go; the file too if make up created it and nobody added to it since.
if [[ -f $RUN_DIR/envfile ]]; then
  mode="$(sed -n 1p "$RUN_DIR/envfile")"
  env_file="$(sed -n 2p "$RUN_DIR/envfile")"
  if [[ -f $env_file ]]; then
    tmp="$env_file.$$.tmp"
    (umask 077 && without_stack_lines "$env_file" >"$tmp")
    if [[ $mode == created && ! -s $tmp ]]; then
      rm -f "$tmp" "$env_file"
    else
      mv "$tmp" "$env_file"
    fi
  fi
  rm -f "$RUN_DIR/envfile"
  echo "env file       $env_file: stack entries removed"
fi

if [[ ${PURGE:-0} == 1 ]]; then
  if [[ -n ${DB_PREFIX:-} ]] && pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 5; then
    psql -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_SUPERUSER" -d postgres \
      >/dev/null <<SQL || die "could not drop the databases of $DB_PREFIX"
\set role '$DB_PREFIX'
SELECT format('DROP DATABASE IF EXISTS %I WITH (FORCE)', d)
  FROM unnest(ARRAY['${DB_PREFIX}_mlflow', '${DB_PREFIX}_mlflow_auth', '${DB_PREFIX}_prefect',
                    '${DB_PREFIX}_optuna']) AS d \gexec
SELECT format('DROP ROLE %I', rolname) FROM pg_roles
  WHERE rolname = :'role' AND NOT rolsuper \gexec
SQL
    echo "databases      ${DB_PREFIX}_* and role $DB_PREFIX dropped"
  else
    die "PURGE=1: PostgreSQL is not reachable at $PG_HOST:$PG_PORT; nothing was dropped"
  fi
  # Without their databases these mean nothing; the DVC remote and cache are content-addressed
  # data that committed dvc.lock files refer to, so they stay.
  rm -rf "$STACK_DIR/secrets.env" "$STACK_DIR/mlflow" "$STACK_DIR/prefect" "$RUN_DIR"
  echo "stack folder   secrets, MLflow artifacts and Prefect home removed (logs and DVC kept)"
fi
