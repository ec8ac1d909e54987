#!/bin/sh
# on-demand-web.sh - a web server started by tuninetd on its first connection,
# which waits meanwhile (tuninetd --hold): the first request is served.
#
# What it does
#   start  starts `python3 -m http.server $WEB_PORT` serving $WEB_ROOT in the
#          background and returns once it listens: tuninetd lets the held
#          connection go then, and it reaches a listening server. Already
#          listening: nothing to do.
#   stop   stops the server it started.
#   Both exit 0 when there is nothing to do; 1 when the server did not come
#   up (tuninetd then does what --hold-fail says); 2 on bad usage.
#
# What to set: the variables below (edit them here, or set them in the
# environment tuninetd runs with). For your own service, replace the line
# that starts the server (e.g. `systemctl start nginx`, `docker start web`),
# and keep the wait: start must not return before the service listens.
#
# How to call it from tuninetd (docs/on-demand.md has the nft form): log new
# connections to an NFLOG group, then queue them to the hold's queue:
#     iptables -A INPUT -p tcp --dport 8080 --syn -j NFLOG --nflog-group 1
#     iptables -A INPUT -p tcp --dport 8080 --syn -j NFQUEUE --queue-num 1 --queue-bypass
#     tuninetd -n 1 --hold 1 -c /usr/local/sbin/on-demand-web.sh -t 600
set -u

WEB_PORT=${WEB_PORT:-8080}
WEB_ROOT=${WEB_ROOT:-/var/www/html}
WEB_PIDFILE=${WEB_PIDFILE:-/run/on-demand-web.pid}
WAIT_STEPS=${WAIT_STEPS:-500}                # how long start waits, in steps of 0.01 s

listening() { ss -Htln "sport = :$WEB_PORT" | grep -q .; }
running() { [ -f "$WEB_PIDFILE" ] && kill -0 "$(cat "$WEB_PIDFILE")" 2>/dev/null; }

case ${1:-} in
start)
    if listening; then
        echo "web: already listening on port $WEB_PORT"
        exit 0
    fi
    # Its output is not the command's: tuninetd waits for start, not for it.
    python3 -m http.server "$WEB_PORT" --directory "$WEB_ROOT" </dev/null >/dev/null 2>&1 &
    echo $! >"$WEB_PIDFILE"
    i=0
    until listening; do
        i=$((i + 1))
        if [ "$i" -gt "$WAIT_STEPS" ] || ! running; then
            echo "web: the server did not come up on port $WEB_PORT" >&2
            exit 1
        fi
        sleep 0.01
    done
    echo "web: listening on port $WEB_PORT"
    ;;
stop)
    if running; then
        kill "$(cat "$WEB_PIDFILE")"
        echo "web: stopped"
    else
        echo "web: not running"
    fi
    rm -f "$WEB_PIDFILE"
    ;;
*)
    echo "usage: $0 start|stop" >&2
    exit 2
    ;;
esac
