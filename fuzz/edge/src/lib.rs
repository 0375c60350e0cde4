//! The parsers at the daemon's edge that read untrusted input, as a library: the control
//! protocol's request decoder (`control`: whatever a local client writes on the socket) and
//! the CNI plugin's configuration parser (`cni::config`: what a runtime writes on its stdin).
//!
//! They live in the `vswitch` binary, and a binary cannot be a dependency. Rather than split
//! the binary into a library and a thin `main` (every module of the daemon would move, for two
//! parsers), this crate compiles the very same files again with `#[path]`, under the module
//! paths they use (`crate::control`, `crate::daemon::ipam`, `crate::cni::...`), so that they
//! build here unchanged. Only files that need nothing but each other and the workspace's pure
//! crates can be taken: if one starts to use another module of the binary, the build fails
//! here, and that module goes into the mirror too (or the parser out of the file).
//!
//! The binary uses everything these files hold, this crate only the parsers: hence no dead
//! code warnings.
#![allow(dead_code)]

/// `cli/src/cni`: the configuration and what it needs (its errors, versions, the address
/// syntax it shares with the environment).
pub mod cni;
/// `cli/src/control`: the messages (`protocol`, `security`) and the client's errors, which
/// the CNI plugin's errors name.
pub mod control;
/// `cli/src/daemon`: the subnet type a CNI configuration names.
pub mod daemon;
