//! The fuzz targets on stable, in the normal test suite: every input kept in
//! `fuzz/regressions/TARGET/` (crashes found and fixed), then a short run of pseudo-random
//! inputs (`VSWITCH_FUZZ_SMOKE_SECS` seconds per target, default 2). The long, coverage-guided
//! campaigns run under libFuzzer: `scripts/fuzz.sh`.

use std::path::PathBuf;
use std::time::Duration;

fn smoke(name: &str) {
    let secs = std::env::var("VSWITCH_FUZZ_SMOKE_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    let save = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-smoke");
    let s = vswitch_fuzz::smoke::smoke(name, Duration::from_secs_f64(secs), 1_000_000, &save);
    eprintln!(
        "{name}: {} kept inputs, {} random inputs",
        s.regressions, s.random
    );
    assert!(s.random > 0 || secs == 0.0);
}

#[test]
fn switch_frames() {
    smoke("switch_frames");
}

#[test]
fn nat_frames() {
    smoke("nat_frames");
}

#[test]
fn nat_replies() {
    smoke("nat_replies");
}

#[test]
fn control_requests() {
    smoke("control_requests");
}

#[test]
fn cni_config() {
    smoke("cni_config");
}

#[test]
fn every_target_has_a_test_and_a_binary() {
    let manifest = include_str!("../Cargo.toml");
    let me = include_str!("smoke.rs");
    for (name, _) in vswitch_fuzz::TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "no [[bin]] {name}"
        );
        assert!(
            me.contains(&format!("fn {name}()")),
            "no smoke test for {name}"
        );
    }
}
