#!/usr/bin/env bash
# Installs what is needed, builds vswitch (release) and shows its main job in a throwaway
# sandbox: a network namespace plays the host and runs the daemon, two sample containers
# (processes in fresh network namespaces) are plugged, they ping each other, the gateway and
# the host, send each other 20 MB over TCP with a checksum, and `vswitch ls` / `vswitch fdb`
# are printed. Then the NAT: a second namespace plays the outside world (198.51.100.2, a
# documentation address); a container downloads from it and pings it through vswitch's own NAT
# (the host namespace keeps ip_forward=0 and has no firewall rule), and the outside reaches a
# container's published port. Then what an operator sees and does: `vswitch stats`, the
# Prometheus page, a capture read by tcpdump, an upgrade in place (`vswitch run --takeover`)
# under a ping every 10 ms through the NAT, and a `kill -9` of the daemon, after which the
# containers keep talking and a restart adopts the network.
# Everything is removed afterwards, also on failure or Ctrl-C.
# Nothing is added to the machine's own network namespace.
# Usage: sudo ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

require_root
install_system_packages
ensure_rust no

log "cargo build --release"
cargo build --release
VSW=$PWD/target/release/vswitch

SUBNET=10.77.0.0/24
GW=10.77.0.1
HOSTNS=vswdemo$$
WANNS=vswdemowan$$
WORK=$(mktemp -d /tmp/vswitch-demo.XXXXXX)
export VSWITCH_CONTROL=$WORK/ctl.sock
DAEMON=
CAPTURE=
PING=
C1=
C2=
SINK=
WEB=

