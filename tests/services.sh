#!/usr/bin/env bash
# The services the integration tests run against, started as real processes on loopback:
#   tansu — a Kafka-compatible broker (crates.io). Its log is kept in memory by default: tansu 0.6's
#   sqlite engine slows down as the log grows (with 1M messages, 660 MB, a consumer fetched
#   nothing in 40 s; in memory the same 1M were served at full speed). The broker-restart test
#   runs its own tansu on sqlite (tests/it/services.rs, PrivateBroker), where persistence is the
#   point. TOKENMETER_TANSU_STORAGE=sqlite://tansu.db picks sqlite here too.
#
#   tests/services.sh up     install what is missing, start everything, print the environment
#   tests/services.sh down   stop everything started by `up`
#   tests/services.sh env    print the environment of running services (eval "$(tests/services.sh env)")
#
# State (data, logs, pid files) lives in $TOKENMETER_SERVICES_DIR (default target/services).
# Ports: $TOKENMETER_TANSU_PORT (default 19092).
set -euo pipefail
cd "$(dirname "$0")/.."

DIR="${TOKENMETER_SERVICES_DIR:-$PWD/target/services}"
TANSU_PORT="${TOKENMETER_TANSU_PORT:-19092}"
TANSU_VERSION="0.6.0"
export PATH="$HOME/.cargo/bin:$PATH"

log() { printf '== %s\n' "$*" >&2; }

install_tansu() {
  if command -v tansu >/dev/null && tansu --version 2>/dev/null | grep -q "$TANSU_VERSION"; then
    return
  fi
  log "installing tansu $TANSU_VERSION (cargo install, about 9 minutes on 2 cores)"
  cargo install tansu --version "$TANSU_VERSION" --locked --features dynostore,libsql
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
}

case "${1:-}" in
  up)
    install_tansu
    start_tansu
    print_env
    ;;
  down)
    stop_pidfile "$DIR/tansu/pid"
    ;;
  env)
    print_env
    ;;
  *)
    echo "usage: $0 up|down|env" >&2
    exit 2
    ;;
esac
