// The binary's files, unchanged (paths from this file's folder, fuzz/edge/src).
#[path = "../../../cli/src/cni/config.rs"]
pub mod config;
#[path = "../../../cli/src/cni/env.rs"]
pub mod env;
#[path = "../../../cli/src/cni/error.rs"]
pub mod error;
#[path = "../../../cli/src/cni/version.rs"]
pub mod version;
