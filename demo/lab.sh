#!/usr/bin/env bash
# One-bridge demo lab: three "containers" (network namespaces) on bridge msdemo0.
# Usage: lab.sh up | down | status. Idempotent. Addresses are from 198.18.0.0/15 only.
set -euo pipefail

BRIDGE=msdemo0
RUN=/run/microseg-demo
declare -A ADDR=([web]=198.18.200.10 [db]=198.18.200.20 [other]=198.18.200.30)
PROBE="$(cd "$(dirname "$0")/.." && pwd)/tests/functional/netprobe.py"

up() {
  mkdir -p "$RUN"
  ip link show "$BRIDGE" >/dev/null 2>&1 || ip link add "$BRIDGE" type bridge
  ip link set "$BRIDGE" up
  for name in web db other; do
    ns="msd-$name" host="msd-$name"
    ip netns list | grep -qx "$ns\( .*\)\?" || ip netns add "$ns"
    if ! ip link show "$host" >/dev/null 2>&1; then
      ip link add "$host" type veth peer name eth0 netns "$ns"
      ip link set "$host" master "$BRIDGE" up
      ip -n "$ns" addr add "${ADDR[$name]}/24" dev eth0
      ip -n "$ns" link set eth0 up
      ip -n "$ns" link set lo up
    fi
    for svc in tcp:5432 tcp:80 udp:53; do
      proto="${svc%%:*}" port="${svc##*:}"
      pidfile="$RUN/$name-$proto-$port.pid"
      if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then continue; fi
      setsid ip netns exec "$ns" /usr/bin/python3 "$PROBE" serve "$proto" "$port" >/dev/null 2>&1 &
      echo $! > "$pidfile"
    done
  done
}

down() {
  if [ -d "$RUN" ]; then
    for pidfile in "$RUN"/*.pid; do
      [ -e "$pidfile" ] || continue
      kill "$(cat "$pidfile")" 2>/dev/null || true
      rm -f "$pidfile"
    done
    rmdir "$RUN" 2>/dev/null || true
  fi
  for name in web db other; do
    ip link del "msd-$name" 2>/dev/null || true
    ip netns del "msd-$name" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) ip -br link show master "$BRIDGE" 2>/dev/null || echo "no lab" ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
