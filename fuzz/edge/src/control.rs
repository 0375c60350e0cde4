// The binary's files, unchanged (paths from this file's folder, fuzz/edge/src).
#[path = "../../../cli/src/control/client.rs"]
mod client;
#[path = "../../../cli/src/control/protocol.rs"]
mod protocol;
#[path = "../../../cli/src/control/security.rs"]
mod security;

pub use client::ClientError;
pub use protocol::*;
pub use security::*;