cleanup() {
    local status=$? i
    set +e
    log "cleaning up"
    for pid in $CAPTURE $PING $SINK $WEB $C1 $C2; do kill "$pid" 2>/dev/null; done
    ip netns pids "$WANNS" 2>/dev/null | xargs -r kill 2>/dev/null
    if [ -n "$DAEMON" ] && kill -0 "$DAEMON" 2>/dev/null; then
        kill -TERM "$DAEMON"
        for i in $(seq 50); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DAEMON" 2>/dev/null
    fi
    wait 2>/dev/null
    # A daemon that died without removing its network (the kill -9 below) left it for this.
    [ -e "$VSWITCH_CONTROL.state" ] && in_host "$VSW" cleanup >/dev/null 2>&1
    umount "$VSWITCH_CONTROL.bpf" 2>/dev/null
    if [ "$status" -ne 0 ] && [ -s "$WORK/daemon.log" ]; then
        echo "--- daemon output ---" >&2
        cat "$WORK/daemon.log" >&2
    fi
    ip netns del "$HOSTNS" 2>/dev/null
    ip netns del "$WANNS" 2>/dev/null
    rm -rf "$WORK"
    echo "removed namespaces $HOSTNS and $WANNS, the sample containers and $WORK" >&2
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Shows a command, then runs it.
show() {
    printf '\n$ %s\n' "$*"
    "$@"
}

# Starts a sample container: a process in a fresh network namespace; prints its pid.
start_container() {
    unshare --net sleep 3600 </dev/null >/dev/null 2>&1 &
    local pid=$! own
    own=$(readlink /proc/self/ns/net)
    for _ in $(seq 100); do
        [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" != "$own" ] && break
        sleep 0.05
    done
    echo "$pid"
}

in_ct() { local pid=$1; shift; nsenter --net="/proc/$pid/ns/net" "$@"; }
# The daemon enters the host's network namespace only (not `ip netns exec`, whose private
# mount namespace would take the daemon's pinned fast path with it when it dies).
in_host() { nsenter --net="/run/netns/$HOSTNS" "$@"; }

# Starts the daemon (extra arguments appended) and waits until it serves.
start_daemon() {
    # A plain command, not the function: $! is then the daemon itself (nsenter execs it).
    nsenter --net="/run/netns/$HOSTNS" "$VSW" run --subnet "$SUBNET" --dns 198.51.100.2 \
        --metrics 127.0.0.1:9477 "$@" >>"$WORK/daemon.log" 2>&1 </dev/null &
    DAEMON=$!
    for _ in $(seq 100); do
        "$VSW" ls >/dev/null 2>&1 && return
        kill -0 "$DAEMON" 2>/dev/null || die "the daemon exited"
        sleep 0.1
    done
    die "the daemon did not become ready"
}

log "a namespace playing the host: $HOSTNS, running: vswitch run --subnet $SUBNET"
ip netns add "$HOSTNS"
ip -n "$HOSTNS" link set lo up
log "a namespace playing the outside world: $WANNS (198.51.100.2), the host has 198.51.100.1"
ip netns add "$WANNS"
ip -n "$WANNS" link set lo up
ip -n "$HOSTNS" link add wan0 type veth peer name eth0 netns "$WANNS"
ip -n "$HOSTNS" addr add 198.51.100.1/24 dev wan0
ip -n "$HOSTNS" link set wan0 up
ip -n "$WANNS" addr add 198.51.100.2/24 dev eth0
ip -n "$WANNS" link set eth0 up
ip netns exec "$HOSTNS" sysctl -qw net.ipv4.ip_forward=0
mkdir "$WORK/www"
head -c 10000000 /dev/urandom >"$WORK/www/file"
(cd "$WORK/www" && exec ip netns exec "$WANNS" python3 -m http.server 80 >/dev/null 2>&1 </dev/null) &
WEB=$!
start_daemon

log "two sample containers (unshare --net sleep), plugged"
C1=$(start_container)
C2=$(start_container)
show "$VSW" plug "$C1"
show "$VSW" plug "$C2"
IP1=$("$VSW" ls --json | python3 -c "import json,sys; print(next(p['ip'] for p in json.load(sys.stdin) if p['pid']==$C1))")
IP2=$("$VSW" ls --json | python3 -c "import json,sys; print(next(p['ip'] for p in json.load(sys.stdin) if p['pid']==$C2))")
show in_ct "$C1" ip -br addr show
show in_ct "$C1" ip route

log "ping: container -> container, container -> gateway, host -> container"
show in_ct "$C1" ping -c 3 -i 0.2 "$IP2"
show in_ct "$C2" ping -c 3 -i 0.2 "$GW"
show ip netns exec "$HOSTNS" ping -c 3 -i 0.2 "$IP1"

log "20 MB over TCP from container $C1 to container $C2, with SHA-256 on both ends"
in_ct "$C2" python3 -c '
import hashlib, socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 5201)); s.listen(1); print("listening", flush=True)
c, _ = s.accept(); h = hashlib.sha256(); n = 0
while True:
    b = c.recv(1 << 20)
    if not b: break
    h.update(b); n += len(b)
print("received", n, "bytes, sha256", h.hexdigest(), flush=True)
' >"$WORK/sink.out" 2>&1 &
SINK=$!
for _ in $(seq 100); do grep -q listening "$WORK/sink.out" && break; sleep 0.05; done
in_ct "$C1" python3 -c '
import hashlib, os, socket, sys, time
data = os.urandom(20 * 1024 * 1024)
t = time.time()
s = socket.create_connection((sys.argv[1], 5201)); s.sendall(data); s.close()
print("sent    ", len(data), "bytes, sha256", hashlib.sha256(data).hexdigest(),
      "(%.0f Mbit/s)" % (len(data) * 8 / (time.time() - t) / 1e6), flush=True)
' "$IP2" | tee "$WORK/source.out"
wait "$SINK"
grep received "$WORK/sink.out"
[ "$(awk '/^sent/ {print $2, $5}' "$WORK/source.out")" = "$(awk '/^received/ {print $2, $5}' "$WORK/sink.out")" ] ||
    die "checksums differ"
echo "checksums match"

log "the switch's ports and learned MAC addresses"
show "$VSW" ls
show "$VSW" fdb

log "no kernel bridge in the host namespace: a TAP for the host, plain veths for the containers"
show ip -n "$HOSTNS" -br link show

