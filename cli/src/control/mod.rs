//! The control protocol between the `vswitch` command line and the daemon: newline-delimited
//! JSON over a root-only Unix socket, one request and one response per connection; a
//! `capture` is answered with a header line and a stream of frames (`stream`).

mod client;
mod protocol;
mod security;
mod server;
mod stream;

pub use client::{CaptureItem, CaptureStream, Client, ClientError};
pub use protocol::*;
pub use security::*;
pub use server::{bind, serve, Call};
