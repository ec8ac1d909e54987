#!/usr/bin/env bash
# openvpn-dispatcher.sh - an OpenVPN tunnel brought up on demand by a gateway
# for the machines behind it, their first packets held at prerouting until
# the tunnel is up (tuninetd --hold), so that they take its route.
#
# What it does
#   start  releases $VPN_DEV from tuntapd (which holds it while the tunnel is
#          down), starts `openvpn --config $VPN_CONFIG --dev $VPN_DEV --daemon`
#          and returns once $VPN_PROBE (an address of the far network) is
#          routed through $VPN_DEV. tuninetd then releases the held packets;
#          held at prerouting, they are routed only now, through the tunnel.
#          Already up (its openvpn running): nothing to do.
#   stop   stops that openvpn, then has tuntapd hold $VPN_DEV again.
#   Both exit 0 when there is nothing to do; 1 on failure (with --hold-fail
#   drop, tuninetd then drops what it held: nothing leaks past the tunnel);
#   2 on bad usage.
#
# A dispatcher: one tuninetd per far network, each with its own NFLOG group,
# queue and VPN_* settings (e.g. Environment= in a tuninetd@NAME unit's
# drop-in), so each tunnel comes up for its own traffic only.
#
# What to set: the variables below (edit them here, or set them in the
# environment tuninetd runs with). Needs root, openvpn, iproute2; tuntapd is
# used when installed (HOLD_TUN). The OpenVPN configuration must route
# $VPN_PROBE's network through the tunnel (a `route` line, or pushed).
#
# How to call it from tuninetd: on the gateway, log what the LAN (lan0) sends
# to the far network, then queue it, at prerouting (held at forward or
# output, a packet keeps the route it had: none). The unreachable route keeps
# anything from leaking through the default route while the tunnel is down:
#     ip route add unreachable 192.168.50.0/24 metric 4000
#     iptables -t mangle -A PREROUTING -i lan0 -d 192.168.50.0/24 -m conntrack --ctstate NEW -j NFLOG --nflog-group 2
#     iptables -t mangle -A PREROUTING -i lan0 -d 192.168.50.0/24 -m conntrack --ctstate NEW -j NFQUEUE --queue-num 2 --queue-bypass
#     tuninetd -n 2 --hold 2 --hold-fail drop -c /usr/local/sbin/openvpn-dispatcher.sh -t 600
set -u

VPN_NAME=${VPN_NAME:-site}                                # names the pid files
VPN_CONFIG=${VPN_CONFIG:-/etc/openvpn/client/$VPN_NAME.conf}
VPN_DEV=${VPN_DEV:-tun0}
VPN_PROBE=${VPN_PROBE:-192.168.50.1}                      # an address behind the tunnel
OPENVPN=${OPENVPN:-openvpn}
PIDFILE=${PIDFILE:-/run/openvpn-$VPN_NAME.pid}
HOLD_TUN=${HOLD_TUN:-auto}                                # tuntapd holds the device while down: yes, no, auto (if installed)
TUNTAPD=${TUNTAPD:-tuntapd}
TUN_PIDFILE=${TUN_PIDFILE:-/run/tuntapd-$VPN_DEV.pid}
WAIT_STEPS=${WAIT_STEPS:-300}                             # deadlines, in steps of 0.1 s

say() { echo "openvpn-$VPN_NAME: $*"; }
die() { echo "openvpn-$VPN_NAME: $*" >&2; exit 1; }

alive() {  # alive PIDFILE COMM: the process the file names runs, and is COMM
    [ -f "$1" ] && [ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" = "$2" ]
}

wait_until() {  # wait_until WHAT COMMAND...: poll COMMAND every 0.1 s up to the deadline
    local what=$1 i
    shift
    for ((i = 0; i < WAIT_STEPS; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    die "timed out waiting for $what"
}

tunnel_routed() { ip route get "$VPN_PROBE" 2>/dev/null | grep -qw "dev $VPN_DEV"; }
tuntapd_gone() { ! alive "$TUN_PIDFILE" tuntapd; }
openvpn_gone() { ! alive "$PIDFILE" "$(openvpn_name)"; }
openvpn_name() { basename "$OPENVPN" | cut -c1-15; }

up() {
    if alive "$PIDFILE" "$(openvpn_name)"; then
        say "already up"
        return 0
    fi
    if alive "$TUN_PIDFILE" tuntapd; then
        kill "$(cat "$TUN_PIDFILE")"
        wait_until "tuntapd to release $VPN_DEV" tuntapd_gone
    fi
    "$OPENVPN" --config "$VPN_CONFIG" --dev "$VPN_DEV" --dev-type tun \
        --daemon "openvpn-$VPN_NAME" --writepid "$PIDFILE" || die "openvpn did not start"
    wait_until "$VPN_PROBE routed through $VPN_DEV" tunnel_routed
    say "up on $VPN_DEV"
}

hold_tun() {  # where wanted and not held already
    if [ "$HOLD_TUN" = no ] || alive "$TUN_PIDFILE" tuntapd; then return 0; fi
    if [ "$HOLD_TUN" = auto ] && ! command -v "$TUNTAPD" >/dev/null 2>&1; then return 0; fi
    if [ -S /dev/log ]; then
        "$TUNTAPD" -i "$VPN_DEV" -m tun -d --pidfile "$TUN_PIDFILE" || die "tuntapd could not hold $VPN_DEV"
    else  # no syslog to detach to: in the background, its lines dropped
        "$TUNTAPD" -i "$VPN_DEV" -m tun --pidfile "$TUN_PIDFILE" </dev/null >/dev/null 2>&1 &
        wait_until "tuntapd to hold $VPN_DEV" alive "$TUN_PIDFILE" tuntapd
    fi
}

down() {
    if alive "$PIDFILE" "$(openvpn_name)"; then
        kill "$(cat "$PIDFILE")"
        wait_until "openvpn to exit" openvpn_gone
        say "down"
    else
        say "already down"
    fi
    rm -f "$PIDFILE"
    hold_tun
}

case ${1:-} in
start) up ;;
stop) down ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
