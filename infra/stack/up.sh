#!/usr/bin/env bash
# `make up`: the team stack as local processes bound to 127.0.0.1 — an MLflow tracking server
# (PostgreSQL backend, proxied artifacts, basic auth), a Prefect server on PostgreSQL, a process
# work pool and its workers — then `.env` with the environment contract (PLAN.md, decision 4).
# Services already running are reported, not restarted. Settings: see infra/README.md.
# shellcheck source=infra/stack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

umask 077
START=$SECONDS
mkdir -p "$STACK_DIR"
exec 9>"$STACK_DIR/.lock"
flock -n 9 || die "another make up/down is running on $STACK_DIR"

load_config

# --- checks: all before anything is started --------------------------------------------------
[[ $DB_PREFIX =~ ^[a-z_][a-z0-9_]{0,40}$ ]] ||
  die "DLOPS_DB_PREFIX=$DB_PREFIX: use lower-case letters, digits and _ (a PostgreSQL name)"
[[ $POOL =~ ^[A-Za-z0-9_-]+$ ]] || die "DLOPS_WORK_POOL=$POOL: use letters, digits, - and _"
[[ $WORKERS =~ ^[1-9][0-9]?$ ]] || die "DLOPS_WORKERS=$WORKERS: a number of workers, 1 to 99"
[[ $MLFLOW_WORKERS =~ ^[1-9][0-9]?$ ]] || die "DLOPS_MLFLOW_WORKERS=$MLFLOW_WORKERS: 1 to 99"
for port in "$MLFLOW_PORT" "$PREFECT_PORT" "$PG_PORT"; do
  [[ $port =~ ^[0-9]+$ ]] && ((port > 0 && port < 65536)) || die "$port is not a TCP port"
done
[[ $MLFLOW_PORT != "$PREFECT_PORT" ]] ||
  die "DLOPS_MLFLOW_PORT and DLOPS_PREFECT_PORT are both $MLFLOW_PORT"
for tool in curl psql pg_isready setsid ps flock; do
  command -v "$tool" >/dev/null || die "$tool not found on PATH (needed by make up)"
done
for tool in mlflow prefect; do
  [[ -x $VENV_BIN/$tool ]] || die "$VENV_BIN/$tool not found: run make install first"
done

declare -A RUNNING=()
for svc in $(services); do
  if pid="$(service_pid "$svc")"; then RUNNING[$svc]=$pid; fi
done
check_port() {   # $1 service, $2 port, $3 the variable that sets it
  [[ -n ${RUNNING[$1]:-} ]] && return 0
  if port_in_use "$2"; then
    die "port $2 ($1) is already in use by another process: free it or set $3"
  fi
}
check_port mlflow "$MLFLOW_PORT" DLOPS_MLFLOW_PORT
check_port prefect-server "$PREFECT_PORT" DLOPS_PREFECT_PORT
pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 5 ||
  die "PostgreSQL is not reachable at $PG_HOST:$PG_PORT (set DLOPS_PG_HOST/DLOPS_PG_PORT)"

