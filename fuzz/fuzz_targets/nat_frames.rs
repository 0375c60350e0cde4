//! The `nat_frames` target (see the crate's documentation). Under cargo-fuzz (`--cfg fuzzing`) a
//! libFuzzer target; otherwise a replayer: `cargo run -p vswitch-fuzz --bin nat_frames -- FILE...`.
#![cfg_attr(fuzzing, no_main)]

#[cfg(fuzzing)]
libfuzzer_sys::fuzz_target!(|data: &[u8]| vswitch_fuzz::nat_frames(data));

#[cfg(not(fuzzing))]
fn main() -> std::process::ExitCode {
    vswitch_fuzz::smoke::replay_main("nat_frames")
}
