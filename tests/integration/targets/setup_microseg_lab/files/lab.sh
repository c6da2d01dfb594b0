#!/usr/bin/env bash
# Integration-test lab: bridge msitbr, namespaces msit-a (198.18.210.10) and msit-b
# (198.18.210.20) on veths msita/msitb, a TCP echo server on port 7000 in each.
# up | down | probe FROM TO_ADDR PORT (prints ok or fail). Processes are stopped by pid.
set -euo pipefail
RUN=/run/microseg-it
declare -A ADDR=([a]=198.18.210.10 [b]=198.18.210.20)

server='import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7000)); s.listen(16)
while True:
    c, _ = s.accept(); c.sendall(c.recv(64)); c.close()'

case "${1:-}" in
  up)
    mkdir -p "$RUN"
    ip link show msitbr >/dev/null 2>&1 || ip link add msitbr type bridge
    sysctl -qw net.ipv6.conf.msitbr.disable_ipv6=1
    ip link set msitbr up
    for n in a b; do
      ip netns list | grep -qx "msit-$n\( .*\)\?" || ip netns add "msit-$n"
      if ! ip link show "msit$n" >/dev/null 2>&1; then
        ip link add "msit$n" type veth peer name eth0 netns "msit-$n"
        sysctl -qw "net.ipv6.conf.msit$n.disable_ipv6=1"
        ip netns exec "msit-$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
        ip link set "msit$n" master msitbr up
        ip -n "msit-$n" addr add "${ADDR[$n]}/24" dev eth0
        ip -n "msit-$n" link set eth0 up
        ip -n "msit-$n" link set lo up
      fi
      if ! { [ -f "$RUN/$n.pid" ] && kill -0 "$(cat "$RUN/$n.pid")" 2>/dev/null; }; then
        setsid ip netns exec "msit-$n" python3 -c "$server" >/dev/null 2>&1 </dev/null &
        echo $! > "$RUN/$n.pid"
      fi
    done
    sleep 0.5
    ;;
  down)
    for n in a b; do
      if [ -f "$RUN/$n.pid" ]; then kill "$(cat "$RUN/$n.pid")" 2>/dev/null || true; rm -f "$RUN/$n.pid"; fi
      ip link del "msit$n" 2>/dev/null || true
      ip netns del "msit-$n" 2>/dev/null || true
    done
    ip link del msitbr 2>/dev/null || true
    # the directory holds this script: teardown.yml removes it
    ;;
  probe)
    if ip netns exec "msit-$2" python3 -c "
import socket, sys
try:
    c = socket.create_connection(('$3', $4), 1); c.sendall(b'hi'); sys.exit(0 if c.recv(8) == b'hi' else 1)
except OSError:
    sys.exit(1)"; then echo ok; else echo fail; fi
    ;;
  *) echo "usage: $0 up|down|probe" >&2; exit 2 ;;
esac
