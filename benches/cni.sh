#!/usr/bin/env bash
# benches/cni.sh - how long vswitch's CNI ADD and DEL take, next to podman's default network
# backend doing the same job on the same machine: attach a container with one published port,
# then detach it.
#
# USAGE (as root)
#   benches/cni.sh [-n 100] [--no-podman] [--vswitch PATH]
#
# WHAT IT MEASURES (every figure over N containers, default 100: median, p99, mean in ms)
#   1. direct: the network's plugins invoked as libcni runs them (ADD along the chain with
#      prevResult, DEL in reverse), by benches/cni_plugins.py, one fresh namespace per container:
#      - vswitch: the plugin installed by `vswitch cni install` (a release build), against a
#        daemon serving 10.89.0.0/24;
#      - cni-bridge: podman 4's default CNI network (bridge cni-podman0 with host-local IPAM,
#        portmap, firewall, tuning), as podman generates it, from /usr/lib/cni.
#   2. podman: `podman run -d --network NET -p 8080:80` of a busybox httpd, then
#      `podman rm -f -t 0`, N times per network, with every plugin that podman runs timed by a
#      wrapper (bash, $EPOCHREALTIME around the real plugin): a container's ADD is the sum over
#      its chain, likewise DEL. Also the wall time of each podman run and rm. podman is configured
#      alike for both but for enable_port_reservation, off for vswitch as README.md has it.
#   The default backend compared with is podman's CNI bridge: netavark is not installed here (the
#   script stops if it is, rather than compare with a backend podman would not use).
#
# ISOLATION  The daemon runs in netns cnid-TAG, podman and the plugins in cnip-TAG (the bridge,
#   its iptables rules and ip_forward live there), TAG=vswbc<PID>; containers get namespaces of
#   their own. podman keeps everything in a temporary directory (storage, run dirs, locks, runc
#   state through a wrapper, events, cgroups under /TAG) and runs in a mount namespace where
#   /var/lib is a tmpfs (host-local's leases, libcni's cache). Nothing is added to the root
#   namespace; everything is removed on exit, failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

N=100
WITH_PODMAN=yes
VSWITCH=target/release/vswitch
while [ $# -gt 0 ]; do
    case "$1" in
        -n) N=$2; shift 2 ;;
        --no-podman) WITH_PODMAN=no; shift ;;
        --vswitch) VSWITCH=$2; shift 2 ;;
        -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
        *) echo "unknown option $1 (see -h)" >&2; exit 1 ;;
    esac
done

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: it creates network namespaces"
for tool in ip python3 nsenter unshare findmnt; do
    command -v "$tool" >/dev/null || die "$tool is missing"
done
if [ "$WITH_PODMAN" = yes ]; then
    for tool in podman runc; do command -v "$tool" >/dev/null || die "$tool is missing (apt-get install $tool)"; done
    for d in /usr/lib/podman /usr/libexec/podman; do
        [ -x "$d/netavark" ] && die "netavark is installed: podman's default backend would be netavark, which this script does not time"
    done
    [ -x /bin/busybox ] || die "/bin/busybox is missing (apt-get install busybox-static)"
fi
CNI_BIN=/usr/lib/cni
for p in bridge host-local portmap firewall tuning; do
    [ -x "$CNI_BIN/$p" ] || die "$CNI_BIN/$p is missing (apt-get install containernetworking-plugins)"
done
[ -x "$VSWITCH" ] || { log "building $VSWITCH"; cargo build --release >&2; }
VSWITCH=$(realpath "$VSWITCH")

TAG=vswbc$$
NS_D=cnid-$TAG
NS_P=cnip-$TAG
T=$(mktemp -d "/tmp/vswitch-cni-bench.XXXXXX")
DAEMON=
HOLDER=

podman_in() { # podman with the configuration of backend $1, in the holder's namespaces
    local conf=$1; shift
    CONTAINERS_CONF=$T/$conf/containers.conf CONTAINERS_STORAGE_CONF=$T/storage.conf TMPDIR=$T/tmp \
        nsenter --target "$HOLDER" --net --mount podman "$@"
}

