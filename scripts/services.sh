#!/usr/bin/env bash
# The real services the scaled deployment and its tests use: NATS JetStream and ClickHouse,
# on 127.0.0.1, with their data under the project's own dir.
#
#   bash scripts/services.sh start    install (Debian packages) if missing, start, wait until ready
#   bash scripts/services.sh stop     stop both by pid
#   bash scripts/services.sh status   print what runs
#
# Settings (environment): CONVOFLOW_SERVICES_DIR (default .services in the repo),
# NATS_PORT (4222), NATS_MONITOR_PORT (8222), CLICKHOUSE_HTTP_PORT (8123), CLICKHOUSE_TCP_PORT (9000).
set -euo pipefail
cd "$(dirname "$0")/.."

dir=${CONVOFLOW_SERVICES_DIR:-$PWD/.services}
nats_port=${NATS_PORT:-4222}
nats_monitor_port=${NATS_MONITOR_PORT:-8222}
ch_http_port=${CLICKHOUSE_HTTP_PORT:-8123}
ch_tcp_port=${CLICKHOUSE_TCP_PORT:-9000}
nats_pid=$dir/nats/nats.pid
ch_pid=$dir/clickhouse/clickhouse.pid

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
fail() { echo "$1" >&2; exit 1; }

install_missing() {
  local packages=()
  command -v nats-server >/dev/null 2>&1 || packages+=(nats-server)
  command -v clickhouse-server >/dev/null 2>&1 || packages+=(clickhouse-server clickhouse-client)
  if ((${#packages[@]})); then
    echo "installing ${packages[*]} (Debian packages)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${packages[@]}" >/dev/null
  fi
}

wait_for() { # name url seconds
  local deadline=$((SECONDS + $3))
  until curl -fsS -o /dev/null "$2" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      echo "$1 did not become ready at $2 within $3 s; log in $dir" >&2
      return 1
    fi
    sleep 0.2
  done
}

start_nats() {
  if running "$nats_pid"; then return; fi
  mkdir -p "$dir/nats/data"
  setsid nats-server -a 127.0.0.1 -p "$nats_port" -m "$nats_monitor_port" -js -sd "$dir/nats/data" \
    -P "$nats_pid" -l "$dir/nats/nats.log" &
  wait_for "NATS" "http://127.0.0.1:$nats_monitor_port/healthz?js-enabled-only=true" 30
  sleep 0.2
  running "$nats_pid" || fail "NATS did not stay up; is port $nats_port or $nats_monitor_port taken by another server? log: $dir/nats/nats.log"
}

# The packaged config, with paths in our dir, loopback only, and our ports.
clickhouse_config() {
  local root=$dir/clickhouse
  mkdir -p "$root/data/tmp" "$root/data/user_files" "$root/data/format_schemas" "$root/log"
  sed -e "s#/var/lib/clickhouse/#$root/data/#g" \
      -e "s#/var/log/clickhouse-server/#$root/log/#g" \
      -e "s#<http_port>8123</http_port>#<http_port>$ch_http_port</http_port>#" \
      -e "s#<tcp_port>9000</tcp_port>#<tcp_port>$ch_tcp_port</tcp_port>#" \
      -e '/<interserver_http_port>/d' \
      -e '/<listen_host>::1<\/listen_host>/d' \
      -e '/<tcp_port_secure>/d' -e '/<https_port>/d' \
      /etc/clickhouse-server/config.xml > "$root/config.xml"
  cp /etc/clickhouse-server/users.xml "$root/users.xml"
}

start_clickhouse() {
  if running "$ch_pid"; then return; fi
  clickhouse_config
  clickhouse-server --config-file="$dir/clickhouse/config.xml" --daemon --pid-file="$ch_pid"
  wait_for "ClickHouse" "http://127.0.0.1:$ch_http_port/ping" 60
  running "$ch_pid" || fail "ClickHouse did not stay up; is port $ch_http_port or $ch_tcp_port taken by another server? log: $dir/clickhouse/log"
}

stop_one() { # name pidfile
  if running "$2"; then
    local pid
    pid=$(cat "$2")
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    echo "$1 stopped"
  fi
  rm -f "$2"
}

status_one() { # name pidfile address
  if running "$2"; then echo "$1 running (pid $(cat "$2")) at $3"; else echo "$1 stopped"; fi
}

case ${1:-status} in
  start)
    install_missing
    start_nats
    start_clickhouse
    status_one NATS "$nats_pid" "nats://127.0.0.1:$nats_port"
    status_one ClickHouse "$ch_pid" "http://127.0.0.1:$ch_http_port"
    ;;
  stop)
    stop_one NATS "$nats_pid"
    stop_one ClickHouse "$ch_pid"
    ;;
  status)
    status_one NATS "$nats_pid" "nats://127.0.0.1:$nats_port"
    status_one ClickHouse "$ch_pid" "http://127.0.0.1:$ch_http_port"
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
