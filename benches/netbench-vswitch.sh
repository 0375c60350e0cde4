#!/usr/bin/env bash
# netbench-vswitch.sh - attach plugin so that ../shared/netbench.sh measures vswitch.
#
#   netbench.sh -r 3 -a benches/netbench-vswitch.sh l2:vswitch kbridge        # c1 -> c2
#   netbench.sh -r 3 -a benches/netbench-vswitch.sh wan:vswitch kbridge-nat slirp pasta
#
# l2:  `vswitch run` in $NB_NS_HOST (TAP vsw0 holds $NB_GW_CIDR), c1 and c2 plugged by netns path
#      with the addresses netbench expects.
# wan: the same daemon, only c1 plugged; c1 reaches $NB_TARGET (198.51.100.2, in $NB_NS_WAN, which
#      has no route back to the containers) through vswitch's own NAT. The host netns keeps
#      ip_forward=0 and has no nftables rule (checked), so nothing but vswitch can carry the traffic.
#
# Contract (netbench.sh PLUGINS): called as `up` / `down` with NB_* in the environment; the daemon
# runs inside $NB_NS_HOST and its PID is appended to $NB_PIDFILE. Env knobs:
#   VSWITCH           the binary (default: target/release/vswitch of this checkout)
#   VSWITCH_RUN_ARGS  extra arguments for `vswitch run`, e.g. "--workers 2 --mtu 9000"
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
VSWITCH=${VSWITCH:-$HERE/../target/release/vswitch}
CTL=$NB_RUNDIR/vswitch.sock
PIDF=$NB_RUNDIR/vswitch.pid

vsw() { timeout -k 2 15 "$VSWITCH" --control "$CTL" "$@"; }
die() { echo "netbench-vswitch: $*" >&2; exit 1; }

up() {
  [[ -x $VSWITCH ]] || die "no vswitch binary at $VSWITCH (cargo build --release, or set VSWITCH)"
  # vswitch names a container's host-side veth "vsw-" + the first 11 characters of its netns name
  [[ $NB_TOPO != l2 || ${NB_NS_C1:0:11} != "${NB_NS_C2:0:11}" ]] ||
    die "netns names $NB_NS_C1 and $NB_NS_C2 share their first 11 characters (use a shorter NB_PREFIX)"
  local subnet
  subnet=$(python3 -c 'import ipaddress, sys; print(ipaddress.ip_interface(sys.argv[1]).network)' "$NB_GW_CIDR")
  # shellcheck disable=SC2086  # VSWITCH_RUN_ARGS is a list of words
  ip netns exec "$NB_NS_HOST" "$VSWITCH" run --subnet "$subnet" --gateway "${NB_GW_CIDR%/*}" \
    --control "$CTL" ${VSWITCH_RUN_ARGS:-} >"$NB_RUNDIR/vswitch.log" 2>&1 </dev/null &
  local pid=$! i   # `ip netns exec` execs the daemon: $! is the daemon itself
  echo "$pid" >>"$NB_PIDFILE"; echo "$pid" >"$PIDF"
  for i in $(seq 100); do
    vsw ls >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || die "vswitch exited: $(tail -3 "$NB_RUNDIR/vswitch.log")"
    sleep 0.1
  done
  vsw ls >/dev/null || die "vswitch not ready after 10 s: $(tail -3 "$NB_RUNDIR/vswitch.log")"

  vsw plug --netns "/run/netns/$NB_NS_C1" --ip "${NB_C1_CIDR%/*}"
  if [[ $NB_TOPO == l2 ]]; then
    vsw plug --netns "/run/netns/$NB_NS_C2" --ip "${NB_C2_CIDR%/*}"
  else
    ip netns exec "$NB_NS_HOST" sysctl -q -w net.ipv4.ip_forward=0
    if command -v nft >/dev/null && [[ -n $(ip netns exec "$NB_NS_HOST" nft list ruleset 2>/dev/null) ]]; then
      die "the host netns has nftables rules; the wan scenario must go through vswitch's NAT alone"
    fi
  fi
  vsw ls
}

down() {  # stop the daemon gracefully (it unplugs and deletes its links); the harness kills the rest
  local pid i
  if [[ -s $PIDF ]]; then
    pid=$(cat "$PIDF")
    vsw ls >"$NB_RUNDIR/vswitch-ls-end.txt" 2>&1 || true
    if kill -TERM "$pid" 2>/dev/null; then
      for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  fi
  rm -f "$CTL" "$PIDF"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down   (an attach plugin for netbench.sh -a)" >&2; exit 2 ;;
esac
