#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer, through cargo-fuzz on nightly Rust: vswitch's pure
# crates (switch/, nat/) and the parsers at the daemon's edge (the control protocol, the CNI
# configuration). The targets and what they check: fuzz/src/lib.rs.
#
# Usage: scripts/fuzz.sh [TARGET...] [-runs N | -time SEC] [-- LIBFUZZER_OPTION...]
#   TARGET      a target of fuzz/Cargo.toml (`cargo fuzz list`): switch_frames, nat_frames,
#               nat_replies, control_requests, cni_config... (default: all, one after the other)
#   -runs N     inputs per target (default 10000000)
#   -time SEC   run each target for SEC seconds instead
#   after --    passed to libFuzzer as is (e.g. -seed=1 -max_len=8192)
# Environment: FUZZ_SANITIZER (default none; address also works), FUZZ_NICE (default 10).
#
# Installs what it lacks, without root: a nightly toolchain (with rustup, which it installs
# into ~/.cargo with the official installer if there is none) and cargo-fuzz (cargo install).
# libFuzzer itself is compiled from source by libfuzzer-sys, so a C++ compiler must be present
# (Debian: build-essential, which scripts/test.sh installs).
#
# One libFuzzer process per target (no -jobs/-fork), nice'd, with -timeout=10 (an input taking
# over 10 s is a hang) and -rss_limit_mb=2048; built with debug assertions, so integer overflow
# is a crash too. The corpus grows in fuzz/corpus/TARGET (kept between runs, not in git) and
# also reads the inputs kept in fuzz/regressions/TARGET; fuzz/dict/TARGET.dict, if there is one,
# is its libFuzzer dictionary (the JSON targets' names and values). A crash leaves its input in
# fuzz/artifacts/TARGET/: replay it on stable with
#   cargo run -p vswitch-fuzz --bin TARGET -- fuzz/artifacts/TARGET/crash-...
# and, once fixed, keep it in fuzz/regressions/TARGET/ (the test suite replays that folder).
# At the end, one line per target with the figures BENCHMARKS.md records.
set -euo pipefail
cd "$(dirname "$0")/.."

targets=()
runs=10000000
time_s=""
extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        -runs) runs=$2; shift 2 ;;
        -runs=*) runs=${1#-runs=}; shift ;;
        -time) time_s=$2; shift 2 ;;
        -time=*) time_s=${1#-time=}; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        -*) echo "unknown option $1 (see $0 -h)" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
sanitizer=${FUZZ_SANITIZER:-none}
niceness=${FUZZ_NICE:-10}

log() { printf '\n==> %s\n' "$*" >&2; }

export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! cargo +nightly --version >/dev/null 2>&1; then
    if ! command -v rustup >/dev/null; then
        log "installing rustup into ~/.cargo (official installer)"
        curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
            sh -s -- -y --profile minimal --default-toolchain none </dev/null
    fi
    log "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal </dev/null
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked </dev/null
fi
command -v c++ >/dev/null || { echo "no C++ compiler (c++): libFuzzer needs one (Debian: apt-get install build-essential)" >&2; exit 1; }

mapfile -t ALL < <(cargo fuzz list)
[ ${#ALL[@]} -gt 0 ] || { echo "cargo fuzz list: no targets" >&2; exit 1; }
for t in "${targets[@]}"; do
    [[ " ${ALL[*]} " == *" $t "* ]] || { echo "unknown target $t (targets: ${ALL[*]})" >&2; exit 2; }
done
[ ${#targets[@]} -gt 0 ] || targets=("${ALL[@]}")

log "$(cargo +nightly --version), $(cargo fuzz --version)"
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
git diff --quiet HEAD -- switch nat capture cli fuzz 2>/dev/null || commit="$commit+changes"
limit=(-runs="$runs")
[ -n "$time_s" ] && limit=(-max_total_time="$time_s")

summary=()
failed=()
for t in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/regressions/$t" "fuzz/artifacts/$t"
    out="fuzz/artifacts/$t/last-run.log"
    log "$t: ${limit[*]} (log: $out)"
    dict=()
    [ -f "fuzz/dict/$t.dict" ] && dict=(-dict="fuzz/dict/$t.dict")
    start=$(date +%s)
    status=0
    # libFuzzer's exit status, read inside the group: after `|| true`, PIPESTATUS is true's.
    {
        nice -n "$niceness" cargo +nightly fuzz run --sanitizer "$sanitizer" --debug-assertions "$t" \
            "fuzz/corpus/$t" "fuzz/regressions/$t" -- \
            "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${dict[@]}" "${extra[@]}" \
            2>&1 | tee "$out" | grep --line-buffered -E '^#[0-9]+.*(pulse|DONE)|^(==|SUMMARY|thread)|panicked|Test unit written|deadly signal'
        status=${PIPESTATUS[0]}
    } || true
    wall=$(($(date +%s) - start))
    done_line=$(grep -E '^#[0-9]+\s+DONE' "$out" | tail -n1 || true)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$out" | tail -n1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$out" | tail -n1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$out" | tail -n1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$done_line")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$done_line")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$done_line")
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        summary+=("| \`$t\` | FAILED (exit $status): see $out and fuzz/artifacts/$t/ |")
    else
        summary+=("| \`$t\` | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | ${rss:-?} MB | ${wall} s | $commit |")
    fi
done

log "summary (sanitizer $sanitizer, debug assertions on)"
echo "| target | inputs | exec/s | coverage (edges) | features | corpus (inputs/size) | peak RSS | wall time | commit |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "FAILED: ${failed[*]}" >&2
    exit 1
fi
