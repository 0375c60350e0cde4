#!/usr/bin/env bash
# benches/e2e.sh - end-to-end datapath benchmark of vswitch, side by side with the Linux kernel
# bridge (and vde_switch where installed) in the same run, between network namespaces.
#
# USAGE (as root)
#   benches/e2e.sh [options]              # L2: container c1 -> container c2 (10.1.1.11 -> .12)
#   benches/e2e.sh --wan [options]        # WAN: c1 -> 198.51.100.2 in netns "wan", through NAT
#   benches/e2e.sh check                  # tools, versions, then exit
#   benches/e2e.sh cleanup                # delete namespaces left by a killed run (SIGKILL)
#
#   e.g.  benches/e2e.sh                          # 3 interleaved runs, every metric, ~15 min
#         benches/e2e.sh -r 1 -t 3                # quick look, ~3 min
#         benches/e2e.sh -r 5 -m tcp1,tcp4 -s vswitch,kbridge
#         benches/e2e.sh --wan -r 3
#
# SCENARIOS (-s, comma-separated; default: every one whose tools are installed)
#   L2 mode:
#     vswitch      daemon in netns host (TAP vsw0 = 10.1.1.1/24), c1 and c2 plugged with --netns
#     vswitch-nofp the same with --no-fast-path: every frame through the daemon's workers
#     vswitch-metrics, vswitch-nofp-metrics  the same two with `run --metrics 127.0.0.1:9477` (in
#                  host) and /metrics scraped every second during the run; only when named in -s
#     vswitch-nofp-cap  vswitch-nofp with `vswitch capture` running on another port (the TAP),
#                  to /dev/null: what a capture costs the ports it does not capture (not default)
#     vswitch-cap  vswitch with `vswitch capture` of c2's port to /dev/null: the fast path steps
#                  aside for it, the daemon switches and copies c2's frames (not default)
#     vswitch-base (both modes, with --baseline PATH) the vswitch scenario with another binary,
#                  e.g. a build of the commit before a change, for before/after ratios from one run
#     vswitch-nofp-base (both modes, with --baseline PATH, only when named in -s) the same for
#                  vswitch-nofp
#     kbridge      Docker-bridge style: c1, c2 each a veth into Linux bridge br0 (10.1.1.1/24) in host
#     vde          vde_switch in host with 3 taps: one stays in host (10.1.1.1/24), two moved to c1/c2
#   WAN mode (--wan): host has wan0 198.51.100.1/24 <-veth-> wan:eth0 198.51.100.2/24 (the server;
#   wan has no route back to 10.1.1.0/24, so only NAT can work)
#     vswitch      vswitch's own NAT, host ip_forward=0, no firewall rule anywhere
#     vswitch-relay the same with `run --tcp-nat relay`: outgoing TCP relayed through the
#                  host's sockets (the default translates it in the kernel)
#     vswitch-nofp the same with --no-fast-path: every frame through the daemon, the NAT's
#                  through its sockets, nothing translated in the kernel (only when named in -s)
#     kbridge-nat  c1 -> br0 (10.1.1.1) -> host ip_forward=1 + nftables masquerade -> wan
#     slirp        slirp4netns against c1 (podman-like flags)
#     pasta        pasta (passt) against c1 (podman-like flags)
#
# METRICS (-m, comma-separated keys; default: all; host/hostr are L2 only)
#   tcp1   tcp_1stream      Gbit/s   iperf3 -t SEC, 1 stream c1 -> server (receiver throughput)
#          daemon_cpu_per_gb cpu-s/GB daemon CPU (utime+stime from /proc/PID/stat) during tcp1,
#                                    per GB of TCP payload delivered (daemon scenarios only)
#          daemon_cpu_tcp1  %core    the same CPU time as a share of one core over the transfer
#   tcp1r  tcp_1stream_rev  Gbit/s   iperf3 -R: server -> c1 (the "download" direction)
#   tcp4   tcp_4stream      Gbit/s   iperf3 -P 4
#          tcp4_retrans     count    segments the senders retransmitted (reordering shows here)
#   udp64  udp64_rx_rate    pkt/s    iperf3 -u -l 64 -b 0: datagrams received per second
#          udp64_tx_rate    pkt/s    datagrams sent per second
#          udp64_loss       %        (sent - received) / sent
#          udp64_switch_loss %       vswitch scenarios: datagrams lost at the switch's ports
#                                    (their DROPS in `vswitch ls`, and what the host ends
#                                    received that the ports never read) / sent
#   udprr  udp_rtt_mean, udp_rtt_p99  us   sockperf ping-pong, 64 B, one message in flight
#   icmp   icmp_rtt_mean, icmp_rtt_p99 us  ping -c 200 -i 0.005
#   conn   tcp_conn_rate    conn/s   connect()+close() loop for -c SEC, one at a time; the server
#          tcp_conn_fail    count    closes first (a C client and server, e2e_conn.c, compiled with
#                                    cc; without cc the python ones, where the client closes first)
#   crr    tcp_crr_rate     conn/s   connect + 1-byte request/response + close (netperf TCP_CRR)
#          tcp_crr_fail     count
#   crrs   tcp_crr_sf_rate  conn/s   sustained crr, server closes first: a burst of crr to one server
#          tcp_crr_sf_burst conn/s   port for --churn SEC (its rate: _burst), then crr to another
#          tcp_crr_sf_fail  count    port for --churn SEC (_rate): what finished connections leave
#                                    behind must not slow the next ones (issue 20; needs cc)
#   crrc   tcp_crr_cf_rate, tcp_crr_cf_burst, tcp_crr_cf_fail: the same, the client closes first
#   host   host_tcp         Gbit/s   iperf3 from netns host to c1: through the TAP for vswitch,
#                                    through br0 for kbridge, through the host tap for vde
#   hostr  host_tcp_rev     Gbit/s   the same, c1 -> host
#   hosticmp host_icmp_rtt_mean, host_icmp_rtt_p99 us  ping from netns host to c1, from each CPU
#                                    in turn (taskset; -c PING_COUNT/cores each): a ping the host
#                                    sends from any CPU (item 4: every frame to or from the TAP)
#   Always, for daemon scenarios: daemon_idle_cpu (%core over 2 s with no traffic); for vswitch, at
#   the end of the run: switch_drops (sum of the DROPS column of `vswitch ls`) and switch_unread
#   (frames the kernel handed to the switch's ports, host veth RX / TAP TX, that it never read).
#
# OPTIONS
#   -r N         runs (default 3); runs are interleaved: run 1 of every scenario, then run 2, ...;
#                every run builds and destroys its own namespaces
#   -t SEC       iperf3 duration (default 10)
#   -c SEC       connection-rate duration (default 5)
#   -m LIST      metric keys (above)
#   -s LIST      scenarios (above)
#   -o DIR       output directory (default /tmp/vswitch-e2e-DATE): summary.md, raw.tsv, meta.txt,
#                commands.log, logs/SCENARIO.runN/ (iperf3 JSON, ping, sockperf, daemon logs)
#   --mtu N      MTU of every container link, bridge, tap, TAP and of the wan link (default 1500;
#                slirp/pasta default to 65520 like podman unless --mtu is given)
#   --wan        WAN mode (see SCENARIOS)
#   --workers N  passed to `vswitch run`
#   --vswitch P  the vswitch binary (default: target/release/vswitch, built if missing)
#   --churn SEC  burst and measured phase of crrs/crrc (default 30)
#   --baseline P a second vswitch binary, run as scenario vswitch-base (add it to -s)
#   --busy       a busy host (issue 16): 64 more containers plugged (vswitch scenarios; kbridge and
#                kbridge-nat: 64 more veths in br0) and, in WAN mode, 10,000 idle UDP flows from five of those
#                (2,000 each; from c1 for slirp and pasta, which have no other container)
#                to a UDP echo server in wan, each refreshed every 50 s (every WAN scenario); vswitch
#                then runs with --max-flows 20000 (the default follows the descriptor limit);
#                env BUSY_PORTS (64) and BUSY_FLOWS (10000) change the counts
#   env: E2E_SOCKPERF_SEC (5), E2E_PING_COUNT (200), E2E_PING_INTERVAL (0.005)
#        E2E_VSWITCH_ARGS, E2E_BASELINE_ARGS: more `vswitch run` flags for the vswitch scenarios
#        and the *-base ones (A/B of a flag: --baseline target/release/vswitch and one of them)
#
# OUTPUT  stdout: a markdown table, median over the runs of each metric for each scenario, and the
#   ratio vswitch/kbridge (WAN: vswitch/kbridge-nat and vswitch/slirp) with issue 4's targets.
#   Compare ratios from one run; absolute numbers move with the machine and its load.
#   stderr: progress. Exit status: 0 ok; 5 a run's setup failed; 3/4 cleanup failed or the root
#   netns changed; 1 usage/precondition; 130 interrupted (cleanup still runs).
#
# ISOLATION  Traffic flows only between namespaces this script creates: host-TAG, c1-TAG, c2-TAG,
#   wan-TAG with TAG=vswb<PID> (role first: vswitch names a host-side veth "vsw-" + the first 11
#   characters of the netns name, so the names must differ early). Nothing is added to the root
#   namespace (checked at exit). On exit, failure or Ctrl-C every started process is stopped and the
#   namespaces are deleted. Every traffic command runs under `timeout`.
set -euo pipefail

