#!/usr/bin/env bash
# Outage and lost packets across a restart of the switch, in throwaway namespaces only.
#
# Three paths are pinged every 10 ms (ping -D, timestamps) while something happens to the
# switch: container -> container, container -> outside (a namespace playing the outside world,
# reached through the switch's NAT, or routed by the kernel for the bridge), host -> container.
# The outage of a path is the longest time between two answered pings less the 10 ms interval
# (0 when nothing was held up); lost is sent - answered.
#
#   upgrade   vswitch run --takeover by a second copy of the binary (see README)
#   restart   kill -9 of the daemon, then vswitch run again at once (adopts the network)
#   kbridge   the kernel bridge, for reference: nothing to restart
#
# Usage: sudo benches/restart.sh [-r RUNS] [-s upgrade,restart,kbridge] [--vswitch PATH]
# Prints one line per scenario, path and run, then a Markdown table of the medians.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=3
SCENARIOS=upgrade,restart,kbridge
VSW=$PWD/target/release/vswitch
while [ $# -gt 0 ]; do
    case "$1" in
        -r) RUNS=$2; shift 2 ;;
        -s) SCENARIOS=$2; shift 2 ;;
        --vswitch) VSW=$2; shift 2 ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "run as root (namespaces, veths)" >&2; exit 1; }
[ -x "$VSW" ] || cargo build --release

TAG=vswrs$$
HOST=${TAG}h WAN=${TAG}w
C1= C2=            # the containers: processes in network namespaces of their own
WORK=$(mktemp -d /tmp/vswitch-restart.XXXXXX)
CTL=$WORK/ctl.sock
PINGS=600          # 6 s of pings per run
EVENT_AT=2         # the restart, 2 s in
RESULTS=$WORK/results.txt
: > "$RESULTS"

DAEMON=
PIDS=()            # every daemon and container process started
cleanup() {
    set +e
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    sleep 0.5
    umount -l "$WORK/ctl.bpf" 2>/dev/null
    for ns in $HOST $WAN; do ip netns del "$ns" 2>/dev/null; done
    rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

# Runs a command in the host or wan namespace (by name) or in a container (by pid).
inside() {
    local where=$1; shift
    case "$where" in
        [0-9]*) nsenter --net=/proc/$where/ns/net "$@" ;;
        *) ip netns exec "$where" "$@" ;;
    esac
}

# The host and the outside world, linked, and two containers.
world() {
    for ns in $HOST $WAN; do ip netns add "$ns"; inside "$ns" ip link set lo up; done
    unshare --net sleep 3600 & C1=$!
    unshare --net sleep 3600 & C2=$!
    PIDS+=("$C1" "$C2")
    sleep 0.2
    inside $C1 ip link set lo up
    inside $C2 ip link set lo up
    inside $HOST sysctl -q -w net.ipv4.ip_forward=0
    ip -n $HOST link add wan0 type veth peer name eth0 netns $WAN
    ip -n $HOST addr add 198.51.100.1/24 dev wan0
    ip -n $HOST link set wan0 up
    ip -n $WAN addr add 198.51.100.2/24 dev eth0
    ip -n $WAN link set eth0 up
}

unworld() {
    kill "$C1" "$C2" 2>/dev/null || true
    wait "$C1" "$C2" 2>/dev/null || true
    for ns in $HOST $WAN; do ip netns del "$ns" 2>/dev/null || true; done
    sleep 0.3
}

start_daemon() { # binary, extra args...
    local bin=$1; shift
    nsenter --net=/run/netns/$HOST "$bin" run --subnet 10.1.1.0/24 --no-dns --control "$CTL" "$@" \
        >>"$WORK/daemon.log" 2>&1 &
    DAEMON=$!
    PIDS+=("$DAEMON")
    for _ in $(seq 200); do
        "$VSW" --control "$CTL" ls >/dev/null 2>&1 && return 0
        sleep 0.01
    done
    echo "the daemon did not start:" >&2; cat "$WORK/daemon.log" >&2; return 1
}