((${#RUNNING[@]})) || save_config

# --- rollback: a failed make up stops what it started ----------------------------------------
STARTED=()
on_failure() {
  unset -f on_failure
  ((${#STARTED[@]} == 0)) || stop_services "${STARTED[@]}" >/dev/null || true
}
trap 'die "make up interrupted: stopped what it had started"' INT TERM

# --- secrets (generated once, kept in the stack folder, mode 600) -----------------------------
psql_super() {
  PGOPTIONS='-c client_min_messages=warning' psql -X -q -A -t -v ON_ERROR_STOP=1 \
    -h "$PG_HOST" -p "$PG_PORT" -U "$PG_SUPERUSER" "$@"
}
db_exists() {
  [[ "$(psql_super -d postgres -c "SELECT 1 FROM pg_database WHERE datname = '$1'")" == 1 ]]
}
gen_secret() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }

ROLE="$DB_PREFIX"
DBS=("${DB_PREFIX}_mlflow" "${DB_PREFIX}_mlflow_auth" "${DB_PREFIX}_prefect" "${DB_PREFIX}_optuna")
if [[ ! -f $SECRETS ]]; then
  # MLflow keeps the admin password it was first started with in its auth database.
  if db_exists "${DB_PREFIX}_mlflow_auth"; then
    die "database ${DB_PREFIX}_mlflow_auth exists but $SECRETS (its admin password) is" \
      "missing: restore it, or drop the stack's databases with make down PURGE=1"
  fi
  {
    echo "DB_PASSWORD=$(gen_secret)"
    echo "MLFLOW_ADMIN_PASSWORD=$(gen_secret)"
    echo "MLFLOW_FLASK_SECRET=$(gen_secret)"
  } >"$SECRETS.tmp"
  mv "$SECRETS.tmp" "$SECRETS"
fi
chmod 600 "$SECRETS"
# shellcheck disable=SC1090
source "$SECRETS"

# --- databases: one role owning the stack's databases (kept by make down unless PURGE=1) -------
superuser="$(psql_super -d postgres -c "SELECT rolsuper FROM pg_roles WHERE rolname = '$ROLE'")"
if [[ $superuser == t ]]; then
  die "DLOPS_DB_PREFIX=$DB_PREFIX names an existing superuser role; choose another prefix"
fi
psql_super -d postgres >/dev/null <<SQL ||
\set role '$ROLE'
\set pw '$DB_PASSWORD'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'pw')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', :'role', :'pw') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', d, :'role')
  FROM unnest(ARRAY['${DBS[0]}', '${DBS[1]}', '${DBS[2]}', '${DBS[3]}']) AS d
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = d) \gexec
SQL
  die "could not create the role $ROLE and its databases on $PG_HOST:$PG_PORT"
# Prefect's schema needs pg_trgm (a trusted extension; created here by the superuser to be sure).
psql_super -d "${DB_PREFIX}_prefect" -c 'CREATE EXTENSION IF NOT EXISTS pg_trgm' >/dev/null ||
  die "could not enable pg_trgm in ${DB_PREFIX}_prefect"

pg_url() { echo "$1://$ROLE:$DB_PASSWORD@$PG_HOST:$PG_PORT/$2"; }

# --- the environment contract (PLAN.md, decision 4) -------------------------------------------
MLFLOW_URI="http://127.0.0.1:$MLFLOW_PORT"
PREFECT_API="http://127.0.0.1:$PREFECT_PORT/api"
DVC_REMOTE="$STACK_DIR/dvc/remote"
DVC_CACHE="$STACK_DIR/dvc/cache"
CONTRACT=(
  "MLFLOW_TRACKING_URI=$MLFLOW_URI"
  "MLFLOW_TRACKING_USERNAME=$MLFLOW_USER"
  "MLFLOW_TRACKING_PASSWORD=$MLFLOW_ADMIN_PASSWORD"
  "PREFECT_API_URL=$PREFECT_API"
  "DLOPS_OPTUNA_STORAGE=$(pg_url postgresql+psycopg2 "${DB_PREFIX}_optuna")"
  "DLOPS_DVC_REMOTE=$DVC_REMOTE"
  "DLOPS_DVC_CACHE=$DVC_CACHE"
  "DLOPS_REPO=$REPO"
  "DLOPS_WORK_POOL=$POOL"
)
mkdir -p "$DVC_REMOTE" "$DVC_CACHE" "$STACK_DIR/mlflow/artifacts" "$STACK_DIR/prefect"

# --- services ---------------------------------------------------------------------------------
wait_healthy() {   # $1 service
  local svc="$1" pid t0=$SECONDS
  pid="$(cat "$RUN_DIR/$svc.pid")"
  # A worker's name may still be ONLINE from its previous process: also wait for its log line.
  until { [[ $svc != worker-* ]] || new_log "$svc" | grep -q "Worker '.*' started"; } &&
    healthy "$svc"; do
    alive "$pid" || die "$svc exited during start-up; see $LOG_DIR/$svc.log"
    ((SECONDS - t0 < TIMEOUT)) || die "$svc not healthy after ${TIMEOUT}s; see $LOG_DIR/$svc.log"
    sleep 0.5
  done
  address "$svc" >"$RUN_DIR/$svc.addr"
  printf '%-15s started          %s (ready after %ss)\n' "$svc" "$(address "$svc")" \
    "$((SECONDS - START))"
}

report_running() {
  local state="already running"
  healthy "$1" || state="running, NOT healthy (see $LOG_DIR/$1.log)"
  printf '%-15s %s  %s (pid %s)\n' "$1" "$state" "$(address "$1")" "${RUNNING[$1]}"
}

start_mlflow() {
  cat >"$STACK_DIR/mlflow/basic_auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = $(pg_url postgresql+psycopg2 "${DB_PREFIX}_mlflow_auth")
admin_username = $MLFLOW_USER
admin_password = $MLFLOW_ADMIN_PASSWORD
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
  START_ENV=(
    -u MLFLOW_AUTH_ADMIN_USERNAME -u MLFLOW_AUTH_ADMIN_PASSWORD -u MLFLOW_TRACKING_URI
    "MLFLOW_AUTH_CONFIG_PATH=$STACK_DIR/mlflow/basic_auth.ini"
    "MLFLOW_FLASK_SERVER_SECRET_KEY=$MLFLOW_FLASK_SECRET"
    "MLFLOW_BACKEND_STORE_URI=$(pg_url postgresql+psycopg2 "${DB_PREFIX}_mlflow")"
    # MLflow's GenAI job runner (four more processes) does nothing for dlops.
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=${DLOPS_MLFLOW_JOB_EXECUTION:-false}"
  )
  start_service mlflow "$VENV_BIN/mlflow" server --host 127.0.0.1 --port "$MLFLOW_PORT" \
    --workers "$MLFLOW_WORKERS" --app-name basic-auth --allowed-hosts "$MLFLOW_ALLOWED_HOSTS" \
    --serve-artifacts --artifacts-destination "$STACK_DIR/mlflow/artifacts"
}

# Prefect's settings for every Prefect process of the stack (its own PREFECT_HOME: no profile).
# env(1) takes its -u options before any assignment.
PREFECT_ENV=(
  -u PREFECT_PROFILE -u PREFECT_API_KEY -u PREFECT_API_DATABASE_CONNECTION_URL
  -u PREFECT_SERVER_DATABASE_CONNECTION_URL
  "PREFECT_HOME=$STACK_DIR/prefect" "PREFECT_API_URL=$PREFECT_API" "PREFECT_CLI_PROMPT=false"
  "PREFECT_SERVER_ANALYTICS_ENABLED=false"
)

start_prefect() {
  START_ENV=("${PREFECT_ENV[@]}"
    "PREFECT_API_DATABASE_CONNECTION_URL=$(pg_url postgresql+asyncpg "${DB_PREFIX}_prefect")")
  start_service prefect-server "$VENV_BIN/prefect" server start --host 127.0.0.1 \
    --port "$PREFECT_PORT" --analytics-off
}

check_pool() {   # the workers create the pool (Prefect handles two racing); refuse a wrong type
  local body
  if body="$(curl -fsS -m 5 "$PREFECT_API/work_pools/$POOL" 2>/dev/null)"; then
    grep -q '"type": *"process"' <<<"$body" ||
      die "work pool $POOL exists on $PREFECT_API with a type other than process"
  fi
}

start_worker() {   # $1 worker-N: flow runs it executes inherit this environment
  mkdir -p "$STACK_DIR/workers/$1"
  START_ENV=("${PREFECT_ENV[@]}" "${CONTRACT[@]}" "PATH=$VENV_BIN:$PATH")
  START_CWD="$STACK_DIR/workers/$1"
  start_service "$1" "$VENV_BIN/prefect" worker start --pool "$POOL" --type process \
    --name "$(worker_name "$1")" --install-policy never
  START_CWD=""
}

# The two servers do not depend on each other: they start together. The workers need only the
# Prefect server to register: they start once it is healthy, while MLflow may still be starting;
# make up returns when every service is healthy.
for svc in prefect-server mlflow; do
  if [[ -n ${RUNNING[$svc]:-} ]]; then
    report_running "$svc"
    continue
  fi
  case $svc in
    mlflow) start_mlflow ;;
    prefect-server) start_prefect ;;
  esac
  STARTED+=("$svc")
