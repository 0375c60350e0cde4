//! The command line's side of the control socket.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use super::protocol::Request;

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
    Daemon(String),
}

/// Sends one request and returns the daemon's `data`, or its error message.
pub fn call(path: &Path, request: &Request) -> Result<serde_json::Value, ClientError> {
    let p = path.display().to_string();
    let conn = UnixStream::connect(path).map_err(|source| match source.kind() {
        io::ErrorKind::PermissionDenied => ClientError::Permission { path: p.clone() },
        _ => ClientError::NotRunning {
            path: p.clone(),
            err: source,
        },
    })?;
    let io_err = |err| ClientError::Io {
        path: p.clone(),
        err,
    };
    let mut line = serde_json::to_vec(request).expect("requests always serialize");
    line.push(b'\n');
    (&conn).write_all(&line).map_err(io_err)?;
    let mut reply = String::new();
    BufReader::new(&conn)
        .read_line(&mut reply)
        .map_err(io_err)?;
    let reply: serde_json::Value =
        serde_json::from_str(&reply).map_err(|e| ClientError::BadReply(e.to_string()))?;
    match reply.get("ok").and_then(|v| v.as_bool()) {
        Some(true) => Ok(reply.get("data").cloned().unwrap_or_default()),
        Some(false) => Err(ClientError::Daemon(
            reply
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("unknown error")
                .to_string(),
        )),
        None => Err(ClientError::BadReply(reply.to_string())),
    }
}