# ping -D every 10 ms; prints "<outage ms> <lost> <sent>".
measure() { # label, namespace, target
    inside "$2" ping -D -i 0.01 -c $PINGS -W 1 "$3" >"$WORK/ping-$1.txt" 2>&1 || true
    python3 - "$WORK/ping-$1.txt" <<'EOF'
import re, sys
times, sent, got = [], 0, 0
for line in open(sys.argv[1]):
    m = re.match(r"\[(\d+\.\d+)\].*icmp_seq=(\d+)", line)
    if m:
        times.append(float(m.group(1)))
    m = re.search(r"(\d+) packets transmitted, (\d+) received", line)
    if m:
        sent, got = int(m.group(1)), int(m.group(2))
gaps = [b - a for a, b in zip(times, times[1:])]
outage = max(0.0, (max(gaps) - 0.010) * 1000) if gaps else float("nan")
print("%.0f %d %d" % (outage, sent - got, sent))
EOF
}

run_once() { # scenario, run
    local scenario=$1 run=$2
    world
    if [ "$scenario" = kbridge ]; then
        inside $HOST ip link add br0 type bridge
        inside $HOST ip addr add 10.1.1.1/24 dev br0
        inside $HOST ip link set br0 up
        local i=2
        for c in $C1 $C2; do
            ip -n $HOST link add v$i type veth peer name eth0 netns $c
            ip -n $HOST link set v$i master br0 up
            inside $c ip addr add 10.1.1.$i/24 dev eth0
            inside $c ip link set eth0 up
            inside $c ip route add default via 10.1.1.1
            i=$((i + 1))
        done
        # The kernel routes to the outside; the outside routes back (no NAT needed here).
        inside $HOST sysctl -q -w net.ipv4.ip_forward=1
        inside $WAN ip route add 10.1.1.0/24 via 198.51.100.1
    else
        start_daemon "$VSW"
        "$VSW" --control "$CTL" plug "$C1" >/dev/null
        "$VSW" --control "$CTL" plug "$C2" >/dev/null
    fi
    inside $C1 ping -c 3 -i 0.1 -q 10.1.1.3 >/dev/null
    inside $C1 ping -c 3 -i 0.1 -q 198.51.100.2 >/dev/null
    measure c2c $C1 10.1.1.3 >"$WORK/m-c2c" &
    local p1=$!
    measure out $C1 198.51.100.2 >"$WORK/m-out" &
    local p2=$!
    measure host $HOST 10.1.1.2 >"$WORK/m-host" &
    local p3=$!
    sleep $EVENT_AT
    case "$scenario" in
        upgrade)
            cp "$VSW" "$WORK/vswitch-upgraded"
            local old=$DAEMON
            start_daemon "$WORK/vswitch-upgraded" --takeover
            wait "$old" || true
            ;;
        restart)
            kill -9 "$DAEMON"; wait "$DAEMON" 2>/dev/null || true
            start_daemon "$VSW"
            ;;
    esac
    wait $p1 $p2 $p3
    for path in c2c out host; do
        echo "$scenario $path $run $(cat "$WORK/m-$path")" | tee -a "$RESULTS"
    done
    if [ "$scenario" != kbridge ]; then
        kill "$DAEMON" 2>/dev/null; wait "$DAEMON" 2>/dev/null || true
        DAEMON=
        umount -l "$WORK/ctl.bpf" 2>/dev/null || true
    fi
    unworld
}

echo "scenario path run outage_ms lost sent"
for run in $(seq "$RUNS"); do
    for scenario in ${SCENARIOS//,/ }; do
        run_once "$scenario" "$run"
    done
done

python3 - "$RESULTS" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    s, path, run, outage, lost, sent = line.split()
    rows.setdefault((s, path), []).append((float(outage), int(lost), int(sent)))
names = {"c2c": "container to container", "out": "container to outside", "host": "host to container"}
print()
print("| scenario | path | outage (ms, median) | outage (ms, max) | lost pings (median of %d) |" % len(next(iter(rows.values()))))
print("| --- | --- | ---: | ---: | ---: |")
for (s, path), v in rows.items():
    outages = [o for o, _, _ in v]
    print("| %s | %s | %.0f | %.0f | %d |" % (s, names[path], statistics.median(outages), max(outages),
                                            statistics.median([l for _, l, _ in v])))
EOF
