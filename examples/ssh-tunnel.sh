#!/usr/bin/env bash
# ssh-tunnel.sh - an `ssh -w` tun tunnel brought up on demand by tuninetd
# (the original's runtunnel example, plus tuntapd holding the device while
# the tunnel is down).
#
# What it does
#   start  releases tun$TUN_LOCAL from tuntapd, brings up
#          `ssh -f -N -w $TUN_LOCAL:$TUN_REMOTE $SSH_HOST` as a control master
#          (socket $CONTROL), gives the local device its address and sets it
#          up, and runs $REMOTE_SETUP on the remote host to configure the far
#          end. Already up (the master answers on $CONTROL): nothing to do.
#   stop   asks the master to exit through $CONTROL and waits until the device
#          is free, then has `tuntapd -i tun$TUN_LOCAL -d` hold the device so
#          it keeps carrier and tuninetd's pcap sensor keeps seeing what is
#          routed into it. Already down: only makes sure tuntapd holds it.
#   Both exit 0 when there is nothing to do; 1 on failure; 2 on bad usage.
#
# What to set: the variables below (edit them here, or set them in the
# environment tuninetd runs with). Root is needed on both ends for tun
# devices; the remote sshd needs "PermitTunnel point-to-point" (or yes); the
# login must not prompt (a key: BatchMode is on).
#
# How to call it from tuninetd: capture on the tunnel's own device, made
# persistent once so that it keeps its addresses and routes while down:
#     ip tuntap add tun0 mode tun
#     ip addr add 10.10.10.1 peer 10.10.10.2 dev tun0
#     ip route add 192.168.50.0/24 dev tun0      # what lives behind the far end
#     /usr/local/sbin/ssh-tunnel.sh stop         # tuntapd now holds tun0
#     tuninetd -i tun0 -c /usr/local/sbin/ssh-tunnel.sh -t 600 -d
# The first packet routed into tun0 starts the tunnel; 600 s of silence stops it.
set -u

SSH_HOST=${SSH_HOST:-root@tunnel.example.org}  # user@host or an ~/.ssh/config alias
SSH_OPTS=${SSH_OPTS:-}                       # extra ssh options, e.g. "-p 2222 -i /root/.ssh/tunnel"
TUN_LOCAL=${TUN_LOCAL:-0}                    # local tun number: tun0
TUN_REMOTE=${TUN_REMOTE:-0}                  # remote tun number
LOCAL_ADDR=${LOCAL_ADDR:-10.10.10.1}         # this end's address on the tunnel
PEER_ADDR=${PEER_ADDR:-10.10.10.2}           # the far end's address
CONTROL=${CONTROL:-/run/tuninetd-ssh-tunnel.ctl}  # the master's control socket
# Run on the remote host once the tunnel is up (empty: nothing).
REMOTE_SETUP=${REMOTE_SETUP-ip addr replace $PEER_ADDR peer $LOCAL_ADDR dev tun$TUN_REMOTE && ip link set tun$TUN_REMOTE up}
HOLD_TUN=${HOLD_TUN:-auto}                   # hold the device with tuntapd while down: yes, no, auto (if installed)
TUNTAPD=${TUNTAPD:-tuntapd}
WAIT_STEPS=${WAIT_STEPS:-100}                # deadlines, in steps of 0.1 s

dev="tun$TUN_LOCAL"
read -ra ssh_opts <<<"$SSH_OPTS"

say() { echo "ssh-tunnel: $*"; }
die() { echo "ssh-tunnel: $*" >&2; exit 1; }

master_alive() {
    [ -S "$CONTROL" ] && ssh -S "$CONTROL" -O check "${ssh_opts[@]}" "$SSH_HOST" >/dev/null 2>&1
}

# The pids in this network namespace that have $dev open: the kernel names
# a tun file's device in its fdinfo.
holders() {
    local own pid
    own=$(readlink /proc/self/ns/net)
    grep -lsxE "iff:[[:space:]]+$dev" /proc/[0-9]*/fdinfo/* | cut -d/ -f3 | sort -u |
        while read -r pid; do
            if [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$own" ]; then echo "$pid"; fi
        done
}

comm_of() { cat "/proc/$1/comm" 2>/dev/null; }

wait_until() {  # wait_until WHAT COMMAND...: poll COMMAND every 0.1 s up to the deadline
    local what=$1 i
    shift
    for ((i = 0; i < WAIT_STEPS; i++)); do
        "$@" && return 0
        sleep 0.1
    done
    die "timed out waiting for $what"
}

device_free() { [ -z "$(holders)" ]; }
device_exists() { [ -e "/sys/class/net/$dev" ]; }

release_tun() {  # stop the tuntapd holding $dev; anything else holding it is an error
    local pid
    for pid in $(holders); do
        if [ "$(comm_of "$pid")" = tuntapd ]; then
            kill "$pid" 2>/dev/null || true
        else
            die "$dev is held by pid $pid ($(comm_of "$pid")), not by tuntapd"
        fi
    done
    wait_until "tuntapd to release $dev" device_free
}

hold_tun() {
    case $HOLD_TUN in
    no) return 0 ;;
    auto) command -v "$TUNTAPD" >/dev/null 2>&1 || return 0 ;;
    esac
    device_free || return 0  # held already (by tuntapd: this is a repeated stop)
    "$TUNTAPD" -i "$dev" -m tun -d || die "tuntapd could not hold $dev"
}

up() {
    if master_alive; then
        say "tunnel to $SSH_HOST already up"
        return 0
    fi
    rm -f "$CONTROL"  # a stale socket of a master that died
    release_tun
    ssh -S "$CONTROL" -M -f -N -w "$TUN_LOCAL:$TUN_REMOTE" \
        -o ExitOnForwardFailure=yes -o BatchMode=yes \
        -o ServerAliveInterval=10 -o ServerAliveCountMax=3 \
        "${ssh_opts[@]}" "$SSH_HOST" || die "ssh to $SSH_HOST failed"
    wait_until "$dev" device_exists
    ip addr replace "$LOCAL_ADDR" peer "$PEER_ADDR" dev "$dev" || die "cannot address $dev"
    ip link set "$dev" up || die "cannot set $dev up"
    if [ -n "$REMOTE_SETUP" ]; then
        ssh -S "$CONTROL" "${ssh_opts[@]}" "$SSH_HOST" "$REMOTE_SETUP" ||
            die "remote setup failed: $REMOTE_SETUP"
    fi
    say "tunnel to $SSH_HOST up on $dev"
}

down() {
    if master_alive; then
        ssh -S "$CONTROL" -O exit "${ssh_opts[@]}" "$SSH_HOST" >/dev/null 2>&1
        wait_until "ssh to release $dev" device_free
        say "tunnel to $SSH_HOST down"
    else
        say "tunnel to $SSH_HOST already down"
    fi
    rm -f "$CONTROL"
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
