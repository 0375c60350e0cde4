//! The control protocol between the `vswitch` command line and the daemon: newline-delimited
//! JSON over a root-only Unix socket, one request and one response per connection.

mod client;
mod protocol;
mod security;
mod server;

pub use client::Client;
pub use protocol::*;
pub use security::*;
pub use server::{bind, serve, Call};