done
if [[ -z ${RUNNING[prefect-server]:-} ]]; then wait_healthy prefect-server; fi

check_pool
new_workers=()
for svc in $(services); do
  [[ $svc == worker-* ]] || continue
  if [[ -n ${RUNNING[$svc]:-} ]]; then
    report_running "$svc"
  else
    start_worker "$svc"
    STARTED+=("$svc")
    new_workers+=("$svc")
  fi
done
if [[ -z ${RUNNING[mlflow]:-} ]]; then wait_healthy mlflow; fi
# Each worker is up once it said so and the pool lists it ONLINE.
for svc in "${new_workers[@]}"; do wait_healthy "$svc"; done

# --- .env: the contract's variables; lines of the user's own in that file are kept ------------
write_env_file() {
  local mode=created tmp="$ENV_FILE.$$.tmp"
  if [[ -f $RUN_DIR/envfile && "$(sed -n 2p "$RUN_DIR/envfile")" == "$ENV_FILE" ]]; then
    mode="$(sed -n 1p "$RUN_DIR/envfile")"
  elif [[ -e $ENV_FILE ]]; then
    mode=merged
  fi
  {
    if [[ -f $ENV_FILE ]]; then without_stack_lines "$ENV_FILE"; fi
    echo "# dlops stack: written by make up ($STACK_DIR), removed by make down"
    printf '%s\n' "${CONTRACT[@]}"
  } >"$tmp"
  chmod 600 "$tmp"
  mv "$tmp" "$ENV_FILE"
  printf '%s\n%s\n' "$mode" "$ENV_FILE" >"$RUN_DIR/envfile"
}
write_env_file
STARTED=()
echo "env file       $ENV_FILE (MLflow login: $MLFLOW_USER, password in that file)"
