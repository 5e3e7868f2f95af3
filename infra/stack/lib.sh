# shellcheck shell=bash
# Shared by up.sh, down.sh and status.sh: the stack's settings, state files and process helpers.
# Everything the stack writes lives under $STACK_DIR (pid files, logs, secrets, artifacts, DVC).

set -Eeuo pipefail
# A command that fails unexpectedly still ends in one line (and make up's rollback).
trap 'die "${BASH_SOURCE[0]##*/} failed at line $LINENO: $BASH_COMMAND"' ERR

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

STACK_DIR="${DLOPS_STACK_DIR:-$ROOT/.dlops/stack}"
ENV_FILE="${DLOPS_ENV_FILE:-$ROOT/.env}"
VENV_BIN="${DLOPS_VENV:-$ROOT/.venv}/bin"
RUN_DIR="$STACK_DIR/run"   # <service>.pid, <service>.lstart, <service>.addr, config.env
LOG_DIR="$STACK_DIR/logs"
SECRETS="$STACK_DIR/secrets.env"
TIMEOUT="${DLOPS_STACK_TIMEOUT:-180}"      # seconds to wait for one service's health
STOP_GRACE="${DLOPS_STOP_GRACE:-5}"       # seconds between the first and second SIGTERM
STOP_TIMEOUT="${DLOPS_STOP_TIMEOUT:-15}"   # seconds between the second SIGTERM and SIGKILL

# The contract's variables (PLAN.md, decision 4): exactly these go to .env.
CONTRACT_KEYS=(MLFLOW_TRACKING_URI MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD
  PREFECT_API_URL DLOPS_OPTUNA_STORAGE DLOPS_DVC_REMOTE DLOPS_DVC_CACHE DLOPS_REPO
  DLOPS_WORK_POOL)

# Nothing leaves the machine.
export DO_NOT_TRACK=true PREFECT_SERVER_ANALYTICS_ENABLED=false MLFLOW_DISABLE_TELEMETRY=true

# A dotenv file without the lines make up writes (the contract's keys and its comment).
without_stack_lines() {
  local IFS='|'
  grep -Ev "^(export +)?(${CONTRACT_KEYS[*]})=|^# dlops stack" "$1" || true
}

die() {
  trap - ERR
  echo "dlops: $*" >&2
  if declare -F on_failure >/dev/null; then on_failure; fi
  exit 1
}

# The settings of this stack: the ones recorded when it was started (while any of its services
# runs, or always with `load_config recorded`), else the environment's with their defaults.
load_config() {
  if [[ -f $RUN_DIR/config.env ]] && { [[ ${1:-} == recorded ]] || any_running; }; then
    # shellcheck disable=SC1091
    source "$RUN_DIR/config.env"
    return
  fi
  MLFLOW_PORT="${DLOPS_MLFLOW_PORT:-5000}"
  PREFECT_PORT="${DLOPS_PREFECT_PORT:-4200}"
  MLFLOW_WORKERS="${DLOPS_MLFLOW_WORKERS:-1}"  # one uvicorn process (threads) suits 2 cores
  MLFLOW_USER="${DLOPS_MLFLOW_ADMIN:-admin}"
  local hosts="127.0.0.1:$MLFLOW_PORT,localhost:$MLFLOW_PORT"
  MLFLOW_ALLOWED_HOSTS="${DLOPS_MLFLOW_ALLOWED_HOSTS:-$hosts}"
  DB_PREFIX="${DLOPS_DB_PREFIX:-dlops}"
  POOL="${DLOPS_WORK_POOL:-dlops}"
  WORKERS="${DLOPS_WORKERS:-2}"
  PG_HOST="${DLOPS_PG_HOST:-127.0.0.1}"
  PG_PORT="${DLOPS_PG_PORT:-5432}"
  PG_SUPERUSER="${DLOPS_PG_SUPERUSER:-postgres}"
  REPO="${DLOPS_REPO:-$(git -C "$ROOT" rev-parse --show-toplevel 2>/dev/null || echo "$ROOT")}"
}

save_config() {
  mkdir -p "$RUN_DIR"
  local v
  {
    for v in MLFLOW_PORT PREFECT_PORT MLFLOW_WORKERS MLFLOW_USER MLFLOW_ALLOWED_HOSTS DB_PREFIX \
      POOL WORKERS PG_HOST PG_PORT PG_SUPERUSER REPO; do
      printf '%s=%q\n' "$v" "${!v}"
    done
  } >"$RUN_DIR/config.env"
}

# Service names in start order; stopped in reverse.
services() {
  local i
  echo mlflow prefect-server
  for ((i = 1; i <= ${WORKERS:-2}; i++)); do echo "worker-$i"; done
}

worker_name() { echo "$POOL-$1"; }   # worker-1 -> dlops-worker-1, its name in the pool

# --- processes -------------------------------------------------------------------------------

alive() {   # a live (not zombie) process
  local s
  s="$(ps -o stat= -p "$1" 2>/dev/null)" || return 1
  [[ -n $s && $s != Z* ]]
}

any_alive() {
  local p
  for p in "$@"; do if alive "$p"; then return 0; fi; done
  return 1
}

lstart() { { ps -o lstart= -p "$1" 2>/dev/null || true; } | tr -s ' '; }

