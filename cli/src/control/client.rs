//! The command line's side of the control socket: one typed method per request.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;

use super::protocol::{
    decode_response, encode_request, Failure, FdbFlush, FdbView, FlowFilter, FlowRow, Gc, Inspect,
    NoArgs, Plug, PortView, Request, Stats, StopArgs, Unplug,
};

/// Errors seen by the command-line client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the daemon at {path}: is `vswitch run` running? ({err})")]
    NotRunning { path: String, err: io::Error },
    #[error("permission denied on the control socket {path}: vswitch commands need root")]
    Permission { path: String },
    #[error("talking to the daemon at {path}: {err}")]
    Io { path: String, err: io::Error },
    #[error("the daemon sent a malformed reply: {0}")]
    BadReply(String),
    #[error("{0}")]
    Daemon(#[from] Failure),
}

/// A connection-per-request client of the daemon at a control socket.
pub struct Client {
    path: PathBuf,
    timeout: Option<Duration>,
}

impl Client {
    pub fn new(path: &Path) -> Client {
        Client {
            path: path.to_path_buf(),
            timeout: None,
        }
    }

    /// Gives up on a daemon that has not answered within `timeout` (a CNI plugin must not hang
    /// its runtime); the command line waits as long as it takes.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = Some(timeout);
        self
    }

    pub fn plug(&self, plug: Plug) -> Result<PortView, ClientError> {
        self.call(&Request::Plug(plug))
    }

    pub fn unplug(&self, unplug: Unplug) -> Result<PortView, ClientError> {
        self.call(&Request::Unplug(unplug))
    }

    pub fn ls(&self) -> Result<Vec<PortView>, ClientError> {
        self.call(&Request::Ls(NoArgs {}))
    }

    pub fn fdb(&self) -> Result<Vec<FdbView>, ClientError> {
        self.call(&Request::Fdb(NoArgs {}))
    }

    pub fn conntrack(&self) -> Result<Vec<FlowRow>, ClientError> {
        self.call(&Request::Conntrack(NoArgs {}))
    }

    /// Deletes the NAT flows `filter` selects (every flow for an empty one); returns them.
    pub fn conntrack_delete(&self, filter: FlowFilter) -> Result<Vec<FlowRow>, ClientError> {
        self.call(&Request::ConntrackDelete(filter))
    }

    /// Forgets learned MACs (one port's, or all); returns the entries forgotten.
    pub fn fdb_flush(&self, port: Option<String>) -> Result<Vec<FdbView>, ClientError> {
        self.call(&Request::FdbFlush(FdbFlush { port }))
    }

    /// Asks the daemon to exit (keeping the network for the next one, with `keep`).
    pub fn stop(&self, keep: bool) -> Result<Stats, ClientError> {
        self.call(&Request::Stop(StopArgs { keep }))
    }

    pub fn stats(&self) -> Result<Stats, ClientError> {
        self.call(&Request::Stats(NoArgs {}))
    }

    pub fn inspect(&self, inspect: Inspect) -> Result<PortView, ClientError> {
        self.call(&Request::Inspect(inspect))
    }

    /// Returns the ports it removed.
    pub fn gc(&self, gc: Gc) -> Result<Vec<PortView>, ClientError> {
        self.call(&Request::Gc(gc))
    }

    /// Sends one request and decodes the daemon's `data` as `T`.
    fn call<T: DeserializeOwned>(&self, request: &Request) -> Result<T, ClientError> {
        let p = self.path.display().to_string();
        let conn = UnixStream::connect(&self.path).map_err(|err| match err.kind() {
            io::ErrorKind::PermissionDenied => ClientError::Permission { path: p.clone() },
            _ => ClientError::NotRunning {
                path: p.clone(),
                err,
            },
        })?;
        let io_err = |err| ClientError::Io {
            path: p.clone(),
            err,
        };
        conn.set_read_timeout(self.timeout).map_err(io_err)?;
        conn.set_write_timeout(self.timeout).map_err(io_err)?;
        let mut line = encode_request(request);
        line.push(b'\n');
        (&conn).write_all(&line).map_err(io_err)?;
        let mut reply = String::new();
        BufReader::new(&conn)
            .read_line(&mut reply)
            .map_err(io_err)?;
        let data = decode_response(&reply).map_err(ClientError::BadReply)??;
        serde_json::from_value(data).map_err(|e| ClientError::BadReply(e.to_string()))
    }
}
