#!/usr/bin/env bash
# The services the integration tests run against, started as real processes on loopback:
#   tansu — a Kafka-compatible broker (crates.io). Its log is kept in memory by default: tansu 0.6's
#   sqlite engine slows down as the log grows (with 1M messages, 660 MB, a consumer fetched
#   nothing in 40 s; in memory the same 1M were served at full speed). The broker-restart test
#   runs its own tansu on sqlite (tests/it/services.rs, PrivateBroker), where persistence is the
#   point. TOKENMETER_TANSU_STORAGE=sqlite://tansu.db picks sqlite here too.
#   clickhouse-server — Debian's package (18.16), run as this user with its data, logs and tmp
#   under the state directory, on loopback ports only. The system service is never started.
#
#   tests/services.sh up     install what is missing, start everything, print the environment
#   tests/services.sh down   stop everything started by `up`
#   tests/services.sh env    print the environment of running services (eval "$(tests/services.sh env)")
#
# State (data, logs, pid files) lives in $TOKENMETER_SERVICES_DIR (default target/services).
# Ports: $TOKENMETER_TANSU_PORT (default 19092), $TOKENMETER_CLICKHOUSE_HTTP_PORT (default 18123),
# $TOKENMETER_CLICKHOUSE_TCP_PORT (default 19000).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${TOKENMETER_SERVICES_DIR:-$PWD/target/services}"
TANSU_PORT="${TOKENMETER_TANSU_PORT:-19092}"
TANSU_VERSION="0.6.0"
CH_HTTP_PORT="${TOKENMETER_CLICKHOUSE_HTTP_PORT:-18123}"
CH_TCP_PORT="${TOKENMETER_CLICKHOUSE_TCP_PORT:-19000}"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '== %s\n' "$*" >&2; }

install_tansu() {
  if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return
  fi
  log "installing tansu $TANSU_VERSION (cargo install, about 9 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
}

install_clickhouse() {
  if command -v clickhouse-server >/dev/null && command -v clickhouse-client >/dev/null; then
    return
  fi
  log "installing clickhouse-server and clickhouse-client (Debian packages)"
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  # policy-rc.d or no systemd: the package's own service is not started, which is what we want.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq clickhouse-server clickhouse-client >&2
}

# Wait until a TCP port accepts connections, or fail after $2 seconds.
wait_port() {
  local port=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  return 1
}

start_tansu() {
  local d="$DIR/tansu"
  mkdir -p "$d"
  if [ -f "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then
    log "tansu already running (pid $(cat "$d/pid")) on 127.0.0.1:$TANSU_PORT"
    return
  fi
  # Fresh log for each `up`: tests make their own topics, but a stale group or topic from an
  # earlier run must not leak into this one.
  rm -f "$d"/tansu.db*
  local storage="${TOKENMETER_TANSU_STORAGE:-memory://tansu/}"
  log "starting tansu on 127.0.0.1:$TANSU_PORT (storage $storage, log $d/tansu.log)"
  # tansu resolves sqlite:// paths relative to its working directory.
  (cd "$d" && exec tansu broker \
    --listener-url "tcp://127.0.0.1:$TANSU_PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$TANSU_PORT" \
    --storage-engine "$storage" >>"$d/tansu.log" 2>&1) &
  echo $! >"$d/pid"
  if ! wait_port "$TANSU_PORT" 30; then
    log "tansu did not open port $TANSU_PORT within 30 s; its log:"
    tail -20 "$d/tansu.log" >&2
    exit 1
  fi
  # The broker answers metadata once its storage is open: make the default topics.
  for t in usage.events:8 usage.events.dlq:1; do
    tansu topic create "${t%%:*}" --partitions "${t##*:}" --broker "tcp://127.0.0.1:$TANSU_PORT" >/dev/null 2>&1 || true
  done
}

# GET a path from a loopback HTTP port with bash alone (no curl on a bare machine).
http_get() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1" && printf 'GET %s HTTP/1.0\r\n\r\n' "$2" >&3 && cat <&3) 2>/dev/null
}

