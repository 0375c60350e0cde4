//! The command line's side of the control socket: one typed method per request.

use std::io::{self, BufRead, BufReader, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use vswitch_capture::record::{read_item, Item};
use vswitch_capture::Record;

use super::protocol::{
    decode_response, encode_request, Capture, CaptureEnd, CaptureView, ErrorCode, Failure,
    FdbFlush, FdbView, FlowFilter, FlowRow, Gc, Inspect, NoArgs, Plug, PortView, Request, Stats,
    StopArgs, Unplug,
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

    /// Starts a capture: the daemon's header, then its frames from [`CaptureStream::next`].
    pub fn capture(&self, capture: Capture) -> Result<CaptureStream, ClientError> {
        let (header, reader) = self.send(&Request::Capture(capture)).map_err(|e| match e {
            // A daemon from before `capture` refuses it as an unknown command.
            ClientError::Daemon(f) if f.message.contains("unknown variant `capture`") => {
                ClientError::Daemon(Failure::new(
                    ErrorCode::Version,
                    "the daemon does not know `capture` (an older vswitch): restart it with \
                     this version",
                ))
            }
            e => e,
        })?;
        let conn = reader
            .get_ref()
            .try_clone()
            .map_err(|err| ClientError::Io {
                path: self.path.display().to_string(),
                err,
            })?;
        Ok(CaptureStream {
            header,
            reader,
            conn,
            path: self.path.display().to_string(),
        })
    }

    /// Sends one request and decodes the daemon's `data` as `T`.
    fn call<T: DeserializeOwned>(&self, request: &Request) -> Result<T, ClientError> {
        self.send(request).map(|(data, _)| data)
    }

    /// Sends one request, decodes the daemon's first line's `data` as `T`, and returns the
    /// connection for what may follow.
    fn send<T: DeserializeOwned>(
        &self,
        request: &Request,
    ) -> Result<(T, BufReader<UnixStream>), ClientError> {
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
        let mut reader = BufReader::new(conn);
        reader.read_line(&mut reply).map_err(io_err)?;
        let data = decode_response(&reply).map_err(ClientError::BadReply)??;
        let data =
            serde_json::from_value(data).map_err(|e| ClientError::BadReply(e.to_string()))?;
        Ok((data, reader))
    }
}

/// A running capture, as the command line reads it.
pub struct CaptureStream {
    /// What is captured.
    pub header: CaptureView,
    reader: BufReader<UnixStream>,
    conn: UnixStream,
    path: String,
}

/// What the stream brings next.
pub enum CaptureItem {
    Frame(Record),
    End(CaptureEnd),
}

impl CaptureStream {
    /// The next frame, or the end; `Ok(None)` if the daemon closed the stream without an end
    /// (it was killed).
    pub fn next(&mut self) -> Result<Option<CaptureItem>, ClientError> {
        let item = read_item(&mut self.reader).map_err(|err| ClientError::Io {
            path: self.path.clone(),
            err,
        })?;
        Ok(match item {
            None => None,
            Some(Item::Frame(record)) => Some(CaptureItem::Frame(record)),
            Some(Item::End(json)) => Some(CaptureItem::End(
                serde_json::from_slice(&json).map_err(|e| ClientError::BadReply(e.to_string()))?,
            )),
        })
    }

    /// Whether a record has been received and not read yet (if not, the next `next` may wait).
    pub fn pending(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    /// A handle that stops the capture from another thread.
    pub fn stopper(&self) -> io::Result<CaptureStop> {
        self.conn.try_clone().map(CaptureStop)
    }
}

/// Stops a capture (Ctrl-C).
pub struct CaptureStop(UnixStream);

impl CaptureStop {
    /// Asks the daemon to end the capture: it sends what it has queued, then the end.
    pub fn stop(&self) {
        let _ = self.0.shutdown(Shutdown::Write);
    }

    /// Gives up on the stream (a daemon that does not answer the stop).
    pub fn abort(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}
