// The binary's file, unchanged (path from this file's folder, fuzz/edge/src).
#[path = "../../../cli/src/daemon/ipam.rs"]
pub mod ipam;
