#!/usr/bin/env bash
# benches/events.sh - how soon vswitch reacts to two events, figures the end-to-end tests only
# check happen (on a busy machine they take longer, which is no failure there):
#   exit_ms     a container exits (nobody tells vswitch) -> its port is gone from `vswitch ls`
#               (README: within 2 s; the daemon looks once a second)
#   refused_ms  a container connects through the NAT to a closed port outside -> ECONNREFUSED
#               (the outside's RST relayed at once, not after SYN retries: well under 1000 ms)
#
# USAGE (as root)   benches/events.sh [-n N] [--vswitch PATH]
#   -n N            repetitions of each (default 20); prints min, median and max of each
#   --vswitch PATH  the binary (default: target/release/vswitch, built if missing)
#
# ISOLATION  Everything happens in namespaces this script creates: evh-TAG (the host, running
#   the daemon), evw-TAG (the outside, 198.51.100.2/24 behind the host's 198.51.100.1/24) and
#   the containers (`unshare --net`), TAG=vsw<PID>. Nothing is added to the root namespace. On
#   exit, failure or Ctrl-C the daemon and the containers are stopped and the namespaces deleted.
set -euo pipefail
cd "$(dirname "$0")/.."

N=20
VSWITCH=target/release/vswitch
while [ $# -gt 0 ]; do
    case $1 in
        -n) N=$2; shift 2 ;;
        --vswitch) VSWITCH=$2; shift 2 ;;
        *) echo "usage: $0 [-n N] [--vswitch PATH]" >&2; exit 1 ;;
    esac
done
[ "$(id -u)" -eq 0 ] || { echo "$0 must run as root (namespaces, veths, a TAP)" >&2; exit 1; }
if [ "$VSWITCH" = target/release/vswitch ] && [ ! -x "$VSWITCH" ]; then
    cargo build --release --bin vswitch >&2
fi

TAG=vsw$$
HOST=evh-$TAG
WAN=evw-$TAG
DIR=$(mktemp -d "/tmp/vswitch-events.XXXXXX")
CTL=$DIR/ctl.sock
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    [ -n "${DAEMON:-}" ] && { kill -TERM "$DAEMON" 2>/dev/null; wait "$DAEMON" 2>/dev/null || true; }
    ip netns del "$WAN" 2>/dev/null || true
    ip netns del "$HOST" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ip netns add "$HOST"
ip netns add "$WAN"
ip -n "$HOST" link set lo up
ip -n "$WAN" link set lo up
ip netns exec "$HOST" sysctl -q -w net.ipv4.ip_forward=0
ip -n "$HOST" link add wan0 type veth peer name eth0 netns "$WAN"
ip -n "$HOST" addr add 198.51.100.1/24 dev wan0
ip -n "$HOST" link set wan0 up
ip -n "$WAN" addr add 198.51.100.2/24 dev eth0
ip -n "$WAN" link set eth0 up

ip netns exec "$HOST" "$VSWITCH" run --subnet 10.1.1.0/24 --control "$CTL" \
    --dns 198.51.100.2 </dev/null >"$DIR/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 100); do
    timeout 10 "$VSWITCH" ls --control "$CTL" >/dev/null 2>&1 && break
    sleep 0.1
done
"$VSWITCH" ls --control "$CTL" >/dev/null

now_ms() { date +%s%3N; }
listed() { "$VSWITCH" ls --control "$CTL" --json | grep -q "\"pid\":$1[,}]"; }
# Starts a container (a process in a network namespace of its own): its pid in $CPID.
container() {
    unshare --net sleep 3600 </dev/null >/dev/null 2>&1 &
    CPID=$!
    PIDS+=("$CPID")
    while [ "$(readlink "/proc/$CPID/ns/net")" = "$(readlink /proc/self/ns/net)" ]; do
        sleep 0.01
    done
}
# min median max of the numbers on stdin
summary() { sort -n | awk '{v[NR]=$1} END {printf "min %d  median %d  max %d", v[1], v[int((NR+1)/2)], v[NR]}'; }

exit_ms=()
for _ in $(seq "$N"); do
    container
    pid=$CPID
    "$VSWITCH" plug --control "$CTL" "$pid" >/dev/null
    start=$(now_ms)
    kill -KILL "$pid"
    wait "$pid" 2>/dev/null || true
    while listed "$pid"; do
        sleep 0.01
        [ $(($(now_ms) - start)) -lt 30000 ] || { echo "port of $pid never removed" >&2; exit 1; }
    done
    exit_ms+=($(($(now_ms) - start)))
done

PROBE='
import socket, time
t = time.monotonic()
try:
    socket.create_connection(("198.51.100.2", 9), timeout=10)
    print("connected")
except ConnectionRefusedError:
    print(int((time.monotonic() - t) * 1000))
except OSError as e:
    print("error", e)
'
container
pid=$CPID
"$VSWITCH" plug --control "$CTL" "$pid" >/dev/null
refused_ms=()
for _ in $(seq "$N"); do
    out=$(timeout 30 nsenter --net="/proc/$pid/ns/net" python3 -c "$PROBE")
    case $out in
        *[!0-9]*|"") echo "a connection to a closed port was not refused: $out" >&2; exit 1 ;;
    esac
    refused_ms+=("$out")
done

echo "vswitch events, $N repetitions each ($(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)):"
echo "  exit_ms     $(printf '%s\n' "${exit_ms[@]}" | summary)"
echo "  refused_ms  $(printf '%s\n' "${refused_ms[@]}" | summary)"