# The pid of a service we started, if that very process still runs (pid and start time match).
service_pid() {
  local pidf="$RUN_DIR/$1.pid" pid
  [[ -f $pidf ]] || return 1
  pid="$(cat "$pidf")"
  [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" || return 1
  [[ "$(lstart "$pid")" == "$(cat "$RUN_DIR/$1.lstart" 2>/dev/null)" ]] || return 1
  echo "$pid"
}

any_running() {
  local f
  for f in "$RUN_DIR"/*.pid; do
    [[ -e $f ]] || continue
    service_pid "$(basename "$f" .pid)" >/dev/null && return 0
  done
  return 1
}

# Every process of a service: its process group and all descendants (also those that left it).
process_tree() {
  ps -e -o pid=,ppid=,pgid= | awk -v root="$1" '
    { pid[NR] = $1; ppid[NR] = $2; pgid[NR] = $3 }
    END {
      keep[root] = 1
      for (i = 1; i <= NR; i++) if (pgid[i] == root) keep[pid[i]] = 1
      do {
        grown = 0
        for (i = 1; i <= NR; i++)
          if ((ppid[i] in keep) && !(pid[i] in keep)) { keep[pid[i]] = 1; grown = 1 }
      } while (grown)
      for (p in keep) print p
    }'
}

# Start a service in its own session (so its process group id is its pid) with the extra
# environment START_ENV (env(1) arguments) in START_CWD; record its pid and where its log starts.
START_ENV=()
START_CWD=""
start_service() {
  local name="$1"
  shift
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  local log="$LOG_DIR/$name.log"
  echo "--- $(date -u +%FT%TZ) make up" >>"$log"
  wc -c <"$log" | tr -d ' ' >"$RUN_DIR/$name.logpos"
  # setsid, env and bash each exec the next: the service keeps the pid recorded here.
  # shellcheck disable=SC2016
  # fd 9 is make up's lock: the service must not hold it.
  setsid env "${START_ENV[@]}" bash -c 'cd "$1" && shift && exec "$@"' _ \
    "${START_CWD:-$STACK_DIR}" "$@" >>"$log" 2>&1 </dev/null 9>&- &
  local pid=$!
  echo "$pid" >"$RUN_DIR/$name.pid"
  lstart "$pid" >"$RUN_DIR/$name.lstart"
}

# What a service logged since its latest start.
new_log() {
  local pos
  pos="$(cat "$RUN_DIR/$1.logpos" 2>/dev/null || echo 0)"
  tail -c "+$((pos + 1))" "$LOG_DIR/$1.log"
}

# Stop services together: SIGTERM to each one's process group and to its descendants outside
# it; after STOP_GRACE seconds a second SIGTERM to what is left (a Prefect worker stops on its
# second one: its first only interrupts itself, which an idle 3.9 worker can sit on forever);
# after STOP_TIMEOUT more, SIGKILL. Fails if a process survives that. Prints one line each.
stop_services() {
  local svc pid p deadline all=() outside
  local -A stopped=()
  for svc in "$@"; do
    if pid="$(service_pid "$svc")"; then
      stopped[$svc]=1
      kill -TERM -- "-$pid" 2>/dev/null || true
      for p in $(process_tree "$pid"); do
        all+=("$p")
        outside="$(ps -o pgid= -p "$p" 2>/dev/null | tr -d ' ')" || continue
        if [[ $outside != "$pid" ]]; then kill -TERM "$p" 2>/dev/null || true; fi
      done
    fi
  done
  if ((${#all[@]})); then
    deadline=$((SECONDS + STOP_GRACE))
    while ((SECONDS < deadline)) && any_alive "${all[@]}"; do sleep 0.2; done
    for p in "${all[@]}"; do if alive "$p"; then kill -TERM "$p" 2>/dev/null || true; fi; done
    deadline=$((SECONDS + STOP_TIMEOUT))
    while ((SECONDS < deadline)) && any_alive "${all[@]}"; do sleep 0.2; done
    for p in "${all[@]}"; do if alive "$p"; then kill -KILL "$p" 2>/dev/null || true; fi; done
    sleep 0.2
    for p in "${all[@]}"; do
      if alive "$p"; then die "process $p of the stack survived SIGKILL"; fi
    done
  fi
  for svc in "$@"; do
    rm -f "$RUN_DIR/$svc".{pid,lstart,addr,logpos}
    if [[ -n ${stopped[$svc]:-} ]]; then
      printf '%-15s stopped\n' "$svc"
    else
      printf '%-15s was not running\n' "$svc"
    fi
  done
}

port_in_use() {
  if command -v ss >/dev/null; then
    [[ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# --- health ----------------------------------------------------------------------------------

mlflow_up() { curl -fsS -m 3 -o /dev/null "http://127.0.0.1:$MLFLOW_PORT/health" 2>/dev/null; }

prefect_up() {
  [[ "$(curl -fsS -m 3 "http://127.0.0.1:$PREFECT_PORT/api/health" 2>/dev/null)" == true ]]
}

worker_online() {   # the pool lists this worker as ONLINE
  curl -fsS -m 3 -X POST -H 'Content-Type: application/json' \
    -d '{"workers": {"status": {"any_": ["ONLINE"]}}}' \
    "http://127.0.0.1:$PREFECT_PORT/api/work_pools/$POOL/workers/filter" 2>/dev/null |
    grep -q "\"name\": *\"$(worker_name "$1")\""
}

healthy() {
  case "$1" in
    mlflow) mlflow_up ;;
    prefect-server) prefect_up ;;
    worker-*) service_pid "$1" >/dev/null && worker_online "$1" ;;
  esac
}

address() {
  case "$1" in
    mlflow) echo "http://127.0.0.1:$MLFLOW_PORT" ;;
    prefect-server) echo "http://127.0.0.1:$PREFECT_PORT" ;;
    worker-*) echo "pool $POOL as $(worker_name "$1")" ;;
  esac
}