PROG=${0##*/}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
TAG=vswb$$
NS_HOST=host-$TAG NS_C1=c1-$TAG NS_C2=c2-$TAG NS_WAN=wan-$TAG
ALL_NS=("$NS_HOST" "$NS_C1" "$NS_C2" "$NS_WAN")
busy_ns() { printf 'b%02d-%s' "$1" "$TAG"; }   # role first: vswitch names veths by the first 11 characters
MODE=l2 RUNS=3 DUR=10 CONN_DUR=5 METRICS_ARG= SCEN_ARG= OUTDIR= MTU= WORKERS=
VSWITCH=${VSWITCH:-$REPO/target/release/vswitch}
SOCKPERF_SEC=${E2E_SOCKPERF_SEC:-5} PING_COUNT=${E2E_PING_COUNT:-200}
PING_INTERVAL=${E2E_PING_INTERVAL:-0.005} IDLE_SEC=2
SUBNET=10.1.1.0/24 GW=10.1.1.1 C1_IP=10.1.1.11 C2_IP=10.1.1.12
HOST_WAN_CIDR=198.51.100.1/24 WAN_SRV_IP=198.51.100.2 WAN_GW_IP=198.51.100.254
P_IPERF=5201 P_CONN=5301 P_CRR=5302 P_SOCKPERF=11111
P_SF_A=5311 P_SF_B=5312 P_CF_A=5321 P_CF_B=5322 CHURN_SEC=30 CONNBIN= BASELINE=
BUSY=0 BUSY_PORTS=${BUSY_PORTS:-64} BUSY_FLOWS=${BUSY_FLOWS:-10000} P_IDLE=5401
PY=/usr/bin/python3; [[ -x $PY ]] || PY=$(command -v python3 || true)
CLK_TCK=$(getconf CLK_TCK)

L2_SCENARIOS=(vswitch vswitch-nofp vswitch-base kbridge vde)
L2_OPT_IN=(vswitch-nofp-cap vswitch-cap vswitch-metrics vswitch-nofp-metrics vswitch-nofp-base)   # only when named in -s
METRICS_ADDR=127.0.0.1:9477
WAN_SCENARIOS=(vswitch vswitch-relay vswitch-base kbridge-nat slirp pasta)
WAN_OPT_IN=(vswitch-nofp vswitch-nofp-base)   # only when named in -s
L2_METRICS=tcp1,tcp1r,tcp4,udp64,udprr,icmp,conn,crr,host,hostr,hosticmp
WAN_METRICS=tcp1,tcp1r,tcp4,udp64,udprr,icmp,conn,crr,crrs,crrc
declare -A MNAMES=([tcp1]="tcp_1stream:Gbit/s" [tcp1r]="tcp_1stream_rev:Gbit/s"
  [tcp4]="tcp_4stream:Gbit/s tcp4_retrans:count" [udp64]="udp64_rx_rate:pkt/s udp64_tx_rate:pkt/s udp64_loss:%"
  [udprr]="udp_rtt_mean:us udp_rtt_p99:us" [icmp]="icmp_rtt_mean:us icmp_rtt_p99:us"
  [conn]="tcp_conn_rate:conn/s tcp_conn_fail:count" [crr]="tcp_crr_rate:conn/s tcp_crr_fail:count"
  [crrs]="tcp_crr_sf_burst:conn/s tcp_crr_sf_rate:conn/s tcp_crr_sf_fail:count"
  [crrc]="tcp_crr_cf_burst:conn/s tcp_crr_cf_rate:conn/s tcp_crr_cf_fail:count"
  [host]="host_tcp:Gbit/s" [hostr]="host_tcp_rev:Gbit/s"
  [hosticmp]="host_icmp_rtt_mean:us host_icmp_rtt_p99:us")

log()  { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
warn() { printf '[%s] WARN: %s\n' "$(date +%T)" "$*" >&2; }
die()  { printf '[%s] ERROR: %s\n' "$(date +%T)" "$*" >&2; exit 1; }
usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit "${1:-0}"; }

# ------------------------------------------------------------------------------ tools
declare -A APT=([ip]=iproute2 [ss]=iproute2 [iperf3]=iperf3 [timeout]=coreutils [python3]=python3
  [ping]=iputils-ping [sockperf]=sockperf [nft]=nftables [vde_switch]=vde2
  [slirp4netns]=slirp4netns [pasta]=passt [cargo]="a Rust toolchain (see scripts/lib.sh)")
have() { command -v "$1" >/dev/null 2>&1; }

check_tools() {  # prints a tool table; dies if a required one is missing
  local t missing=() req=(ip ss iperf3 timeout python3) opt=(ping sockperf nft vde_switch slirp4netns pasta)
  for t in "${req[@]}" "${opt[@]}"; do
    local path; path=$(command -v "$t" || echo "MISSING (${APT[$t]})"); [[ $t == python3 && -n $PY ]] && path=$PY
    printf '  %-12s %s\n' "$t" "$path" >&2
    have "$t" || missing+=("$t")
  done
  if ((${#missing[@]})); then
    local pkgs=() m
    for m in "${missing[@]}"; do [[ ${APT[$m]} == *" "* ]] || pkgs+=("${APT[$m]}"); done
    warn "missing: ${missing[*]} -> apt-get install ${pkgs[*]}"
    warn "  (ping: icmp metric; sockperf: udprr; nft: kbridge-nat; vde2: vde; slirp4netns/passt: --wan)"
  fi
  for t in "${req[@]}"; do have "$t" || die "$t is required"; done
}

versions() {
  echo "nproc: $(nproc)"; echo "kernel: $(uname -r)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "vswitch: $VSWITCH ($("$VSWITCH" --version 2>&1 | head -1); git $(git -C "$REPO" describe --always --dirty 2>/dev/null || echo '?'))"
  [[ -n $BASELINE ]] && echo "vswitch-base: $BASELINE ($("$BASELINE" --version 2>&1 | head -1))"
  echo "iperf3: $(iperf3 --version 2>&1 | head -1)"
  have sockperf && echo "sockperf: $(sockperf --version 2>&1 | head -1)"
  have vde_switch && echo "vde_switch: $(vde_switch --version 2>&1 | head -1)"
  have slirp4netns && echo "slirp4netns: $(slirp4netns --version 2>&1 | head -1)"
  have pasta && echo "pasta: $(dpkg-query -W -f '${Version}' passt 2>/dev/null || pasta --version 2>&1 | head -1)"
  have nft && echo "nft: $(nft --version 2>&1)"
  echo "iproute2: $(ip -V 2>&1)"; echo "python: $("$PY" --version 2>&1)"
  echo "br_netfilter loaded: $(grep -qw br_netfilter /proc/modules && echo yes || echo no)"
}

ensure_vswitch() {
  [[ -x $VSWITCH ]] && return 0
  [[ $VSWITCH == "$REPO/target/release/vswitch" ]] || die "no executable vswitch at $VSWITCH"
  have cargo || die "target/release/vswitch missing and no cargo: build it with 'cargo build --release'"
  log "building vswitch (cargo build --release)"
  (cd "$REPO" && cargo build --release --bin vswitch >&2) || die "cargo build --release failed"
}
warn_if_stale() {
  [[ $VSWITCH == "$REPO/target/release/vswitch" ]] || return 0
  local newer; newer=$(find "$REPO"/cli "$REPO"/switch "$REPO"/nat -name '*.rs' -newer "$VSWITCH" 2>/dev/null | head -3)
  [[ -z $newer ]] || warn "sources newer than $VSWITCH (${newer//$'\n'/ } ...): run 'cargo build --release'?"
}

# ------------------------------------------------------------------------------ state & cleanup
ROOT_SNAP= RUNDIR= RUN_PID= ABORTED=0

track() { echo "$1" >>"$RUNDIR/pids"; }   # every PID we start is recorded here

kill_pids() {  # TERM the given PIDs (ours), wait up to 3 s, KILL survivors
  local p i alive=() left
  for p in "$@"; do [[ $p =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null && alive+=("$p"); done
  ((${#alive[@]})) || return 0
  kill -TERM "${alive[@]}" 2>/dev/null || true
  for i in $(seq 30); do
    left=0
    for p in "${alive[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
    ((left)) || break
    sleep 0.1
  done
  for p in "${alive[@]}"; do kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null; done
  for p in "${alive[@]}"; do wait "$p" 2>/dev/null; done
  return 0
}

ns_exists() { [[ -e /run/netns/$1 ]]; }

teardown_run() {  # idempotent: our PIDs (daemon first, it unplugs), leftovers in our netns, netns
  set +eu
  [[ -n $RUNDIR && -s $RUNDIR/daemon.pid ]] && kill_pids "$(cat "$RUNDIR/daemon.pid")"
  [[ -n $RUNDIR && -s $RUNDIR/pids ]] && kill_pids $(cat "$RUNDIR/pids")
  [[ -n $RUNDIR ]] && : >"$RUNDIR/pids" && rm -f "$RUNDIR/daemon.pid"
  local ns
  for ns in "${ALL_NS[@]}"; do ns_exists "$ns" && kill_pids $(ip netns pids "$ns" 2>/dev/null); done
  for ns in "${ALL_NS[@]}"; do ns_exists "$ns" && ip netns del "$ns" 2>/dev/null; done
  # The resolv.conf `vswitch plug --netns` wrote, left behind if the daemon died before unplugging.
  for ns in "${ALL_NS[@]}"; do [[ -d /etc/netns/$ns ]] && rm -rf "/etc/netns/$ns"; done
  [[ -n $RUNDIR ]] && rm -rf "$RUNDIR/vde.ctl" "$RUNDIR/ctl.sock"
  set -eu
}

root_snapshot() {  # what must not change in the root netns
  { ip -o link show | awk -F': ' '{print "link", $2}' | sed 's/@.*//'
    ip -o addr show | awk '{print "addr", $2, $3, $4}'
    ip route show table all | sed 's/^/route4 /'
    ip -6 route show table all 2>/dev/null | grep -vE 'expires|^ *$' | sed 's/^/route6 /' || true
    for s in net.ipv4.ip_forward net.ipv4.tcp_tw_reuse net.ipv4.ip_local_port_range; do
      echo "sysctl $s=$(sysctl -n $s 2>/dev/null | tr '\t' ' ')"; done
  } | sort
}

on_exit() {
  local rc=$? ns left=()
  set +eu
  trap - EXIT INT TERM
  [[ -n $RUN_PID ]] && kill_pids "$RUN_PID"
  if [[ -n $ROOT_SNAP ]]; then
    ((rc)) && warn "exiting with rc=$rc; cleaning up"
    teardown_run
    for ns in "${ALL_NS[@]}"; do ns_exists "$ns" && left+=("$ns"); done
    ((${#left[@]})) && { warn "namespaces left behind: ${left[*]}"; rc=3; }
    if ! diff <(printf '%s\n' "$ROOT_SNAP") <(root_snapshot) >"$OUTDIR/rootns.diff" 2>&1; then
      warn "ROOT NETNS CHANGED during the run (see $OUTDIR/rootns.diff)"; rc=4
    else
      log "check: root netns unchanged, no *-$TAG netns left"
    fi
  fi
  exit "$rc"
}

# ------------------------------------------------------------------------------ helpers
RUNLOG=/dev/null LOGP=/dev/null/x SCEN=- RUN=0 SRV_NS= TARGET= DAEMON_PID=
cmdlog() { printf '%s\n' "$*" >>"$OUTDIR/commands.log"; }

nsrun() {  # NS TIMEOUT cmd... : a command in a netns, under timeout, logged
  local ns=$1 tmo=$2; shift 2
  cmdlog "[$SCEN run $RUN] ip netns exec $ns $*    (timeout $tmo)"
  timeout -k 5 "$tmo" ip netns exec "$ns" "$@"
}
nsbg() {  # NAME NS TIMEOUT cmd... : a background server, output in logs/, sets BGPID
  local name=$1 ns=$2 tmo=$3; shift 3
  cmdlog "[$SCEN run $RUN] (bg) ip netns exec $ns $*    (timeout $tmo)"
  timeout -k 5 "$tmo" ip netns exec "$ns" "$@" >"$LOGP.$name.log" 2>&1 </dev/null &
  BGPID=$!
  track "$BGPID"
}
start_daemon() {  # NAME cmd... (run inside NS_HOST): sets DAEMON_PID to the daemon process itself
  local name=$1 tpid i p comm; shift
  nsbg "$name" "$NS_HOST" "$DAEMON_TMO" "$@"; tpid=$BGPID
  DAEMON_PID=
  for i in $(seq 50); do   # timeout's child is `ip netns exec`, which execs the daemon
    p=$(ps -o pid= --ppid "$tpid" | tr -d ' ' | head -1)
    comm=$(cat "/proc/$p/comm" 2>/dev/null) || comm=
    # until exec: "timeout", then "ip"; then the daemon (which may exec again: pasta -> passt.avx2)
    [[ -n $p && -n $comm && $comm != timeout && $comm != ip ]] && { DAEMON_PID=$p; break; }
    sleep 0.1
  done
  [[ -n $DAEMON_PID ]] || { warn "$name did not start (see $LOGP.$name.log)"; return 1; }
  echo "$DAEMON_PID" >"$RUNDIR/daemon.pid"
}
wait_for() {  # SECS cmd... : poll until cmd succeeds
  local secs=$1 i; shift
  for i in $(seq $((secs * 10))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  return 1
}
listening() { [[ -n $(ip netns exec "$1" ss "$2" "sport = :$3" 2>/dev/null) ]]; }  # NS FLAGS PORT
wait_listen() {  # NS tcp|udp PORT
  local flag=-Hltn; [[ $2 == udp ]] && flag=-Hlun
  wait_for 10 listening "$1" "$flag" "$3"
}
stop_bg() {  # PID: let a one-shot server finish, then make sure it is gone
  local i; for i in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill_pids "$1"
}
ns_create() {
  ip netns add "$1"
  ip -n "$1" link set lo up
  ip netns exec "$1" sysctl -q -w net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range="10000 65000" \
    net.ipv4.ping_group_range="0 2147483647"
}
emit() {  # METRIC VALUE UNIT
  printf '%s\t%s\t%s\t%s\t%s\n' "$RUN" "$SCEN" "$1" "$2" "$3" >>"$OUTDIR/raw.tsv"
  log "  $SCEN run $RUN: $1 = $2 $3"
}
cpu_ticks() {  # PID -> utime+stime of the whole process, in clock ticks
  local s cut='*) '; s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  set -- ${s##$cut}   # fields from 3 (state) on: utime is field 14, stime 15
  echo $(( ${12} + ${13} ))
}
H()  { "$PY" "$OUTDIR/e2e_helper.py" "$@"; }
HN() { local ns=$1 tmo=$2; shift 2; nsrun "$ns" "$tmo" "$PY" "$OUTDIR/e2e_helper.py" "$@"; }
vsw() { cmdlog "[$SCEN run $RUN] vswitch --control $RUNDIR/ctl.sock $*"; timeout -k 2 15 "$VSWITCH" --control "$RUNDIR/ctl.sock" "$@"; }

# ------------------------------------------------------------------------------ python helper
write_helper() {
cat >"$OUTDIR/e2e_helper.py" <<'PYEOF'
import json, math, os, re, socket, statistics, sys, time

def pct(vals, p):
    s = sorted(vals)
    return s[max(0, math.ceil(p / 100.0 * len(s)) - 1)]

def load_iperf(path):
    d = json.load(open(path))
    if d.get('error'):
        sys.exit('iperf3 error: ' + d['error'])
    return d

def iperf_tcp(path):  # -> Gbit/s bytes seconds (receiver side), retransmitted segments (sender)
    end = load_iperf(path)['end']
    r = end['sum_received']
    retrans = end['sum_sent'].get('retransmits', 0)
    print('%.4f %d %.3f %d' % (r['bits_per_second'] / 1e9, r['bytes'], r['seconds'], retrans))

def iperf_udp(path):  # -> tx_pps rx_pps loss%
    d = load_iperf(path)['end']
    s, r = d['sum_sent'], d['sum_received']
    rx = r['packets'] - r['lost_packets']
    loss = 100.0 * (s['packets'] - rx) / s['packets'] if s['packets'] else 100.0
    print('%.0f %.0f %.3f' % (s['packets'] / s['seconds'], rx / r['seconds'], max(0.0, loss)))

def switch_loss(ls0, links0, ls1, links1, iperf):  # -> % of the datagrams sent lost at the ports
    lost = sum(drops_unread(ls1, links1)) - sum(drops_unread(ls0, links0))
    sent = load_iperf(iperf)['end']['sum_sent']['packets']
    print('%.3f' % (100.0 * max(0, lost) / sent if sent else 0.0))

def ping(path, count):
    t = [float(m.group(1)) * 1000 for m in re.finditer(r'time=([0-9.]+) ms', open(path).read())]
    if len(t) < 0.5 * int(count):
        sys.exit('only %d/%s replies' % (len(t), count))
    print('%.1f %.1f %d' % (statistics.mean(t), pct(t, 99), len(t)))

def sockperf(path):
    txt = re.sub(r'\x1b\[[0-9;]*m', '', open(path).read())
    avg = re.search(r'avg-(?:rtt|lat)=([0-9.]+)', txt)
    p99 = re.search(r'percentile 99\.000 =\s*([0-9.]+)', txt)
    if not (avg and p99):
        sys.exit('cannot parse sockperf output')
    print('%s %s' % (avg.group(1), p99.group(1)))

def drops(ls_path, links_path):  # -> "DROPS UNREAD"
    d, unread = drops_unread(ls_path, links_path)
    print(d, max(0, unread))

def drops_unread(ls_path, links_path):
    """`vswitch ls --json` + `ip -j -s link` of netns host -> (DROPS, UNREAD): the switch's own drop
    counter, and the frames the kernel delivered to the switch's ports that the switch never read
    (AF_PACKET socket or TAP queue overflow, which the DROPS column does not see)."""
    ports = json.load(open(ls_path))
    links = {l['ifname']: l['stats64'] for l in json.load(open(links_path))}
    unread = 0
    for p in ports:
        st = links.get(p.get('host_ifname'))
        if not st:
            continue
        if p.get('kind') == 'tap':   # the host writes into the TAP: its TX side feeds the switch
            unread += st['tx']['packets'] - p['rx_frames'] + st['tx']['dropped']
        else:                        # the container sends: the host end's RX side feeds the switch
            unread += st['rx']['packets'] - p['rx_frames']
    return sum(int(p.get('drops', 0)) for p in ports), unread

def conn_server(mode, port):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(('0.0.0.0', int(port)))
    srv.listen(4096)
    while True:
        c, _ = srv.accept()
        try:
            if mode == 'crr':
                c.settimeout(2)
                d = c.recv(1)
                if d:
                    c.sendall(d)
        except OSError:
            pass
        c.close()

def one(mode, host, port, tmo):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(tmo)
    try:
        s.connect((host, port))
        if mode == 'crr':
            s.sendall(b'x')
            if s.recv(1) != b'x':
                raise OSError('bad reply')
    finally:
        s.close()

def conn_client(mode, host, port, dur):
    port, dur = int(port), float(dur)
    n = fail = 0
    t0 = time.monotonic()
    end = t0 + dur
    while time.monotonic() < end:
        try:
            one(mode, host, port, 2.0)
            n += 1
        except OSError:
            fail += 1
    print('%.1f %d %d' % (n / (time.monotonic() - t0), n, fail))

def udp_echo(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('0.0.0.0', int(port)))
    while True:
        d, a = s.recvfrom(2048)
        s.sendto(d, a)

def idle_flows(host, port, n):
    # n UDP sockets, one flow each, answered once, then refreshed every 50 s (replied UDP flows
    # live 120 s); prints "ready ANSWERED/N" once all had their chance
    import resource, select
    n = int(n)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, n + 64)), hard))
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((host, int(port)))
        s.setblocking(False)
        socks.append(s)
    ep = select.epoll()
    for s in socks:
        ep.register(s.fileno(), select.EPOLLIN)
    answered = set()
    while True:
        for i in range(0, n, 500):
            for s in socks[i:i + 500]:
                try: s.send(b'idle')
                except OSError: pass
            time.sleep(0.01)
        end = time.monotonic() + 10
        while time.monotonic() < end and len(answered) < n:
            for fd, _ in ep.poll(0.5):
                try: os.read(fd, 64); answered.add(fd)
                except OSError: pass
        print('ready %d/%d flows answered' % (len(answered), n), flush=True)
        time.sleep(50)

def probe(mode, host, port, secs, tmo='1.0'):
    end = time.monotonic() + float(secs)
    err = None
    while time.monotonic() < end:
        try:
            one(mode, host, int(port), float(tmo))
            return
        except OSError as e:
            err = e
            time.sleep(0.2)
    sys.exit('probe %s:%s failed: %s' % (host, port, err))

# ---- summary: medians, ratios vswitch/reference, issue 4 targets
ORDER = [  # metric, better ('hi', 'lo' or '' = informative)
    ('tcp_1stream', 'hi'), ('tcp_1stream_rev', 'hi'), ('tcp_4stream', 'hi'), ('tcp4_retrans', 'lo'),
    ('udp64_rx_rate', 'hi'), ('udp64_tx_rate', ''), ('udp64_loss', 'lo'), ('udp64_switch_loss', 'lo'),
    ('udp_rtt_mean', 'lo'), ('udp_rtt_p99', 'lo'), ('icmp_rtt_mean', 'lo'), ('icmp_rtt_p99', 'lo'),
    ('tcp_conn_rate', 'hi'), ('tcp_conn_fail', 'lo'), ('tcp_crr_rate', 'hi'), ('tcp_crr_fail', 'lo'),
    ('tcp_crr_sf_burst', 'hi'), ('tcp_crr_sf_rate', 'hi'), ('tcp_crr_sf_fail', 'lo'),
    ('tcp_crr_cf_burst', 'hi'), ('tcp_crr_cf_rate', 'hi'), ('tcp_crr_cf_fail', 'lo'),
    ('host_tcp', 'hi'), ('host_tcp_rev', 'hi'), ('host_icmp_rtt_mean', 'lo'), ('host_icmp_rtt_p99', 'lo'),
    ('daemon_cpu_per_gb', 'lo'), ('daemon_cpu_tcp1', 'lo'), ('daemon_idle_cpu', 'lo'),
    ('switch_drops', 'lo'), ('switch_unread', 'lo')]
# (op, value): 'ge'/'le' apply to the ratio vswitch/reference; 'abs_le' to vswitch's own value
TARGETS = {
    'kbridge': {'tcp_1stream': ('ge', 0.6), 'tcp_1stream_rev': ('ge', 0.6), 'tcp_4stream': ('ge', 0.6),
                'udp64_rx_rate': ('ge', 0.9), 'udp64_loss': ('abs_le', 1.0),
                'udp64_switch_loss': ('abs_le', 5.0),   # issue 16 item 4
                'udp_rtt_mean': ('le', 1.3), 'udp_rtt_p99': ('le', 1.3),
                'tcp_conn_rate': ('ge', 0.8), 'tcp_crr_rate': ('ge', 0.8),
                # issue 16 item 4 (the daemon-only datapath; the fast path meets them too)
                'icmp_rtt_mean': ('le', 1.3), 'host_tcp': ('ge', 0.9), 'host_tcp_rev': ('ge', 0.9),
                'host_icmp_rtt_mean': ('le', 1.3)},
    # Issue 16: NAT bulk >= 0.9x kernel NAT, connection rates >= 0.6x; issue 20: sustained crr.
    'kbridge-nat': {'tcp_1stream': ('ge', 0.9), 'tcp_1stream_rev': ('ge', 0.9), 'tcp_4stream': ('ge', 0.9),
                    'tcp_conn_rate': ('ge', 0.6), 'tcp_crr_rate': ('ge', 0.6),
                    'tcp_crr_sf_rate': ('ge', 0.6), 'tcp_crr_cf_rate': ('ge', 0.6)},
    'slirp': 'beat',   # NAT issue: at least slirp4netns on every metric
    'pasta': {'tcp_conn_rate': ('ge', 1.3), 'tcp_crr_rate': ('ge', 1.3),
              'tcp_crr_sf_rate': ('ge', 1.3), 'tcp_crr_cf_rate': ('ge', 1.3),
              'udp_rtt_mean': ('le', 0.9), 'icmp_rtt_mean': ('le', 0.9), 'udp64_rx_rate': ('ge', 1.2)},
}
TARGET_TXT = {'ge': '≥ %g', 'le': '≤ %g', 'abs_le': 'loss ≤ %g %%'}

def fmt(v):
    if v == int(v) and abs(v) < 1e15: return '%d' % v
    a = abs(v)
    if a >= 1000: return '%.0f' % v
    if a >= 100: return '%.1f' % v
    if a >= 10: return '%.2f' % v
    if a >= 0.01: return '%.3f' % v
    return '%.2g' % v

def target_of(ref, metric, better):
    t = TARGETS.get(ref, {})
    if t == 'beat':
        rate_or_time = metric.startswith(('tcp_', 'udp', 'icmp')) and not metric.endswith(('_fail', '_loss'))
        return {'hi': ('ge', 1.0), 'lo': ('le', 1.0)}.get(better) if rate_or_time else None
    return t.get(metric)

def summarize(raw, mdpath, scens, refs, header):
    scens, refs = scens.split(','), [r for r in refs.split(',') if r]
    vals, units = {}, {}
    for line in open(raw):
        run, scen, metric, val, unit = line.rstrip('\n').split('\t')
        units[metric] = unit
        lst = vals.setdefault((scen, metric), [])
        if val != 'NA':
            lst.append(float(val))
    med = {k: statistics.median(v) for k, v in vals.items() if v}
    known = [m for m, _ in ORDER] + sorted(m for m in units if m not in dict(ORDER))
    better = dict(ORDER)
    subjects = [s for s in scens if s.startswith('vswitch')]
    pairs = [(s, r) for s in subjects for r in refs if r in scens]
    hdr = '| metric | unit | better | ' + ' | '.join(scens)
    sep = '|---|---|:-:|' + '---:|' * len(scens)
    for s, r in pairs:
        hdr += ' | %s/%s | target' % (s, r)
        sep += '---:|:-:|'
    out = [hdr + ' |', sep]
    misses = []
    for m in known:
        if m not in units:
            continue
        b = better.get(m, '')
        row = '| %s | %s | %s | ' % (m, units[m], {'hi': 'higher', 'lo': 'lower'}.get(b, ''))
        cells = []
        for s in scens:
            if (s, m) in med: cells.append(fmt(med[(s, m)]))
            elif (s, m) in vals: cells.append('NA')
            else: cells.append('')
        row += ' | '.join(cells)
        for subject, r in pairs:
            v, ref = med.get((subject, m)), med.get((r, m))
            ratio = '%.2f' % (v / ref) if v is not None and ref else ''
            tgt, ok = target_of(r, m, b), ''
            if tgt and v is not None:
                op, x = tgt
                if op == 'abs_le': good = v <= x
                elif ratio: good = (v / ref >= x) if op == 'ge' else (v / ref <= x)
                else: good = None
                if good is not None:
                    ok = (TARGET_TXT[op] % x) + (' ok' if good else ' **MISSED**')
                    if not good: misses.append('%s %s vs %s' % (subject, m, r))
            elif tgt:
                ok = TARGET_TXT[tgt[0]] % tgt[1]
            row += ' | %s | %s' % (ratio, ok)
        out.append(row + ' |')
    detail = ['| scenario | metric | unit | median | min | max | n | all runs |',
              '|---|---|---|---:|---:|---:|---:|---|']
    for m in known:
        for s in scens:
            v = vals.get((s, m))
            if v is None: continue
            if v:
                detail.append('| %s | %s | %s | %s | %s | %s | %d | %s |' % (
                    s, m, units[m], fmt(statistics.median(v)), fmt(min(v)), fmt(max(v)), len(v),
                    ' '.join(fmt(x) for x in v)))
            else:
                detail.append('| %s | %s | %s | NA | | | 0 | |' % (s, m, units[m]))
    notes = ['', 'Medians over the runs. Ratios divide vswitch\'s median (vswitch-nofp: without the kernel fast path) by the reference\'s, both from this run;',
             '"better" says which direction is good (for lower-is-better metrics a ratio < 1 is a win).']
    if misses:
        notes.append('Targets missed: ' + ', '.join(misses) + '.')
    table = '\n'.join(out + notes)
    with open(mdpath, 'w') as f:
        f.write(open(header).read() + '\n' + table + '\n\n## Every run\n\n' + '\n'.join(detail) + '\n')
    print(table)

if __name__ == '__main__':
    cmd, args = sys.argv[1], sys.argv[2:]
    {'iperf-tcp': iperf_tcp, 'iperf-udp': iperf_udp, 'ping': ping, 'sockperf': sockperf,
     'drops': drops, 'switch-loss': switch_loss, 'conn-server': conn_server, 'conn-client': conn_client, 'probe': probe,
     'udp-echo': udp_echo, 'idle-flows': idle_flows,
     'summarize': summarize}[cmd](*args)
PYEOF
}

# ------------------------------------------------------------------------------ C connection client
# The python client tops out near 28k connections/s and closes first (its TIME_WAITs cap it at
# half its port range per second); this one is netbench's nbconn with the close order chosen.
write_conn_c() {
cat >"$OUTDIR/e2e_conn.c" <<'CEOF'
/* e2e_conn server cc|crr PORT server|client      (who closes first)
 * e2e_conn client cc|crr HOST PORT SECONDS server|client  -> "RATE OK FAILED" */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static void tmo(int fd, int sec) { struct timeval tv = {sec, 0}; setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv); setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv); }
int main(int argc, char **argv) {
  if (argc == 5 && !strcmp(argv[1], "server")) {
    int crr = !strcmp(argv[2], "crr"), sf = !strcmp(argv[4], "server"), one = 1, s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (void *)&a, sizeof a) || listen(s, 4096)) { perror("bind/listen"); return 1; }
    for (;;) {
      int c = accept(s, 0, 0); char b;
      if (c < 0) continue;
      tmo(c, 2);
      if (crr && recv(c, &b, 1, 0) == 1) send(c, &b, 1, MSG_NOSIGNAL);
      if (!sf) while (recv(c, &b, 1, 0) > 0) {}
      close(c);
    }
  }
  if (argc == 7 && !strcmp(argv[1], "client")) {
    int crr = !strcmp(argv[2], "crr"), sf = !strcmp(argv[6], "server"); long ok = 0, fail = 0;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[4]))};
    if (inet_pton(AF_INET, argv[3], &a.sin_addr) != 1) { fprintf(stderr, "bad host\n"); return 2; }
    double t0 = now(), end = t0 + atof(argv[5]);
    while (now() < end) {
      int s = socket(AF_INET, SOCK_STREAM, 0), good = 0; char b = 'x';
      tmo(s, 2);
      if (connect(s, (void *)&a, sizeof a) == 0) {
        good = 1;
        if (crr) good = send(s, &b, 1, MSG_NOSIGNAL) == 1 && recv(s, &b, 1, 0) == 1 && b == 'x';
        if (good && sf) good = recv(s, &b, 1, 0) == 0;   /* the server's close */
      }
      close(s);
      if (good) ok++; else fail++;
    }
    printf("%.1f %ld %ld\n", ok / (now() - t0), ok, fail);
    return 0;
  }
  fprintf(stderr, "usage: e2e_conn server cc|crr PORT server|client | client cc|crr HOST PORT SECONDS server|client\n");
  return 2;
}
CEOF
}

# ------------------------------------------------------------------------------ scenario setups
# Each setup_X runs under `set -e` after the base namespaces exist (host, c1 and c2 or wan) and
# leaves c1 able to reach $TARGET. Containers get eth0, an address in 10.1.1.0/24 and a default
# route via 10.1.1.1, as vswitch's `plug` does.
link_mtu() { [[ -n $MTU ]] && echo "mtu $MTU"; return 0; }

container_addr() {  # NS IP
  ip -n "$1" addr add "$2/24" dev eth0
  ip -n "$1" link set eth0 up
  ip -n "$1" route add default via "$GW"
}

start_vswitch() {
  local args=(run --subnet "$SUBNET" --control "$RUNDIR/ctl.sock")
  [[ -n $MTU ]] && args+=(--mtu "$MTU")
  [[ -n $WORKERS ]] && args+=(--workers "$WORKERS")
  [[ $SCEN == vswitch-nofp* ]] && args+=(--no-fast-path)
  [[ $SCEN == vswitch-relay ]] && args+=(--tcp-nat relay)
  [[ $SCEN == *-metrics ]] && args+=(--metrics "$METRICS_ADDR")
  ((BUSY)) && args+=(--max-flows 20000 --max-flows-per-container 20000)
  local bin=$VSWITCH extra=${E2E_VSWITCH_ARGS:-}
  [[ $SCEN == *-base ]] && bin=$BASELINE extra=${E2E_BASELINE_ARGS:-}
  # shellcheck disable=SC2206 # the flags are words
  [[ -n $extra ]] && args+=($extra)
  start_daemon vswitch "$bin" "${args[@]}"
  wait_for 10 vsw ls || { warn "vswitch not ready (see $LOGP.vswitch.log)"; return 1; }
  if [[ $SCEN == *-metrics ]]; then   # a Prometheus-like scraper: every second, the whole page
    nsbg scraper "$NS_HOST" "$DAEMON_TMO" bash -c \
      "while :; do curl -sS --max-time 5 -o '$LOGP.metrics.txt' http://$METRICS_ADDR/metrics; sleep 1; done"
    wait_for 10 test -s "$LOGP.metrics.txt" || { warn "no metrics scraped"; return 1; }
  fi
}
plug() {  # NS IP
  vsw plug --netns "/run/netns/$1" --ip "$2"
}

setup_vswitch() {
  start_vswitch
  plug "$NS_C1" "$C1_IP"
  if [[ $MODE == l2 ]]; then
    plug "$NS_C2" "$C2_IP"
  else   # NAT issue: the host forwards nothing and has no firewall rule; vswitch must do the NAT
    ip netns exec "$NS_HOST" sysctl -q -w net.ipv4.ip_forward=0
    if have nft && [[ -n $(ip netns exec "$NS_HOST" nft list ruleset 2>/dev/null) ]]; then
      warn "netns host has nftables rules"; return 1
    fi
  fi
}

setup_vswitch_nofp() { setup_vswitch; }
setup_vswitch_relay() { setup_vswitch; }
setup_vswitch_metrics() { setup_vswitch; }
setup_vswitch_nofp_metrics() { setup_vswitch; }

start_capture() {  # PORT: `vswitch capture PORT -w /dev/null` for the whole run, ready when it says so
  cmdlog "[$SCEN run $RUN] (bg) vswitch --control $RUNDIR/ctl.sock capture $1 -w /dev/null"
  timeout -k 5 "$DAEMON_TMO" "$VSWITCH" --control "$RUNDIR/ctl.sock" capture "$1" -w /dev/null \
    >"$LOGP.capture.log" 2>&1 </dev/null &
  track $!
  wait_for 10 grep -q capturing "$LOGP.capture.log" || { warn "the capture did not start (see $LOGP.capture.log)"; return 1; }
}
setup_vswitch_nofp_cap() { setup_vswitch; start_capture vsw0; }
setup_vswitch_cap() { setup_vswitch; start_capture "/run/netns/$NS_C2"; }
setup_vswitch_base() { setup_vswitch; }
setup_vswitch_nofp_base() { setup_vswitch; }

mk_bridge() {
  ip -n "$NS_HOST" link add br0 $(link_mtu) type bridge
  ip -n "$NS_HOST" addr add "$GW/24" dev br0
  ip -n "$NS_HOST" link set br0 up
}
mk_bridge_port() {  # NS HOST_IFNAME IP : a veth host:IFNAME (in br0) <-> NS:eth0
  ip -n "$NS_HOST" link add "$2" $(link_mtu) type veth peer name eth0 $(link_mtu) netns "$1"
  ip -n "$NS_HOST" link set "$2" master br0 up
  container_addr "$1" "$3"
}
setup_kbridge() {
  mk_bridge
  mk_bridge_port "$NS_C1" veth-c1 "$C1_IP"
  mk_bridge_port "$NS_C2" veth-c2 "$C2_IP"
}
setup_kbridge_nat() {
  mk_bridge
  mk_bridge_port "$NS_C1" veth-c1 "$C1_IP"
  ip netns exec "$NS_HOST" sysctl -q -w net.ipv4.ip_forward=1
  ip netns exec "$NS_HOST" nft -f - <<EOF
table ip e2e_nat {
  chain postrouting { type nat hook postrouting priority srcnat; policy accept;
    ip saddr $SUBNET oifname "wan0" masquerade; }
  chain forward { type filter hook forward priority filter; policy drop;
    ct state established,related accept; iifname "br0" oifname "wan0" accept; }
}
EOF
}

setup_vde() {  # tap 0 stays in host with the gateway address, taps 1 and 2 become c1/c2's eth0
  local i ns ip
  cmdlog "[$SCEN run $RUN] ip netns exec $NS_HOST vde_switch -s $RUNDIR/vde.ctl -t e2etap0 -t e2etap1 -t e2etap2 -d -p $RUNDIR/vde.pid"
  ip netns exec "$NS_HOST" vde_switch -s "$RUNDIR/vde.ctl" -t e2etap0 -t e2etap1 -t e2etap2 \
    -d -p "$RUNDIR/vde.pid" >"$LOGP.vde.log" 2>&1 </dev/null
  wait_for 5 test -s "$RUNDIR/vde.pid" || { warn "vde_switch did not start"; return 1; }
  DAEMON_PID=$(cat "$RUNDIR/vde.pid"); track "$DAEMON_PID"; echo "$DAEMON_PID" >"$RUNDIR/daemon.pid"
  for i in 0 1 2; do wait_for 5 ip -n "$NS_HOST" link show e2etap$i || { warn "tap e2etap$i missing"; return 1; }; done
  [[ -n $MTU ]] && ip -n "$NS_HOST" link set e2etap0 mtu "$MTU"
  ip -n "$NS_HOST" addr add "$GW/24" dev e2etap0
  ip -n "$NS_HOST" link set e2etap0 up
  for i in 1 2; do
    ns=$NS_C1 ip=$C1_IP; [[ $i == 2 ]] && ns=$NS_C2 ip=$C2_IP
    ip -n "$NS_HOST" link set e2etap$i netns "$ns"   # vde_switch keeps its TAP fd
    ip -n "$ns" link set e2etap$i name eth0
    [[ -n $MTU ]] && ip -n "$ns" link set eth0 mtu "$MTU"
    container_addr "$ns" "$ip"
  done
}

c1_has_addr() { ip -n "$NS_C1" -4 -o addr show | grep -q "inet $1/"; }
setup_slirp() {  # c1 = 10.0.2.100, gateway 10.0.2.2 (podman-like flags, no DNS forwarding)
  start_daemon slirp4netns slirp4netns --configure --mtu="${MTU:-65520}" --disable-host-loopback \
    --disable-dns --enable-sandbox --enable-seccomp --netns-type=path "/run/netns/$NS_C1" tap0
  wait_for 10 c1_has_addr 10.0.2.100 || { warn "slirp4netns did not configure c1"; return 1; }
}
setup_pasta() {  # c1 copies the host's 198.51.100.1/24 and its default route via .254
  # --runas 0: Debian's 2023 pasta drops to nobody as root and then cannot setns() a named netns
  start_daemon pasta pasta --config-net -f --runas 0 -m "${MTU:-65520}" -l "$LOGP.pasta.daemon.log" \
    -t none -u none -T none -U none --netns "/run/netns/$NS_C1"
  wait_for 10 c1_has_addr "${HOST_WAN_CIDR%/*}" || { warn "pasta did not configure c1"; return 1; }
}

base_wan() {  # host:wan0 198.51.100.1/24 <-> wan:eth0 .2 (the server) and .254 (host's default gw)
  ip -n "$NS_HOST" link add wan0 $(link_mtu) type veth peer name eth0 $(link_mtu) netns "$NS_WAN"
  ip -n "$NS_HOST" addr add "$HOST_WAN_CIDR" dev wan0
  ip -n "$NS_HOST" link set wan0 up
  ip -n "$NS_WAN" addr add "$WAN_SRV_IP/24" dev eth0
  ip -n "$NS_WAN" addr add "$WAN_GW_IP/24" dev eth0
  ip -n "$NS_WAN" link set eth0 up
  ip -n "$NS_HOST" route add default via "$WAN_GW_IP"
}

# ------------------------------------------------------------------------------ a busy host
busy_up() {  # --busy: more ports on the switch (or bridge) and idle NAT flows
  local i ns
  case $SCEN in
    vswitch*|kbridge*)
      log "  busy: $BUSY_PORTS more containers"
      for i in $(seq "$BUSY_PORTS"); do
        ns=$(busy_ns "$i"); ns_create "$ns"
        if [[ $SCEN == vswitch* ]]; then
          plug "$ns" "10.1.1.$((100 + i))" >>"$RUNLOG" 2>&1
        else
          ip -n "$NS_HOST" link add "bz$i" $(link_mtu) type veth peer name eth0 $(link_mtu) netns "$ns"
          ip -n "$NS_HOST" link set "bz$i" master br0 up
          container_addr "$ns" "10.1.1.$((100 + i))"
        fi
      done ;;
  esac
  if [[ $MODE == wan ]]; then
    log "  busy: $BUSY_FLOWS idle UDP flows"
    nsbg udp-echo "$SRV_NS" "$DAEMON_TMO" "$PY" "$OUTDIR/e2e_helper.py" udp-echo $P_IDLE
    wait_listen "$SRV_NS" udp $P_IDLE
    # From the busy containers, 2,000 each, where there are some: a container's share of the
    # switch's descriptors (a quarter of the budget) is not the measured client's to spend.
    local left=$BUSY_FLOWS k=0 n src
    while ((left > 0)); do
      n=$((left < 2000 ? left : 2000)) src=$(busy_ns $((k + 1)))
      [[ $SCEN == vswitch* || $SCEN == kbridge* ]] || { n=$left src=$NS_C1; }
      nsbg "idle-flows$k" "$src" "$DAEMON_TMO" "$PY" "$OUTDIR/e2e_helper.py" idle-flows "$TARGET" $P_IDLE "$n"
      wait_for 120 grep -q '^ready' "$LOGP.idle-flows$k.log" ||
        { warn "idle flows not ready: $(tail -1 "$LOGP.idle-flows$k.log")"; return 1; }
      log "  busy: $(tail -1 "$LOGP.idle-flows$k.log") (from $src)"
      left=$((left - n)) k=$((k + 1))
    done
    [[ $SCEN == vswitch* ]] && vsw stats >>"$RUNLOG" 2>&1
  fi
  return 0
}

# ------------------------------------------------------------------------------ metrics
# m_KEY returns non-zero on failure; the caller then records NA for its metrics.
iperf_run() {  # TAG CLIENT_NS SERVER_NS TARGET client-args... -> $LOGP.iperf-TAG.json
  local tag=$1 cns=$2 sns=$3 dst=$4 srv rc=0; shift 4
  nsbg iperf3-srv-$tag "$sns" $((DUR + 60)) iperf3 -s -1 -p $P_IPERF; srv=$BGPID
  wait_listen "$sns" tcp $P_IPERF || { warn "iperf3 server not listening"; return 1; }
  nsrun "$cns" $((DUR + 30)) iperf3 -c "$dst" -p $P_IPERF -t "$DUR" --connect-timeout 5000 -J "$@" \
    >"$LOGP.iperf-$tag.json" 2>>"$RUNLOG" || rc=$?
  stop_bg "$srv"
  return $rc
}
iperf_gbps() {  # TAG METRIC CLIENT_NS SERVER_NS TARGET args...
  local tag=$1 metric=$2 v; shift 2
  iperf_run "$tag" "$@" || return 1
  v=$(H iperf-tcp "$LOGP.iperf-$tag.json") || return 1
  set -- $v
  emit "$metric" "$1" Gbit/s
}
m_tcp1() {  # also the daemon's CPU time per GB forwarded
  local t0 t1 v cpu
  [[ -n $DAEMON_PID ]] && t0=$(cpu_ticks "$DAEMON_PID")
  iperf_run tcp1 "$NS_C1" "$SRV_NS" "$TARGET" -P 1 || return 1
  [[ -n $DAEMON_PID ]] && t1=$(cpu_ticks "$DAEMON_PID")
  v=$(H iperf-tcp "$LOGP.iperf-tcp1.json") || return 1
  set -- $v   # Gbit/s bytes seconds
  emit tcp_1stream "$1" Gbit/s
  if [[ -n $DAEMON_PID && -n $t0 && -n $t1 && $2 -gt 0 ]]; then
    cpu=$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" 'BEGIN {printf "%.3f", d / hz}')
    echo "tcp1: daemon pid $DAEMON_PID cpu ${cpu}s for $2 bytes in $3 s" >>"$RUNLOG"
    emit daemon_cpu_per_gb "$(awk -v c="$cpu" -v b="$2" 'BEGIN {printf "%.3f", c / (b / 1e9)}')" cpu-s/GB
    emit daemon_cpu_tcp1 "$(awk -v c="$cpu" -v s="$3" 'BEGIN {printf "%.1f", 100 * c / s}')" %core
  fi
}
m_tcp1r() { iperf_gbps tcp1r tcp_1stream_rev "$NS_C1" "$SRV_NS" "$TARGET" -P 1 -R; }
m_tcp4() {  # also the retransmits: a switch that reorders a stream makes TCP retransmit
  local v
  iperf_run tcp4 "$NS_C1" "$SRV_NS" "$TARGET" -P 4 || return 1
  v=$(H iperf-tcp "$LOGP.iperf-tcp4.json") || return 1
  set -- $v
  emit tcp_4stream "$1" Gbit/s
  emit tcp4_retrans "$4" count
}
m_host()  { iperf_gbps host host_tcp "$NS_HOST" "$NS_C1" "$C1_IP" -P 1; }
m_hostr() { iperf_gbps hostr host_tcp_rev "$NS_HOST" "$NS_C1" "$C1_IP" -P 1 -R; }
m_hosticmp() {  # the host's ping, from each CPU in turn: which worker it wakes depends on the CPU
  have ping || return 1
  local f=$LOGP.hostping.txt cpu n
  n=$(nproc)
  : >"$f"
  for ((cpu = 0; cpu < n; cpu++)); do
    nsrun "$NS_HOST" 60 taskset -c "$cpu" ping -n -c $((PING_COUNT / n)) -i "$PING_INTERVAL" -W 1 \
      "$C1_IP" >>"$f" 2>&1 || true
  done
  emit_ping "$f" host_icmp_rtt
}
emit_ping() {  # FILE PREFIX: PREFIX_mean and PREFIX_p99 of the echoes in ping's output FILE
  local v prefix=$2
  v=$(H ping "$1" "$PING_COUNT" 2>>"$RUNLOG") || { warn "ping: $(tail -2 "$1" | tr '\n' ' ')"; return 1; }
  set -- $v
  emit "${prefix}_mean" "$1" us; emit "${prefix}_p99" "$2" us
}
m_udp64() {
  local v daemon=0
  [[ $SCEN == vswitch* ]] && vsw ls --json >"$LOGP.udp64-ls-before.json" &&
    ip -n "$NS_HOST" -j -s link >"$LOGP.udp64-links-before.json" && daemon=1
  iperf_run udp64 "$NS_C1" "$SRV_NS" "$TARGET" -u -l 64 -b 0 || return 1
  v=$(H iperf-udp "$LOGP.iperf-udp64.json") || return 1
  set -- $v
  emit udp64_rx_rate "$2" pkt/s; emit udp64_tx_rate "$1" pkt/s; emit udp64_loss "$3" %
  if ((daemon)) && vsw ls --json >"$LOGP.udp64-ls-after.json" &&
    ip -n "$NS_HOST" -j -s link >"$LOGP.udp64-links-after.json"; then
    v=$(H switch-loss "$LOGP.udp64-ls-before.json" "$LOGP.udp64-links-before.json" \
      "$LOGP.udp64-ls-after.json" "$LOGP.udp64-links-after.json" "$LOGP.iperf-udp64.json") &&
      emit udp64_switch_loss "$v" %
  fi
}
m_icmp() {
  have ping || return 1
  local f=$LOGP.ping.txt
  nsrun "$NS_C1" 60 ping -n -c "$PING_COUNT" -i "$PING_INTERVAL" -W 1 "$TARGET" >"$f" 2>&1 || true
  emit_ping "$f" icmp_rtt
}
m_udprr() {
  have sockperf || return 1
  local f=$LOGP.sockperf.txt v srv
  nsbg sockperf-srv "$SRV_NS" $((SOCKPERF_SEC + 60)) sockperf sr -i 0.0.0.0 -p $P_SOCKPERF; srv=$BGPID
  wait_listen "$SRV_NS" udp $P_SOCKPERF || { warn "sockperf server not listening"; return 1; }
  nsrun "$NS_C1" $((SOCKPERF_SEC + 30)) sockperf pp -i "$TARGET" -p $P_SOCKPERF -t "$SOCKPERF_SEC" \
    -m 64 --full-rtt --no-rdtsc >"$f" 2>&1 || true
  kill_pids "$srv"
  v=$(H sockperf "$f" 2>>"$RUNLOG") || return 1
  set -- $v
  emit udp_rtt_mean "$1" us; emit udp_rtt_p99 "$2" us
}
conn_run() {  # MODE PORT METRIC_PREFIX
  local v
  if [[ -n $CONNBIN ]]; then
    v=$(nsrun "$NS_C1" $((CONN_DUR + 30)) "$CONNBIN" client "$1" "$TARGET" "$2" "$CONN_DUR" server 2>>"$RUNLOG") || return 1
  else
    v=$(HN "$NS_C1" $((CONN_DUR + 30)) conn-client "$1" "$TARGET" "$2" "$CONN_DUR" 2>>"$RUNLOG") || return 1
  fi
  set -- $v "$3"   # rate ok failed prefix
  emit "$4_rate" "$1" conn/s; emit "$4_fail" "$3" count
}
m_conn() { conn_run cc $P_CONN tcp_conn; }
m_crr()  { conn_run crr $P_CRR tcp_crr; }
churn_run() {  # ORDER PORT_A PORT_B METRIC_PREFIX: a burst to A, then the measured phase to B
  local v
  [[ -n $CONNBIN ]] || return 1
  v=$(nsrun "$NS_C1" $((CHURN_SEC + 30)) "$CONNBIN" client crr "$TARGET" "$2" "$CHURN_SEC" "$1" 2>>"$RUNLOG") || return 1
  set -- "$@" $v   # order a b prefix rate ok failed
  emit "$4_burst" "$5" conn/s
  v=$(nsrun "$NS_C1" $((CHURN_SEC + 30)) "$CONNBIN" client crr "$TARGET" "$3" "$CHURN_SEC" "$1" 2>>"$RUNLOG") || return 1
  set -- "$1" "$2" "$3" "$4" $v
  emit "$4_rate" "$5" conn/s; emit "$4_fail" "$7" count
}
m_crrs() { churn_run server $P_SF_A $P_SF_B tcp_crr_sf; }
m_crrc() { churn_run client $P_CF_A $P_CF_B tcp_crr_cf; }

idle_cpu() {  # daemon CPU with no traffic at all
  local t0 t1
  t0=$(cpu_ticks "$DAEMON_PID") || return 0
  sleep "$IDLE_SEC"
  t1=$(cpu_ticks "$DAEMON_PID") || return 0
  emit daemon_idle_cpu "$(awk -v d=$((t1 - t0)) -v hz="$CLK_TCK" -v s=$IDLE_SEC 'BEGIN {printf "%.1f", 100 * d / hz / s}')" %core
}

# ------------------------------------------------------------------------------ one run
run_once() {  # in a background subshell with set -e; RUNDIR/LOGP/RUNLOG/SCEN/RUN set
  local ns m n v
  {
    echo "loadavg at start: $(cat /proc/loadavg)"
    echo "other netns: $(ip netns list | awk '{print $1}' | { grep -v -- "-$TAG\$" || true; } | tr '\n' ' ')"
  } >>"$RUNLOG"
  ns_create "$NS_HOST"; ns_create "$NS_C1"
  if [[ $MODE == l2 ]]; then ns_create "$NS_C2"; else ns_create "$NS_WAN"; base_wan; fi
  # connection-rate servers live for the whole run (the crr one answers the reachability probe)
  if [[ -n $CONNBIN ]]; then   # the server closes first (as netbench's nbconn), see e2e_conn.c
    nsbg conn-srv "$SRV_NS" "$DAEMON_TMO" "$CONNBIN" server cc $P_CONN server
    nsbg crr-srv "$SRV_NS" "$DAEMON_TMO" "$CONNBIN" server crr $P_CRR server
    for p in $P_SF_A $P_SF_B; do nsbg crr-sf-$p "$SRV_NS" "$DAEMON_TMO" "$CONNBIN" server crr $p server; done
    for p in $P_CF_A $P_CF_B; do nsbg crr-cf-$p "$SRV_NS" "$DAEMON_TMO" "$CONNBIN" server crr $p client; done
    for p in $P_SF_A $P_SF_B $P_CF_A $P_CF_B; do wait_listen "$SRV_NS" tcp $p; done
  else
    nsbg conn-srv "$SRV_NS" "$DAEMON_TMO" "$PY" "$OUTDIR/e2e_helper.py" conn-server cc $P_CONN
    nsbg crr-srv "$SRV_NS" "$DAEMON_TMO" "$PY" "$OUTDIR/e2e_helper.py" conn-server crr $P_CRR
  fi
  wait_listen "$SRV_NS" tcp $P_CONN; wait_listen "$SRV_NS" tcp $P_CRR
  log "  setup: setup_${SCEN//-/_}"
  "setup_${SCEN//-/_}" >>"$RUNLOG" 2>&1
  HN "$NS_C1" 30 probe crr "$TARGET" $P_CRR 15 >>"$RUNLOG" 2>&1 ||
    { warn "$SCEN: c1 cannot reach $TARGET:$P_CRR"; return 1; }
  ((BUSY)) && busy_up
  {
    for ns in "${ALL_NS[@]}"; do ns_exists "$ns" || continue
      echo "== $ns"; ip -n "$ns" -d link; ip -n "$ns" -br addr; ip -n "$ns" route; done
  } >"$RUNDIR/topology.txt" 2>&1
  [[ -n $DAEMON_PID ]] && idle_cpu
  for m in "${METRICS[@]}"; do
    if ! m_$m; then
      warn "$SCEN run $RUN: metric $m failed (see $RUNLOG)"
      for n in ${MNAMES[$m]}; do emit "${n%%:*}" NA "${n#*:}"; done
    fi
  done
  if [[ $SCEN == vswitch* ]]; then
    if vsw ls --json >"$LOGP.ls.json" 2>>"$RUNLOG" && ip -n "$NS_HOST" -j -s link >"$LOGP.links.json" &&
      v=$(H drops "$LOGP.ls.json" "$LOGP.links.json" 2>>"$RUNLOG"); then
      set -- $v
      emit switch_drops "$1" count; emit switch_unread "$2" frames
    fi
    vsw ls >>"$RUNLOG" 2>&1 || true
  fi
  echo "loadavg at end: $(cat /proc/loadavg)" >>"$RUNLOG"
  for ns in "${ALL_NS[@]}"; do ns_exists "$ns" && { echo "== $ns"; ip -n "$ns" -s link; }; done \
    >"$RUNDIR/linkstats-end.txt" 2>&1 || true
}

scenario_available() {  # SCEN -> 0 if its tools are here (else prints why)
  case $1 in
    vswitch|vswitch-nofp|vswitch-nofp-cap|vswitch-cap|vswitch-relay) return 0 ;;
    vswitch-metrics|vswitch-nofp-metrics)
      have curl || { echo "curl missing (apt-get install curl)"; return 1; } ;;
    vswitch-base|vswitch-nofp-base) [[ -n $BASELINE ]] || { echo "no --baseline binary given"; return 1; } ;;
    kbridge) return 0 ;;
    kbridge-nat) have nft || { echo "nft missing (apt-get install nftables)"; return 1; } ;;
    vde) have vde_switch || { echo "vde_switch missing (apt-get install vde2)"; return 1; }
         [[ -z $MTU || $MTU -le 1500 || -n $SCEN_ARG ]] ||
           { echo "vde_switch forwards nothing above MTU 1500 (name it in -s to run it anyway)"; return 1; } ;;
    slirp) have slirp4netns || { echo "slirp4netns missing (apt-get install slirp4netns)"; return 1; } ;;
    pasta) have pasta || { echo "pasta missing (apt-get install passt)"; return 1; } ;;
  esac
}

