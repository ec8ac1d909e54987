#!/bin/sh
# wireguard.sh - a WireGuard interface brought up on demand by tuninetd.
#
# What it does
#   start  `wg-quick up $WG_IFACE`, unless `wg show $WG_IFACE` says it is up.
#   stop   `wg-quick down $WG_IFACE`, unless it is down already.
#   Both exit 0 when there is nothing to do; wg-quick's status on failure;
#   2 on bad usage.
#
# What to set: WG_IFACE, the interface, whose configuration wg-quick reads
# from /etc/wireguard/$WG_IFACE.conf (edit the default below, or set it in
# the environment tuninetd runs with). Needs root and wireguard-tools.
#
# How to call it from tuninetd: while the tunnel is down its interface does
# not exist, so watch the traffic with an NFLOG rule instead of pcap on it.
# A rule in the output (and forward) hook sees packets for the far side
# whether or not the tunnel is up, so it also keeps the tunnel up while used:
#     nft add table inet tuninetd
#     nft add chain inet tuninetd out '{ type filter hook output priority 0; }'
#     nft add rule inet tuninetd out ip daddr 10.8.0.0/24 log group 1
#     tuninetd -n 1 -c /usr/local/sbin/wireguard.sh -t 600 -d
set -u

WG_IFACE=${WG_IFACE:-wg0}

is_up() { wg show "$WG_IFACE" >/dev/null 2>&1; }

case ${1:-} in
start)
    if is_up; then
        echo "wireguard: $WG_IFACE already up"
        exit 0
    fi
    exec wg-quick up "$WG_IFACE"
    ;;
stop)
    if ! is_up; then
        echo "wireguard: $WG_IFACE already down"
        exit 0
    fi
    exec wg-quick down "$WG_IFACE"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
