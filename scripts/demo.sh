#!/usr/bin/env bash
# Installs what is needed, builds vswitch (release) and shows its main job in a throwaway
# sandbox: a network namespace plays the host and runs the daemon, two sample containers
# (processes in fresh network namespaces) are plugged, they ping each other, the gateway and
# the host, send each other 20 MB over TCP with a checksum, and `vswitch ls` / `vswitch fdb`
# are printed. Everything is removed afterwards, also on failure or Ctrl-C. Nothing is added
# to the machine's own network namespace.
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
WORK=$(mktemp -d /tmp/vswitch-demo.XXXXXX)
export VSWITCH_CONTROL=$WORK/ctl.sock
DAEMON=
C1=
C2=
SINK=

cleanup() {
    local status=$? i
    set +e
    log "cleaning up"
    for pid in $SINK $C1 $C2; do kill "$pid" 2>/dev/null; done
    if [ -n "$DAEMON" ] && kill -0 "$DAEMON" 2>/dev/null; then
        kill -TERM "$DAEMON"
        for i in $(seq 50); do kill -0 "$DAEMON" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$DAEMON" 2>/dev/null
    fi
    wait 2>/dev/null
    if [ "$status" -ne 0 ] && [ -s "$WORK/daemon.log" ]; then
        echo "--- daemon output ---" >&2
        cat "$WORK/daemon.log" >&2
    fi
    ip netns del "$HOSTNS" 2>/dev/null
    rm -rf "$WORK"
    echo "removed namespace $HOSTNS, the sample containers and $WORK" >&2
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

log "a namespace playing the host: $HOSTNS, running: vswitch run --subnet $SUBNET"
ip netns add "$HOSTNS"
ip -n "$HOSTNS" link set lo up
ip netns exec "$HOSTNS" "$VSW" run --subnet "$SUBNET" >"$WORK/daemon.log" 2>&1 </dev/null &
DAEMON=$!
for _ in $(seq 100); do
    "$VSW" ls >/dev/null 2>&1 && break
    kill -0 "$DAEMON" 2>/dev/null || die "the daemon exited"
    sleep 0.1
done
"$VSW" ls >/dev/null || die "the daemon did not become ready"

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

log "demo finished"