start_clickhouse() {
  local d="${1:-$DIR/clickhouse}"
  if [ -f "$d/pid" ] && kill -0 "$(cat "$d/pid")" 2>/dev/null; then
    log "clickhouse-server already running (pid $(cat "$d/pid")) on 127.0.0.1:$CH_HTTP_PORT"
    return
  fi
  # Fresh data for each `up`, like the broker.
  rm -rf "$d"
  mkdir -p "$d/data" "$d/tmp" "$d/user_files" "$d/format_schemas" "$d/log"
  # The packaged configuration with every path under $d, loopback only, and our ports.
  sed -e "s|/var/lib/clickhouse/tmp/|$d/tmp/|; s|/var/lib/clickhouse/user_files/|$d/user_files/|" \
      -e "s|/var/lib/clickhouse/format_schemas/|$d/format_schemas/|; s|/var/lib/clickhouse/|$d/data/|" \
      -e "s|/var/log/clickhouse-server/|$d/log/|g" \
      -e "s|<http_port>8123</http_port>|<http_port>$CH_HTTP_PORT</http_port>|" \
      -e "s|<tcp_port>9000</tcp_port>|<tcp_port>$CH_TCP_PORT</tcp_port>|" \
      -e "s|<interserver_http_port>9009</interserver_http_port>||" \
      -e "s|<listen_host>::1</listen_host>||" \
      -e "s|<level>warning</level>|<level>information</level>|" \
      /etc/clickhouse-server/config.xml >"$d/config.xml"
  cp /etc/clickhouse-server/users.xml "$d/users.xml"
  log "starting clickhouse-server on 127.0.0.1:$CH_HTTP_PORT (http) and :$CH_TCP_PORT (native), data in $d"
  (cd "$d" && exec clickhouse-server --config-file="$d/config.xml" >>"$d/log/stdout.log" 2>&1) &
  echo $! >"$d/pid"
  local i
  for ((i = 0; i < 300; i++)); do
    if http_get "$CH_HTTP_PORT" /ping | grep -q '^Ok\.'; then return 0; fi
    if ! kill -0 "$(cat "$d/pid")" 2>/dev/null; then break; fi
    sleep 0.1
  done
  log "clickhouse-server did not answer on port $CH_HTTP_PORT within 30 s; its log:"
  tail -20 "$d/log/clickhouse-server.err.log" "$d/log/stdout.log" >&2 || true
  exit 1
}

stop_pidfile() {
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

print_env() {
  echo "export TOKENMETER_TEST_BROKERS=127.0.0.1:$TANSU_PORT"
  echo "export TOKENMETER_TEST_TANSU=$(command -v tansu)"
  echo "export TOKENMETER_TEST_CLICKHOUSE=http://127.0.0.1:$CH_HTTP_PORT"
  echo "export TOKENMETER_TEST_CLICKHOUSE_TCP_PORT=$CH_TCP_PORT"
  echo "export TOKENMETER_TEST_CLICKHOUSE_SERVER=$(command -v clickhouse-server)"
  echo "export TOKENMETER_TEST_CLICKHOUSE_CLIENT=$(command -v clickhouse-client)"
}

case "${1:-}" in
  up)
    install_tansu
    install_clickhouse
    start_tansu
    start_clickhouse
    print_env
    ;;
  down)
    stop_pidfile "$DIR/tansu/pid"
    stop_pidfile "$DIR/clickhouse/pid"
    ;;
  env)
    print_env
    ;;
  clickhouse-at)
    # A private server for a test that stops and restarts it: clickhouse-at DIR HTTP_PORT TCP_PORT.
    # Its config is DIR/config.xml and its pid DIR/pid; restart it with
    # `clickhouse-server --config-file=DIR/config.xml` from DIR.
    install_clickhouse
    CH_HTTP_PORT=$3 CH_TCP_PORT=$4 start_clickhouse "$2"
    ;;
  *)
    echo "usage: $0 up|down|env|clickhouse-at DIR HTTP_PORT TCP_PORT" >&2
    exit 2
    ;;
esac
