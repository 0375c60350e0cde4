//! Why a request failed, as the manager reports it; the control protocol's error code follows
//! from the kind.

use std::io;
use std::net::Ipv4Addr;

use vswitch_switch::MacAddr;

use crate::control::{ErrorCode, Failure};
use crate::kernel::netlink::NetlinkError;

use super::ipam::IpamError;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("no such process")]
    NoSuchProcess,
    #[error("no such namespace file")]
    NoSuchNamespace,
    #[error("permission denied opening {0}")]
    Permission(String),
    #[error("opening its network namespace: {0}")]
    OpenNamespace(io::Error),
    #[error(
        "it shares the daemon's own (host) network namespace; \
         start the container with a network namespace of its own"
    )]
    DaemonNamespace,
    #[error(
        "it is the host's initial network namespace (that of pid 1); \
         start the container with a network namespace of its own"
    )]
    HostNamespace,
    #[error("already plugged (host port {host_ifname}, {ip})")]
    AlreadyPlugged { host_ifname: String, ip: Ipv4Addr },
    #[error("not plugged")]
    NotPlugged,
    #[error("no port named {0} (see `vswitch ls`)")]
    NoSuchPort(String),
    #[error("host interface {0} already exists")]
    HostLinkExists(String),
    #[error("the container already has an interface named {0}")]
    IfnameTaken(String),
    #[error("the container already has a default route")]
    DefaultRoute,
    #[error("{0} did not appear in the container")]
    IfnameVanished(String),
    #[error("MAC address {0} is already in use")]
    MacInUse(MacAddr),
    #[error("{0}")]
    Address(#[from] IpamError),
    #[error("host port {port}/{proto} is already in use")]
    HostPortInUse { port: u16, proto: &'static str },
    #[error("publishing host port {port}/{proto}: {err}")]
    Publish {
        port: u16,
        proto: &'static str,
        err: io::Error,
    },
    #[error("too many ports")]
    TooManyPorts,
    #[error("{0}")]
    Netlink(#[from] NetlinkError),
    /// A system call failed while doing `what`.
    #[error("{what}: {err}")]
    Io { what: String, err: io::Error },
}

impl DaemonError {
    pub fn io(what: impl Into<String>, err: io::Error) -> DaemonError {
        DaemonError::Io {
            what: what.into(),
            err,
        }
    }

    pub fn code(&self) -> ErrorCode {
        use DaemonError::*;
        match self {
            NoSuchProcess | NoSuchNamespace | NotPlugged | NoSuchPort(_) => ErrorCode::NotFound,
            AlreadyPlugged { .. }
            | HostLinkExists(_)
            | IfnameTaken(_)
            | DefaultRoute
            | MacInUse(_)
            | HostPortInUse { .. } => ErrorCode::Exists,
            Address(IpamError::InUse(_) | IpamError::IsGateway(_)) => ErrorCode::Exists,
            Address(IpamError::Full(_)) | TooManyPorts => ErrorCode::Full,
            Address(_) | DaemonNamespace | HostNamespace => ErrorCode::Invalid,
            Permission(_) | OpenNamespace(_) | IfnameVanished(_) | Publish { .. } => {
                ErrorCode::Failed
            }
            Netlink(_) | Io { .. } => ErrorCode::Failed,
        }
    }

    /// The response for a request described by `what` (e.g. `plug pid 42`).
    pub fn failure(&self, what: &str) -> Failure {
        Failure::new(self.code(), format!("{what}: {self}"))
    }
}
