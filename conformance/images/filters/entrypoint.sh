#!/bin/bash
# filter rspamd | filter clamav: runs one content filter in the foreground and prints
# "filter ready" once its milter port accepts connections.
set -euo pipefail

ready() {
  local port=$1
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "filter ready on port $port"
      return 0
    fi
    sleep 0.1
  done
  echo "filter did not open port $port" >&2
  return 1
}

case "${1:-rspamd}" in
  rspamd)
    rspamd -f -u _rspamd -g _rspamd &
    pid=$!
    ready 11332
    wait "$pid"
    ;;
  clamav)
    clamd -c /etc/clamav/clamd-test.conf &
    clamd_pid=$!
    for _ in $(seq 1 600); do [ -S /run/clamav/clamd.ctl ] && break; sleep 0.1; done
    clamav-milter -c /etc/clamav/clamav-milter-test.conf &
    pid=$!
    ready 7357
    wait -n "$pid" "$clamd_pid"
    ;;
  *)
    echo "usage: filter rspamd|clamav" >&2
    exit 2
    ;;
esac