log "NAT: the host namespace forwards nothing itself"
show ip netns exec "$HOSTNS" sysctl net.ipv4.ip_forward
log "container $C1 downloads 10 MB from the outside world (http://198.51.100.2/file) and pings it"
in_ct "$C1" python3 -c '
import hashlib, sys, urllib.request
data = urllib.request.urlopen("http://198.51.100.2/file", timeout=10).read()
print("downloaded", len(data), "bytes, sha256", hashlib.sha256(data).hexdigest())
' | tee "$WORK/download.out"
[ "$(awk '{print $5}' "$WORK/download.out")" = "$(sha256sum "$WORK/www/file" | cut -d" " -f1)" ] ||
    die "the download is corrupt"
echo "matches the server's file"
show in_ct "$C1" ping -c 2 -i 0.2 198.51.100.2
show "$VSW" conntrack

log "a published port: container $C2 serves HTTP on port 80, published on the host as 8080"
show "$VSW" unplug "$C2"
show "$VSW" plug "$C2" --publish 8080:80
mkdir "$WORK/site" && echo "hello from container $C2" >"$WORK/site/index.html"
kill "$SINK" 2>/dev/null || true
(cd "$WORK/site" && exec nsenter --net="/proc/$C2/ns/net" python3 -m http.server 80 >/dev/null 2>&1 </dev/null) &
SINK=$!
for _ in $(seq 50); do in_ct "$C2" python3 -c 'import socket; socket.create_connection(("127.0.0.1", 80), 1)' 2>/dev/null && break; sleep 0.1; done
show ip netns exec "$WANNS" python3 -c 'import urllib.request; print(urllib.request.urlopen("http://198.51.100.1:8080/", timeout=5).read().decode(), end="")'

log "what the daemon counts: vswitch stats, and the same numbers as Prometheus metrics"
show "$VSW" stats
printf '\n$ curl http://127.0.0.1:9477/metrics   # in the host namespace; a few of its lines\n'
ip netns exec "$HOSTNS" python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9477/metrics", timeout=5).read().decode(), end="")' |
    grep -E '^vswitch_(port_rx_frames_total|nat_flows|fdb_entries|containers)\b' | head -12

log "a capture of container $C1's port, read by tcpdump, while it pings $IP2 (the fast path steps aside)"
"$VSW" capture --pid "$C1" --proto icmp -c 6 -w "$WORK/c1.pcapng" 2>"$WORK/capture.err" &
CAPTURE=$!
for _ in $(seq 50); do grep -q capturing "$WORK/capture.err" && break; sleep 0.1; done
in_ct "$C1" ping -q -c 3 -i 0.2 "$IP2" >/dev/null
wait "$CAPTURE" || { cat "$WORK/capture.err" >&2; die "the capture failed"; }
show tcpdump -n -r "$WORK/c1.pcapng"

log "an upgrade in place: a second daemon takes over (vswitch run ... --takeover) while $C1 pings the outside every 10 ms through the NAT"
in_ct "$C1" ping -q -i 0.01 -c 300 198.51.100.2 >"$WORK/ping.out" 2>&1 &
PING=$!
sleep 1
OLD=$DAEMON
printf '\n$ vswitch run --subnet %s ... --takeover\n' "$SUBNET"
start_daemon --takeover
# The old daemon exits once the new one serves.
wait "$OLD" 2>/dev/null || true
wait "$PING" || true
grep -E "took over" "$WORK/daemon.log" | tail -1
grep -E "packets transmitted" "$WORK/ping.out"
echo "old daemon pid $OLD has exited; pid $DAEMON serves the same control socket"

log "a crash: kill -9 the daemon; the containers keep talking over the kernel fast path"
show kill -9 "$DAEMON"
wait "$DAEMON" 2>/dev/null || true
show in_ct "$C1" ping -c 2 -i 0.2 "$IP2"
"$VSW" ls >/dev/null 2>&1 && die "the daemon still answers after kill -9"
log "a restart with the same arguments adopts the network: same ports, same addresses"
start_daemon
show "$VSW" ls
show in_ct "$C1" ping -c 2 -i 0.2 198.51.100.2

log "demo finished"
