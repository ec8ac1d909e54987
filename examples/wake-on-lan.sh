#!/bin/sh
# wake-on-lan.sh - wakes a sleeping machine when traffic for it appears.
#
# What it does
#   start  sends a Wake-on-LAN magic packet (6 bytes 0xff, then the MAC 16
#          times) to $WOL_MAC: with wakeonlan or etherwake when installed,
#          else with python3's standard library as a UDP broadcast to port
#          $WOL_PORT on $WOL_IFACE's broadcast address. With $WOL_HOST set and
#          answering a ping, the machine is awake already and nothing is sent.
#   stop   nothing (the machine goes back to sleep by its own rules).
#   Exit 0 on success or nothing to do; 1 on failure; 2 on bad usage or
#   settings.
#
# What to set (edit the defaults below, or set them in the environment
# tuninetd runs with):
#   WOL_MAC    the sleeping machine's MAC address, aa:bb:cc:dd:ee:ff [required]
#   WOL_IFACE  the interface on its LAN (empty: the broadcast 255.255.255.255
#              goes where the routing table sends it)
#   WOL_PORT   UDP port of the magic packet (default 9, "discard")
#   WOL_HOST   its address, to skip the packet when it answers a ping (optional)
#   WOL_TOOL   auto (default), wakeonlan, etherwake or python3
#
# How to call it from tuninetd: a sleeping machine answers no ARP, so the
# neighbours' ARP requests for its address are the trigger:
#     tuninetd -i eth0 -f "arp and dst host 192.168.1.20" -c /usr/local/sbin/wake-on-lan.sh -t 60 -d
set -u

WOL_MAC=${WOL_MAC:-}
WOL_IFACE=${WOL_IFACE:-}
WOL_PORT=${WOL_PORT:-9}
WOL_HOST=${WOL_HOST:-}
WOL_TOOL=${WOL_TOOL:-auto}

die() { echo "wake-on-lan: $*" >&2; exit "${2:-1}"; }

# The broadcast address of $WOL_IFACE (255.255.255.255 when it has none).
broadcast() {
    brd=""
    if [ -n "$WOL_IFACE" ]; then
        brd=$(ip -4 -o addr show dev "$WOL_IFACE" 2>/dev/null |
            awk '{ for (i = 1; i < NF; i++) if ($i == "brd") { print $(i + 1); exit } }')
    fi
    echo "${brd:-255.255.255.255}"
}

send_python() {
    # argv: MAC, broadcast address, port, interface ("" for none).
    python3 -c 'import socket, sys
mac = bytes.fromhex(sys.argv[1].replace(":", "").replace("-", ""))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
if sys.argv[4]:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, sys.argv[4].encode())
s.sendto(b"\xff" * 6 + mac * 16, (sys.argv[2], int(sys.argv[3])))' \
        "$WOL_MAC" "$(broadcast)" "$WOL_PORT" "$WOL_IFACE"
}

wake() {
    echo "$WOL_MAC" | grep -qE '^([0-9A-Fa-f]{2}[:-]){5}[0-9A-Fa-f]{2}$' ||
        die "WOL_MAC '$WOL_MAC': expected a MAC address like aa:bb:cc:dd:ee:ff" 2
    case $WOL_PORT in
    '' | *[!0-9]*) die "WOL_PORT '$WOL_PORT': expected a port number" 2 ;;
    esac
    if [ -n "$WOL_HOST" ] && command -v ping >/dev/null 2>&1 &&
        ping -c 1 -W 1 "$WOL_HOST" >/dev/null 2>&1; then
        echo "wake-on-lan: $WOL_HOST is awake already"
        return 0
    fi
    tool=$WOL_TOOL
    if [ "$tool" = auto ]; then
        for tool in wakeonlan etherwake python3; do
            command -v "$tool" >/dev/null 2>&1 && break
        done
    fi
    case $tool in
    wakeonlan) wakeonlan -i "$(broadcast)" -p "$WOL_PORT" "$WOL_MAC" >/dev/null ;;
    etherwake) etherwake ${WOL_IFACE:+-i "$WOL_IFACE"} -b "$WOL_MAC" ;;
    python3) send_python ;;
    *) die "WOL_TOOL '$WOL_TOOL': expected auto, wakeonlan, etherwake or python3" 2 ;;
    esac || die "sending the magic packet to $WOL_MAC failed"
    echo "wake-on-lan: magic packet sent to $WOL_MAC"
}

case ${1:-} in
start) wake ;;
stop) exit 0 ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
