//! The host side of a container's published ports: bound before its veth exists (a port in
//! use fails the plug early), handed to the NAT service once the plug is done.

use std::io;

use crate::control::PublishSpec;
use crate::natd::{self, NatJob};

use super::{Container, DaemonError, Manager};

impl Manager {
    /// Binds the host side of published ports.
    pub(in crate::daemon) fn bind_all(
        &self,
        publish: &[PublishSpec],
    ) -> Result<Vec<(natd::Listener, u16)>, DaemonError> {
        (publish.iter())
            .map(|spec| bind_published(spec).map(|l| (l, spec.container_port)))
            .collect()
    }

    /// Hands a container's bound published ports to the NAT service.
    pub(in crate::daemon) fn serve_published(
        &self,
        container: &Container,
        listeners: Vec<(natd::Listener, u16)>,
    ) {
        if !listeners.is_empty() {
            self.nat_jobs.send(NatJob::Publish {
                container: container.ip,
                mac: container.mac.0,
                ports: listeners,
            });
        }
    }
}

/// Binds a published port's host side; a port in use is a clear error.
fn bind_published(spec: &PublishSpec) -> Result<natd::Listener, DaemonError> {
    natd::bind_published(spec).map_err(|err| match err.kind() {
        io::ErrorKind::AddrInUse => DaemonError::HostPortInUse {
            port: spec.host_port,
            proto: spec.proto(),
        },
        _ => DaemonError::Publish {
            port: spec.host_port,
            proto: spec.proto(),
            err,
        },
    })
}
