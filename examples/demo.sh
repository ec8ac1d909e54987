#!/usr/bin/env bash
# A live demonstration of tuninetd's main job, in a throwaway network namespace:
# the real daemon on one end of a veth pair, real UDP packets sent into the
# other end, and the start/stop command firing as traffic comes and goes.
# Run as root from the repository (after: bash .ci/install). Takes ~15 s.
set -euo pipefail
cd "$(dirname "$0")/.."

ns="tnd-demo-$$"
work=$(mktemp -d)
daemon_pid=""
cleanup() {
    [[ -n "$daemon_pid" ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
    ip netns delete "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link add tap0 type veth peer name peer0
ip -n "$ns" link set tap0 up
ip -n "$ns" link set peer0 up

cat > "$work/toggle.sh" <<'EOF'
#!/bin/sh
# What a real script would do: bring a tunnel or a service up or down.
echo "==> $1: sensor=$TUNINETD_SENSOR src=${TUNINETD_SRC:-} proto=${TUNINETD_PROTO:-}"
EOF
chmod +x "$work/toggle.sh"

send() {  # $1 packets, one every 0.2 s, from peer0 into tap0
    ip netns exec "$ns" .venv/bin/python - "$1" <<'EOF'
import sys, time
from scapy.all import Ether, IP, UDP, sendp
for _ in range(int(sys.argv[1])):
    sendp(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
          / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(sport=40000, dport=5353) / b"demo",
          iface="peer0", verbose=False)
    time.sleep(0.2)
EOF
}

echo "# tuninetd -i tap0 -f 'udp port 5353' -c toggle.sh -t 2   (in namespace $ns)"
ip netns exec "$ns" .venv/bin/tuninetd \
    -i tap0 -f "udp port 5353" -c "$work/toggle.sh" -t 2 --beat 0.5 --control "$work/ctl.sock" &
daemon_pid=$!
sleep 2
ps -o pid,user,args --ppid "$daemon_pid" -p "$daemon_pid"

echo "# sending 5 packets: start fires on the first"
send 5
echo "# silence: stop fires 2 s after the last packet"
sleep 3.5
echo "# traffic again: a new start"
send 3
kill -USR1 "$daemon_pid"
sleep 0.5
echo "# tuninetd status"
.venv/bin/tuninetd status --control "$work/ctl.sock"
sleep 3
echo "# SIGTERM: clean exit"
kill "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=""