busy_check() {  # the machine's load skews every number: say so when it is not idle
  local load; read -r load _ </proc/loadavg
  awk -v l="$load" -v n="$(nproc)" 'BEGIN {exit !(l > n / 2)}' &&
    warn "load average $load on $(nproc) cores: something else is running, numbers will be noisy"
  return 0
}

cmd_cleanup() {  # namespaces of runs whose process is gone
  local ns pid
  for ns in $(ip netns list | awk '{print $1}' | grep -E -- '^(host|c1|c2|wan|b[0-9][0-9])-vswb[0-9]+$' || true); do
    pid=${ns##*-vswb}
    if kill -0 "$pid" 2>/dev/null && grep -q e2e.sh "/proc/$pid/cmdline" 2>/dev/null; then
      log "skip $ns: its run ($pid) is alive"; continue
    fi
    kill_pids $(ip netns pids "$ns")
    ip netns del "$ns" && log "deleted stale netns $ns"
    if [[ -d /etc/netns/$ns ]]; then rm -rf "/etc/netns/$ns"; fi
  done
}

# ------------------------------------------------------------------------------ main
main() {
  local orig_args="$*"
  case ${1:-} in
    -h|--help|help) usage 0 ;;
    check) check_tools; versions 2>/dev/null; exit 0 ;;
    cleanup) [[ $(id -u) == 0 ]] || die "must run as root"; cmd_cleanup; exit 0 ;;
  esac
  while (($#)); do
    case $1 in
      -r) RUNS=${2:?}; shift ;;
      -t) DUR=${2:?}; shift ;;
      -c) CONN_DUR=${2:?}; shift ;;
      -m) METRICS_ARG=${2:?}; shift ;;
      -s) SCEN_ARG=${2:?}; shift ;;
      -o) OUTDIR=${2:?}; shift ;;
      --mtu) MTU=${2:?}; shift ;;
      --wan) MODE=wan ;;
      --workers) WORKERS=${2:?}; shift ;;
      --vswitch) VSWITCH=$(realpath "${2:?}"); shift ;;
      --churn) CHURN_SEC=${2:?}; shift ;;
      --baseline) BASELINE=$(realpath "${2:?}"); shift ;;
      --busy) BUSY=1 ;;
      -h|--help) usage 0 ;;
      *) warn "unknown argument '$1'"; usage 2 ;;
    esac
    shift
  done
  [[ $RUNS =~ ^[1-9][0-9]*$ && $DUR =~ ^[1-9][0-9]*$ && $CONN_DUR =~ ^[1-9][0-9]*$ ]] || die "bad -r/-t/-c"
  [[ -z $MTU || $MTU =~ ^[1-9][0-9]*$ ]] || die "bad --mtu"
  [[ $(id -u) == 0 ]] || die "must run as root (it creates network namespaces)"
  if ((BUSY)); then local i; for i in $(seq "$BUSY_PORTS"); do ALL_NS+=("$(busy_ns "$i")"); done; fi

  log "tools:"; check_tools
  ensure_vswitch; warn_if_stale
  if [[ $MODE == l2 ]]; then METRICS_ARG=${METRICS_ARG:-$L2_METRICS}; ALL_SCEN=("${L2_SCENARIOS[@]}")
  else METRICS_ARG=${METRICS_ARG:-$WAN_METRICS}; ALL_SCEN=("${WAN_SCENARIOS[@]}"); fi
  IFS=, read -r -a METRICS <<<"$METRICS_ARG"
  local m s why
  for m in "${METRICS[@]}"; do
    [[ -n ${MNAMES[$m]:-} ]] || die "unknown metric '$m' (keys: ${!MNAMES[*]})"
    [[ $MODE == wan && $m == host* ]] && die "metric $m is L2 only"
    [[ $m == *icmp ]] && ! have ping && warn "icmp will be NA: ping missing (apt-get install iputils-ping)"
    [[ $m == udprr ]] && ! have sockperf && warn "udprr will be NA: sockperf missing (apt-get install sockperf)"
  done
  SCENARIOS=()
  if [[ -n $SCEN_ARG ]]; then
    IFS=, read -r -a SCENARIOS <<<"$SCEN_ARG"
    for s in "${SCENARIOS[@]}"; do
      [[ " ${ALL_SCEN[*]} " == *" $s "* || ($MODE == l2 && " ${L2_OPT_IN[*]} " == *" $s "*) ||
        ($MODE == wan && " ${WAN_OPT_IN[*]} " == *" $s "*) ]] ||
        die "unknown $MODE scenario '$s' (${ALL_SCEN[*]})"
      why=$(scenario_available "$s") || die "scenario $s: $why"
    done
  else
    for s in "${ALL_SCEN[@]}"; do
      if why=$(scenario_available "$s"); then SCENARIOS+=("$s"); else warn "skipping $s: $why"; fi
    done
  fi
  if [[ $MODE == l2 ]]; then REFS=kbridge; else REFS=kbridge-nat,slirp,pasta; fi

  for s in "${ALL_NS[@]}"; do ns_exists "$s" && die "netns $s already exists"; done
  local others; others=$(ip netns list | awk '{print $1}' | tr '\n' ' ')
  [[ -n $others ]] && warn "other network namespaces exist ($others): another benchmark running would skew the numbers"

  OUTDIR=${OUTDIR:-/tmp/vswitch-e2e-$(date +%Y%m%d-%H%M%S)}
  mkdir -p "$OUTDIR/logs"; OUTDIR=$(realpath "$OUTDIR")
  : >"$OUTDIR/raw.tsv"; : >"$OUTDIR/commands.log"
  write_helper
  if have cc; then
    write_conn_c
    cc -O2 -o "$OUTDIR/e2e_conn" "$OUTDIR/e2e_conn.c" && CONNBIN=$OUTDIR/e2e_conn
  fi
  [[ -n $CONNBIN ]] || warn "no cc: conn/crr use the python client (client closes first), crrs/crrc are NA"
  DAEMON_TMO=$((5 * (DUR + 40) + 2 * (CONN_DUR + 30) + 4 * (CHURN_SEC + 30) + SOCKPERF_SEC + 240))
  {
    echo "# vswitch end-to-end benchmark"; echo; echo '```'
    echo "date: $(date -Is)"; echo "cmdline: $0 $orig_args"
    echo "mode: $MODE  scenarios: ${SCENARIOS[*]}  runs: $RUNS (interleaved)  iperf: ${DUR}s  conn: ${CONN_DUR}s"
    echo "metrics: $METRICS_ARG  mtu: ${MTU:-1500 (slirp/pasta 65520)}  workers: ${WORKERS:-default}"
    echo "ping: -c $PING_COUNT -i $PING_INTERVAL; sockperf: -t $SOCKPERF_SEC -m 64 --full-rtt"
    echo "vswitch flags: ${E2E_VSWITCH_ARGS:-none}  baseline flags: ${E2E_BASELINE_ARGS:-none}"
    versions
    echo '```'
  } >"$OUTDIR/meta.txt" 2>&1

  trap on_exit EXIT
  trap 'exit 130' INT TERM
  ROOT_SNAP=$(root_snapshot)
  log "output dir: $OUTDIR"

  local rc n
  for ((RUN = 1; RUN <= RUNS; RUN++)); do   # interleaved: run 1 of every scenario, then run 2...
    for SCEN in "${SCENARIOS[@]}"; do
      log "== $SCEN ($MODE) run $RUN/$RUNS"
      busy_check
      RUNDIR=$OUTDIR/logs/$SCEN.run$RUN LOGP=$OUTDIR/logs/$SCEN.run$RUN/$SCEN
      RUNLOG=$RUNDIR/run.log DAEMON_PID=
      if [[ $MODE == l2 ]]; then SRV_NS=$NS_C2 TARGET=$C2_IP; else SRV_NS=$NS_WAN TARGET=$WAN_SRV_IP; fi
      mkdir -p "$RUNDIR"; : >"$RUNDIR/pids"
      # A background subshell with its own set -e; `wait` keeps this shell responsive to INT/TERM.
      ( set -eE
        trap 'warn "$SCEN run $RUN: command failed (rc=$?) at line $LINENO: $BASH_COMMAND"' ERR
        trap - INT TERM
        run_once ) &
      RUN_PID=$!
      rc=0; wait "$RUN_PID" || rc=$?
      RUN_PID=
      if ((rc)); then
        ABORTED=$((ABORTED + 1))
        warn "$SCEN run $RUN failed during setup (rc=$rc), see $RUNLOG; its end:"
        tail -n 5 "$RUNLOG" | sed 's/^/    /' >&2
        for m in "${METRICS[@]}"; do for n in ${MNAMES[$m]}; do
          grep -q "^$RUN	$SCEN	${n%%:*}	" "$OUTDIR/raw.tsv" || emit "${n%%:*}" NA "${n#*:}"
        done; done
      fi
      teardown_run
    done
  done
  H summarize "$OUTDIR/raw.tsv" "$OUTDIR/summary.md" "$(IFS=,; echo "${SCENARIOS[*]}")" "$REFS" "$OUTDIR/meta.txt"
  log "summary: $OUTDIR/summary.md   raw: $OUTDIR/raw.tsv   logs: $OUTDIR/logs"
  ((ABORTED == 0)) || { warn "$ABORTED run(s) failed during setup (their metrics are NA)"; exit 5; }
}

main "$@"
