#!/usr/bin/env bash
# Host <-> container through the kernel bridge, through the least userspace hop (benches/wire.c)
# and through vswitch without its fast path, in one run: TCP both ways (iperf3) with the busy
# share of the machine's cores, and the ping round trip. What the wire costs over the bridge is
# the hop's; what the daemon costs over the wire is the daemon's own (BENCHMARKS.md, "The host's
# frames by CPU, and the least a hop can cost").
#
#   sudo benches/hopfloor.sh [-r ROUNDS] [-t SEC] [-s SCENARIOS] [-b BASELINE_BINARY]
#     scenarios: kbridge, wire (poll window 200 us, as the daemon's default), wire0 (no poll
#     window), wirepin (no poll window, pinned to CPU 0 where ping runs: the best placement a
#     hop can have), vswitch (--fast-path off); default all five. Rounds are interleaved.
#     With -b, scenario vswitch-base runs that binary as vswitch runs target/release/vswitch.
# ping runs on CPU 0 in every scenario, so that wirepin shares its CPU; vswitch's workers find
# the sender's CPU by themselves (cli/src/datapath/wait.rs).
# Needs iperf3, ping, cc and target/release/vswitch (cargo build --release). Touches only the
# namespaces it creates (hf<pid>-*) and removes them on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=3 secs=4 scenarios=kbridge,wire,wire0,wirepin,vswitch BASE=""
while getopts r:t:s:b: o; do
    case $o in
    r) rounds=$OPTARG ;; t) secs=$OPTARG ;; s) scenarios=$OPTARG ;; b) BASE=$(realpath "$OPTARG") ;;
    *) exit 2 ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "hopfloor.sh: needs root (namespaces)" >&2; exit 1; }
V=$PWD/target/release/vswitch
[[ -x $V ]] || { echo "hopfloor.sh: build first: cargo build --release" >&2; exit 1; }
WIRE=$(mktemp /tmp/wire.XXXXXX)
cc -O2 -Wall benches/wire.c -o "$WIRE"

tag=hf$$ H=hf$$-h A=hf$$-a PID=""
cleanup() {
    [[ -n $PID ]] && kill "$PID" 2>/dev/null && { wait "$PID" 2>/dev/null || true; }
    PID=""
    ip netns del "$H" 2>/dev/null || true
    ip netns del "$A" 2>/dev/null || true
}
trap 'cleanup; rm -f "$WIRE" /tmp/$tag.*' EXIT

busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $5+$6}' /proc/stat; }
# The container's veth, its end in the host namespace named v$tag.
veth() {
    ip -n "$H" link add "v$tag" type veth peer name eth0 netns "$A"
    ip -n "$A" addr add 10.1.1.2/24 dev eth0
    ip -n "$A" link set eth0 up
}
# A host end that only a userspace hop reads: no ARP, no IPv6 (as vswitch keeps its ports).
quiet_end() {
    ip netns exec "$H" sysctl -qw "net.ipv6.conf.v$tag.disable_ipv6=1"
    ip -n "$H" link set "v$tag" arp off up
}

setup() {
    ip netns add "$H"; ip netns add "$A"
    ip -n "$H" link set lo up; ip -n "$A" link set lo up
    case $1 in
    kbridge)
        ip -n "$H" link add br0 type bridge
        ip -n "$H" addr add 10.1.1.1/24 dev br0
        ip -n "$H" link set br0 up
        veth; ip -n "$H" link set "v$tag" master br0 up ;;
    wire | wire0 | wirepin)
        veth; quiet_end
        local poll=200 cpus=0-$(($(nproc) - 1))
        [[ $1 != wire ]] && poll=0
        [[ $1 == wirepin ]] && cpus=0
        ip netns exec "$H" taskset -c $cpus "$WIRE" -i "v$tag" -t w$tag -p $poll >/tmp/$tag.wire &
        PID=$!
        for _ in $(seq 50); do grep -q ready /tmp/$tag.wire 2>/dev/null && break; sleep 0.1; done
        ip -n "$H" addr add 10.1.1.1/24 dev w$tag
        ip -n "$H" link set w$tag up ;;
    vswitch | vswitch-base)
        local bin=$V
        [[ $1 == vswitch-base ]] && bin=${BASE:?"vswitch-base needs -b BINARY"}
        ip netns exec "$H" "$bin" run --subnet 10.1.1.0/24 --control /tmp/$tag.sock \
            --tap w$tag --fast-path off >/tmp/$tag.log 2>&1 &
        PID=$!
        for _ in $(seq 50); do "$V" --control /tmp/$tag.sock ls >/dev/null 2>&1 && break; sleep 0.1; done
        "$V" --control /tmp/$tag.sock plug --netns /run/netns/"$A" --ip 10.1.1.2 >/dev/null ;;
    *) echo "hopfloor.sh: unknown scenario $1" >&2; exit 2 ;;
    esac
    # The first ping also resolves the neighbours both ways.
    ip netns exec "$H" ping -c 3 -i 0.2 -W 1 10.1.1.2 >/dev/null
}

# iperf3 from the host to the container (or back with -R): "Gbit/s busy-cores" (the busy share
# of every core of the machine during the transfer, from /proc/stat).
tcp() {
    ip netns exec "$A" iperf3 -s -1 -D -I /tmp/$tag.ipf; sleep 0.3
    local b0 b1
    b0=$(busy)
    local rate
    rate=$(ip netns exec "$H" iperf3 -c 10.1.1.2 -t "$secs" "$@" -J |
        python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
    b1=$(busy)
    python3 -c "
b0, i0 = map(int, '$b0'.split()); b1, i1 = map(int, '$b1'.split())
print('$rate %.2f' % ($(nproc) * (b1 - b0) / ((b1 - b0) + (i1 - i0))))"
    sleep 0.3
}

printf '%-8s %5s %22s %22s %14s\n' scenario round "host->c Gbit/s (cores)" "c->host Gbit/s (cores)" "ping mean us"
for r in $(seq "$rounds"); do
    for s in ${scenarios//,/ }; do
        setup "$s"
        read -r f fc <<<"$(tcp)"
        read -r b bc <<<"$(tcp -R)"
        p=$(ip netns exec "$H" taskset -c 0 ping -c 300 -i 0.005 -q 10.1.1.2 | awk -F/ '/^rtt/{print $5}')
        p=$(python3 -c "print('%.1f' % ($p * 1000))")
        printf '%-8s %5s %15s (%4s) %15s (%4s) %14s\n' "$s" "$r" "$f" "$fc" "$b" "$bc" "$p"
        cleanup
    done
done
