//! Fuzz targets of vswitch's pure crates and of the parsers at the daemon's edge. Each target
//! is a plain function of the fuzzer's bytes that panics when an invariant breaks, so that the
//! same body runs under libFuzzer (`fuzz_targets/*.rs`, built by cargo-fuzz on nightly) and
//! on stable, in the test suite (`tests/smoke.rs`: every input kept in `regressions/`, then a
//! few seconds of pseudo-random inputs) or replaying files (`cargo run -p vswitch-fuzz --bin
//! TARGET -- FILE...`).
//!
//! The targets read their input as a sequence of operations ([`input::Input`]) and check
//! each result against the documented behaviour, not only that nothing panics:
//! - [`switch_frames`]: `Switch::process` and the port directory, against a reference model;
//! - [`nat_frames`]: `Nat::outbound`/`Nat::from_host` on a realistic flow table, interleaved
//!   with the edge's calls (connects, replies, published ports, removals, `expire` as time
//!   advances);
//! - [`nat_replies`]: the same world, weighted towards the frames the NAT writes;
//! - [`control_requests`]: the control protocol's request decoder on any line a client may
//!   write, and its round trip through the encoder;
//! - [`cni_config`]: the CNI plugin's configuration parser on any stdin, and its errors as the
//!   specification's error objects.
//!
//! The last two read the `vswitch` binary's own sources through `vswitch-edge` (`edge/`), and
//! take their input as JSON, raw or built from the fields the parser reads ([`json`]).
//!
//! Adding a target: a `pub fn name(data: &[u8])` here, a line in [`TARGETS`], a file in
//! `fuzz_targets/` and a `[[bin]]` in Cargo.toml (copy an existing one), a `#[test]` in
//! `tests/smoke.rs` (a test there checks that none is missing). `scripts/fuzz.sh` finds it
//! through `cargo fuzz list`.

pub mod check;
mod cni_config;
mod control_requests;
pub mod input;
pub mod json;
mod nat;
pub mod smoke;
mod switch_frames;

pub use cni_config::cni_config;
pub use control_requests::control_requests;
pub use switch_frames::switch_frames;

/// Steps per NAT input: bounds the time an input takes.
const NAT_STEPS: usize = 48;

/// The `nat_frames` target.
pub fn nat_frames(data: &[u8]) {
    nat::World::run(data, nat::Mix::Frames, NAT_STEPS);
}

/// The `nat_replies` target.
pub fn nat_replies(data: &[u8]) {
    nat::World::run(data, nat::Mix::Replies, NAT_STEPS);
}

/// A fuzz target: panics on a broken invariant.
pub type Target = fn(&[u8]);

/// Every target, by name (the name of its binary and of its directories).
pub const TARGETS: &[(&str, Target)] = &[
    ("switch_frames", switch_frames),
    ("nat_frames", nat_frames),
    ("nat_replies", nat_replies),
    ("control_requests", control_requests),
    ("cni_config", cni_config),
];

/// The target called `name`.
pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|&(_, t)| t)
}
