//! The control protocol: one JSON request line, one JSON response line, over a Unix socket.
//!
//! The socket is root-only (mode 0600): whoever can talk to it can reconfigure the network of
//! any process on the host.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

/// Requests longer than this are refused: no legitimate request is anywhere near it.
pub const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Plug {
        #[serde(default)]
        pid: Option<u32>,
        #[serde(default)]
        netns: Option<PathBuf>,
        #[serde(default)]
        ip: Option<Ipv4Addr>,
        #[serde(default)]
        mac: Option<String>,
        #[serde(default)]
        ifname: Option<String>,
        /// `[HOSTIP:]HOSTPORT:CPORT[/tcp|/udp]`, as on the command line.
        #[serde(default)]
        publish: Vec<String>,
    },
    Unplug {
        #[serde(default)]
        pid: Option<u32>,
        #[serde(default)]
        netns: Option<PathBuf>,
    },
    Ls,
    Fdb,
    Conntrack,
}

/// Which container: a process (its network namespace) or a named namespace file.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Pid(u32),
    Netns(PathBuf),
}

impl Target {
    /// Exactly one of `pid` and `netns` names the container.
    pub fn from_parts(pid: Option<u32>, netns: Option<PathBuf>) -> Result<Target, String> {
        match (pid, netns) {
            (Some(pid), None) => Ok(Target::Pid(pid)),
            (None, Some(path)) => Ok(Target::Netns(path)),
            _ => Err("name the container by exactly one of pid and netns".to_string()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Pid(pid) => write!(f, "pid {pid}"),
            Target::Netns(path) => write!(f, "netns {}", path.display()),
        }
    }
}

/// One port as `vswitch ls` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortView {
    pub port: u16,
    pub kind: String,
    pub pid: Option<u32>,
    pub netns: Option<String>,
    pub host_ifname: String,
    pub ifname: Option<String>,
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub drops: u64,
    /// Of the frames counted above, those the kernel fast path carried (see `fastpath`).
    #[serde(default)]
    pub fast_rx_frames: u64,
    #[serde(default)]
    pub fast_tx_frames: u64,
    /// Published ports, `HOSTPORT:CPORT/PROTO`.
    #[serde(default)]
    pub publish: Vec<String>,
    /// NAT flows of this container now, and its traffic through the NAT so far.
    #[serde(default)]
    pub nat_flows: u64,
    #[serde(default)]
    pub nat_packets_out: u64,
    #[serde(default)]
    pub nat_packets_in: u64,
    #[serde(default)]
    pub nat_bytes_out: u64,
    #[serde(default)]
    pub nat_bytes_in: u64,
    /// What `plug` did about the container's resolv.conf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolv: Option<String>,
}

/// One NAT flow as `vswitch conntrack` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowRow {
    pub proto: String,
    /// The container's address and port (ICMP: its echo identifier).
    pub inside: String,
    /// The destination of an outgoing flow, or the client of a published one.
    pub outside: String,
    pub published: bool,
    pub state: String,
    pub timeout_s: u64,
    pub packets_out: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
    pub bytes_in: u64,
}

/// One learned MAC as `vswitch fdb` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FdbView {
    pub mac: String,
    pub port: u16,
    pub port_name: String,
    pub age_ms: u64,
}

/// A request on its way to the manager thread, with where to send the answer.
pub struct Call {
    pub request: Request,
    pub reply: Sender<Result<serde_json::Value, String>>,
}

/// Binds the control socket at `path`, refusing to steal it from a live daemon but replacing a
/// stale one left by a daemon that was killed.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "another vswitch daemon is already serving {}",
                        path.display()
                    ),
                ))
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                std::fs::remove_file(path)?; // stale: nobody listens any more
            }
            Err(e) => return Err(e),
        },
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // Create it root-only from the start, so there is no window in which others can connect.
    // SAFETY: umask has no memory-safety preconditions.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Accepts connections until the listener fails; each connection is served on its own short
/// thread, so a slow or silent client never holds up the others.
pub fn serve(listener: UnixListener, calls: Sender<Call>) {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        let calls = calls.clone();
        let _ = std::thread::Builder::new()
            .name("vswitch-ctl".into())
            .spawn(move || {
                let _ = serve_one(conn, &calls);
            });
    }
}

fn serve_one(conn: UnixStream, calls: &Sender<Call>) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = Vec::new();
    BufReader::new((&conn).take(MAX_REQUEST as u64 + 1)).read_until(b'\n', &mut line)?;
    let answer = if line.len() > MAX_REQUEST {
        Err(format!("request longer than {MAX_REQUEST} bytes"))
    } else {
        match serde_json::from_slice::<Request>(&line) {
            Err(e) => Err(format!("malformed request: {e}")),
            Ok(request) => {
                let (tx, rx) = crossbeam_channel::bounded(1);
                let call = Call { request, reply: tx };
                if calls.send(call).is_err() {
                    Err("the daemon is shutting down".to_string())
                } else {
                    rx.recv()
                        .unwrap_or_else(|_| Err("the daemon is shutting down".to_string()))
                }
            }
        }
    };
    let response = match answer {
        Ok(data) => serde_json::json!({"ok": true, "data": data}),
        Err(error) => serde_json::json!({"ok": false, "error": error}),
    };
    let mut out = serde_json::to_vec(&response).expect("JSON values always serialize");
    out.push(b'\n');
    (&conn).write_all(&out)
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_documented() {
        let plug = Request::Plug {
            pid: Some(42),
            netns: None,
            ip: Some(Ipv4Addr::new(10, 1, 1, 9)),
            mac: None,
            ifname: None,
            publish: vec![],
        };
        let text = serde_json::to_string(&plug).unwrap();
        assert_eq!(
            text,
            r#"{"cmd":"plug","pid":42,"netns":null,"ip":"10.1.1.9","mac":null,"ifname":null,"publish":[]}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), plug);
        let unplug: Request =
            serde_json::from_str(r#"{"cmd":"unplug","netns":"/run/netns/a"}"#).unwrap();
        assert_eq!(
            unplug,
            Request::Unplug {
                pid: None,
                netns: Some("/run/netns/a".into())
            }
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"ls"}"#).unwrap(),
            Request::Ls
        );
    }

    #[test]
    fn malformed_requests_are_rejected() {
        for bad in [
            "",
            "garbage",
            r#"{"cmd":"reboot"}"#,
            r#"{"cmd":"plug","pid":1,"colour":"red"}"#,
            r#"{"cmd":"plug","pid":-1}"#,
            r#"{"cmd":"plug","pid":1,"ip":"not-an-ip"}"#,
        ] {
            assert!(serde_json::from_str::<Request>(bad).is_err(), "{bad}");
        }
    }
}