cleanup() {
    set +e
    if [ -n "$HOLDER" ]; then
        for conf in vswitch default; do
            [ -f "$T/$conf/containers.conf" ] && podman_in "$conf" rm --all --force --time 0 >/dev/null 2>&1
        done
        podman_in vswitch rmi --all --force >/dev/null 2>&1
        kill "$HOLDER" 2>/dev/null; wait "$HOLDER" 2>/dev/null
    fi
    [ -n "$DAEMON" ] && { kill "$DAEMON" 2>/dev/null; wait "$DAEMON" 2>/dev/null; }
    for ns in $(ip netns list | awk '{print $1}' | grep -E "^(cni[dp]-$TAG|vswbc$$x[0-9]+)$"); do
        ip netns del "$ns"
    done
    awk -v t="$T" 'index($5, t) == 1 {print $5}' /proc/self/mountinfo | sort -r | xargs -r -n1 umount -l
    for h in /sys/fs/cgroup/*/; do
        [ -d "$h$TAG" ] && find "$h$TAG" -depth -type d -exec rmdir {} \; 2>/dev/null
    done
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "namespaces $NS_D (daemon) and $NS_P (plugins, podman); work directory $T"
for ns in "$NS_D" "$NS_P"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
done
mkdir -p "$T/tmp"
ip netns exec "$NS_D" "$VSWITCH" run --subnet 10.89.0.0/24 --control "$T/ctl.sock" --no-dns \
    >"$T/daemon.log" 2>&1 &
DAEMON=$!
for _ in $(seq 100); do "$VSWITCH" ls --control "$T/ctl.sock" >/dev/null 2>&1 && break; sleep 0.1; done
"$VSWITCH" ls --control "$T/ctl.sock" >/dev/null || die "the daemon did not start: $(cat "$T/daemon.log")"
"$VSWITCH" cni install --name vswitch --bin-dir "$T/vswitch-bin" --conf-dir "$T/vswitch-net" \
    --control "$T/ctl.sock" >&2

# podman 4's default CNI network, as libpod generates it when no configuration names "podman";
# host-local keeps its leases in the work directory.
mkdir -p "$T/default-net"
cat >"$T/default-net/87-podman.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "podman",
  "plugins": [
    {"type": "bridge", "bridge": "cni-podman0", "isGateway": true, "ipMasq": true,
     "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$T/host-local", "routes": [{"dst": "0.0.0.0/0"}],
              "ranges": [[{"subnet": "10.88.0.0/16", "gateway": "10.88.0.1"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "firewall"},
    {"type": "tuning"}
  ]
}
EOF

results=()
log "direct: $N x ADD+DEL, vswitch"
results+=("$(nsenter --net="/run/netns/$NS_P" python3 benches/cni_plugins.py time -n "$N" \
    --label "vswitch (direct)" --conflist "$T/vswitch-net/10-vswitch.conflist" \
    --bin-dir "$T/vswitch-bin" --prefix "vswbc$$x")")
log "direct: $N x ADD+DEL, CNI bridge + portmap + firewall + tuning"
results+=("$(nsenter --net="/run/netns/$NS_P" python3 benches/cni_plugins.py time -n "$N" \
    --label "cni-bridge (direct)" --conflist "$T/default-net/87-podman.conflist" \
    --bin-dir "$CNI_BIN" --prefix "vswbc$$x")")

if [ "$WITH_PODMAN" = yes ]; then
    # Timing wrappers for the plugins podman runs at the top of a chain; the rest (host-local,
    # which bridge runs itself, loopback...) are links to the real ones.
    mkdir -p "$T/wrap"
    wrap() { # name, real binary
        printf '#!/bin/bash\nt0=$EPOCHREALTIME\n%q "$@"\nrc=$?\nt1=$EPOCHREALTIME\necho "$CNI_COMMAND %s $CNI_CONTAINERID $t0 $t1" >>%q\nexit $rc\n' \
            "$2" "$1" "$T/calls.log" >"$T/wrap/$1"
        chmod 755 "$T/wrap/$1"
    }
    for p in "$CNI_BIN"/*; do ln -s "$p" "$T/wrap/$(basename "$p")"; done
    for p in bridge portmap firewall tuning; do rm "$T/wrap/$p"; wrap "$p" "$CNI_BIN/$p"; done
    wrap vswitch "$T/vswitch-bin/vswitch"
    printf '#!/bin/sh\nexec %s --root %s "$@"\n' "$(command -v runc)" "$T/runc" >"$T/runc.sh"
    chmod 755 "$T/runc.sh"
    mkdir -p "$T/runc" "$T/libpod" "$T/vswitch/net.d" "$T/default/net.d"
    cp "$T/vswitch-net/10-vswitch.conflist" "$T/vswitch/net.d/"
    for conf in vswitch default; do
        # vswitch's daemon holds published ports itself: podman's own reservation off, as
        # README.md configures it; the default backend keeps podman's defaults.
        reserve=true
        [ "$conf" = vswitch ] && reserve=false
        cat >"$T/$conf/containers.conf" <<EOF
[network]
network_backend = "cni"
cni_plugin_dirs = ["$T/wrap"]
network_config_dir = "$T/$conf/net.d"

[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$T/events.log"
runtime = "runc"
tmp_dir = "$T/libpod"
image_copy_tmp_dir = "$T/tmp"
lock_type = "file"
enable_port_reservation = $reserve

[engine.runtimes]
runc = ["$T/runc.sh"]
EOF
    done
    printf '[storage]\ndriver = "vfs"\ngraphroot = "%s/root"\nrunroot = "%s/runroot"\n' "$T" "$T" >"$T/storage.conf"

    # The namespaces podman runs in: netns cnip-TAG, and a mount namespace whose /var/lib is a
    # tmpfs (its mount made private first, so the tmpfs cannot reach the host).
    mkfifo "$T/ready"
    nsenter --net="/run/netns/$NS_P" unshare --mount --propagation unchanged sh -c '
        mount --make-private "$(findmnt -n -o TARGET -T /var/lib)"
        mount -t tmpfs -o mode=0755,size=64m vswitch-bench /var/lib
        echo ready >"$1"
        exec sleep infinity' sh "$T/ready" &
    HOLDER=$!
    # Read-write, so that the open does not wait for the writer and the read can time out.
    read -r -t 20 _ <>"$T/ready" || die "the mount namespace for podman did not come up"

    log "podman: building the image from busybox-static"
    r=$T/rootfs
    mkdir -p "$r"/{bin,etc,proc,sys,dev,tmp,root,run,www}
    cp /bin/busybox "$r/bin/busybox"
    for a in $(/bin/busybox --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
    printf 'root:x:0:0:root:/root:/bin/sh\n' >"$r/etc/passwd"
    printf 'root:x:0:\n' >"$r/etc/group"
    printf 'nameserver 127.0.0.1\n' >"$r/etc/resolv.conf"
    echo bench >"$r/www/index.html"
    tar -C "$r" -cf "$T/rootfs.tar" .
    podman_in vswitch import "$T/rootfs.tar" localhost/vswitch-bench >/dev/null 2>&1

    for conf in vswitch default; do
        net=$conf; [ "$conf" = default ] && net=podman
        log "podman: $N x run -d --network $net -p 8080:80 + rm -f"
        : >"$T/calls.log"
        : >"$T/run.walls"
        : >"$T/rm.walls"
        for i in $(seq "$N"); do
            t0=$EPOCHREALTIME
            podman_in "$conf" run -d --name "b$i" --network "$net" -p 8080:80 \
                --cgroup-parent "/$TAG" --ulimit nofile=20000:20000 --ulimit nproc=32768:32768 \
                localhost/vswitch-bench httpd -f -p 80 -h /www >/dev/null
            t1=$EPOCHREALTIME
            podman_in "$conf" rm --force --time 0 "b$i" >/dev/null
            t2=$EPOCHREALTIME
            awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}' >>"$T/run.walls"
            awk -v a="$t1" -v b="$t2" 'BEGIN {print b - a}' >>"$T/rm.walls"
        done
        results+=("$(python3 benches/cni_plugins.py stats --label "$net (podman)" <"$T/calls.log")")
        results+=("$(python3 benches/cni_plugins.py walls --label "$net: podman run -d" <"$T/run.walls")")
        results+=("$(python3 benches/cni_plugins.py walls --label "$net: podman rm -f" <"$T/rm.walls")")
        [ "$conf" = default ] && cp "$T/calls.log" "$T/calls.default.log"
    done
fi

# The table, and where the figures come from.
printf '%s\n' "${results[@]}" | python3 benches/cni_plugins.py table
echo
echo "ms. $(date -u +%F), $(nproc) cores ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -n1)), kernel $(uname -r),"
echo "$("$VSWITCH" --version) at $(git rev-parse --short HEAD 2>/dev/null || echo '?'), podman $(podman --version 2>/dev/null | awk '{print $3}'),"
echo "containernetworking-plugins $(dpkg-query -W -f='${Version}' containernetworking-plugins 2>/dev/null || echo '?')."
