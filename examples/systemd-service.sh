#!/bin/sh
# systemd-service.sh - a systemd unit started on the first matching packet and
# stopped after tuninetd's ttl of silence (a service that is costly to keep
# running, a backup target, a game server...).
#
# What it does
#   start  `systemctl start $UNIT`, unless `systemctl is-active $UNIT` says
#          it is active already.
#   stop   `systemctl stop $UNIT`, unless it is inactive, failed or unknown.
#   Both exit 0 when there is nothing to do; systemctl's status on failure;
#   2 on bad usage.
#
# What to set: UNIT, the unit to control (edit the default below, or set it
# in the environment tuninetd runs with). Needs the right to start and stop
# it (root, or a polkit rule for tuninetd's --exec-user).
#
# How to call it from tuninetd, e.g. for a service listening on port 8080:
#     tuninetd -i eth0 -f "tcp dst port 8080" -c /usr/local/sbin/systemd-service.sh -t 900 -d
# (the first connection attempt starts it; the client's retry gets through).
set -u

UNIT=${UNIT:-example.service}

state() { systemctl is-active "$UNIT" 2>/dev/null; }

case ${1:-} in
start)
    if [ "$(state)" = active ]; then
        echo "systemd-service: $UNIT already active"
        exit 0
    fi
    exec systemctl start "$UNIT"
    ;;
stop)
    case $(state) in
    inactive | failed | unknown | "")
        echo "systemd-service: $UNIT already stopped"
        exit 0
        ;;
    esac
    exec systemctl stop "$UNIT"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
