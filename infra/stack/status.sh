#!/usr/bin/env bash
# `make status`: one line per service of the stack: its address and whether it is up
# (health-checked: MLflow's /health, Prefect's /api/health, each worker ONLINE in its pool).
# shellcheck source=infra/stack/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

load_config recorded

line() { printf '%-15s %-42s %s\n' "$1" "$2" "$3"; }

if pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3; then pg=up; else pg=down; fi
line postgresql "$PG_HOST:$PG_PORT (databases ${DB_PREFIX}_*)" "$pg"
for svc in $(services); do
  if pid="$(service_pid "$svc")"; then
    if healthy "$svc"; then
      state="up (pid $pid)"
    else
      state="NOT healthy (pid $pid; see $LOG_DIR/$svc.log)"
    fi
  else
    state=down
    case $svc in
      mlflow) port="$MLFLOW_PORT" ;;
      prefect-server) port="$PREFECT_PORT" ;;
      *) port="" ;;
    esac
    if [[ -n $port ]] && port_in_use "$port"; then
      state="down (port $port used by another process)"
    fi
  fi
  line "$svc" "$(address "$svc")" "$state"
done
