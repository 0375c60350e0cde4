# Shared by scripts/demo.sh and scripts/test.sh: install what vswitch needs on a Debian machine.
# Non-interactive: never reads stdin, never asks.
# shellcheck shell=bash

export DEBIAN_FRONTEND=noninteractive

# Debian packages the daemon, the demo and the tests use:
#   iproute2 (ip, netns), iputils-ping, python3 (transfers with checksums), util-linux (unshare,
#   nsenter, setpriv), procps (kill), ethtool (offload checks), nftables + iptables (the NAT
#   tests check that the host has no firewall rule), build-essential + pkg-config (C linker for
#   Rust crates), curl + ca-certificates (the rustup installer, only if no Rust toolchain is found),
#   podman + runc + busybox-static (the CNI test runs a real container: podman's CNI backend,
#   runc as its runtime, an image built from the static busybox; podman brings the CNI
#   reference plugins that benches/cni.sh compares with), tcpdump + tshark (the capture test
#   reads `vswitch capture`'s files with both; tshark's question about capturing as a normal
#   user is answered "no" by the non-interactive install), prometheus (its `promtool check
#   metrics` checks the daemon's /metrics page in tests/e2e_observe.rs; curl scrapes it), iperf3
#   (tests/e2e_nat.rs measures UDP through the NAT with it, as users do).
VSWITCH_APT_PACKAGES=(iproute2 iputils-ping python3 util-linux procps ethtool nftables iptables build-essential pkg-config curl ca-certificates podman runc busybox-static tcpdump tshark prometheus iperf3)

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '\nERROR: %s\n' "$*" >&2; exit 1; }

require_root() {
    if [ "$(id -u)" -ne 0 ]; then
        die "$(basename "$0") must run as root: vswitch creates network namespaces, veths and a TAP \
(and the end-to-end tests need them). Run: sudo $0"
    fi
}

# Installs the Debian packages that are missing (no apt-get call at all if none is).
install_system_packages() {
    local missing=() p
    for p in "${VSWITCH_APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        log "system packages: all present (${VSWITCH_APT_PACKAGES[*]})"
        return
    fi
    command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
    log "installing system packages: ${missing[*]}"
    apt-get update -q </dev/null
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
}

# The minimum Rust version, from Cargo.toml (rust-version).
rust_min_version() {
    sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n1
}

# True if `cargo` and `rustc` are present and recent enough (and, if asked, fmt and clippy).
rust_ok() {
    local want_tools=$1 have min
    command -v cargo >/dev/null && command -v rustc >/dev/null || return 1
    have=$(rustc --version | awk '{print $2}')
    min=$(rust_min_version)
    [ -n "$min" ] || min=1.85
    # Oldest first means `have` is at least `min`.
    [ "$(printf '%s\n%s\n' "$min" "${have%%-*}" | sort -V | head -n1)" = "$min" ] || return 1
    if [ "$want_tools" = yes ]; then
        cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 || return 1
    fi
}

# Makes a Rust toolchain available: the one on PATH (or in ~/.cargo/bin) if recent enough, else
# through rustup — Debian's `rustup` package where it exists, else the official installer.
# $1 = yes to also require rustfmt and clippy.
ensure_rust() {
    local want_tools=${1:-no} components=()
    export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:$PATH"
    if rust_ok "$want_tools"; then
        log "Rust: $(cargo --version)"
        return
    fi
    [ "$want_tools" = yes ] && components=(--component rustfmt --component clippy)
    if ! command -v rustup >/dev/null; then
        if command -v apt-get >/dev/null && apt-get update -q </dev/null &&
            [ -n "$(apt-cache policy rustup 2>/dev/null | sed -n 's/^ *Candidate: *//p' | grep -v '(none)')" ]; then
            log "installing rustup (Debian package)"
            apt-get install -y -q --no-install-recommends rustup </dev/null
        else
            log "installing rustup (official installer)"
            curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
                sh -s -- -y --profile minimal --default-toolchain none </dev/null
        fi
    fi
    log "installing the stable Rust toolchain with rustup"
    rustup toolchain install stable --profile minimal "${components[@]}" </dev/null
    rustup default stable </dev/null
    hash -r
    if ! command -v cargo >/dev/null; then
        PATH="$(dirname "$(rustup which cargo)"):$PATH"
    fi
    rust_ok "$want_tools" || die "no usable Rust toolchain after installing one (need >= $(rust_min_version))"
    log "Rust: $(cargo --version)"
}
