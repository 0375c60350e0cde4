//! The NAT's edge: the host sockets behind the containers' flows to the outside and behind the
//! published ports. The translation itself is the pure `vswitch-nat` crate.
//!
//! - `hook`: which frames the datapath workers hand to the NAT, and what they do with each
//!   verdict; echo requests leave through a raw ICMP socket straight from the workers
//!   (`mailbox`), which also read the replies.
//! - `service`: one thread with an epoll set that owns the other sockets: relay listeners and
//!   upstream connects (`connect`), one socket per UDP flow (`udp`), published ports
//!   (`publish`). Established TCP connections are spliced by the datapath's `relay`.
//! - `dns`: the forwarder on the gateway; `resolv`: upstreams and the containers' resolv.conf.
//!
//! Workers and the manager send the service jobs through a crossbeam channel plus an eventfd
//! to wake it.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};

use crossbeam_channel::{Receiver, Sender};
use vswitch_nat::{Expired, FlowId};

use crate::kernel::fdpass::FdOut;

pub mod budget;
mod connect;
pub mod dns;
mod hook;
mod mailbox;
mod offload;
mod publish;
pub mod resolv;
mod service;
mod snapshot;
mod sockets;
mod translate;
mod udp;

pub use hook::NatHook;
pub use mailbox::NatMailbox;
pub use offload::{KernelSnap, Offloads, Resets};
pub use service::NatService;
pub use snapshot::ServiceSnap;
pub use sockets::{bind_published, bind_relays, mark_gateway_sockets, raw_ipv4_socket};
pub use translate::{TcpNat, Translator};

/// Work the datapath and the manager hand to the NAT service.
pub enum NatJob {
    UdpOut {
        flow: FlowId,
        /// The container's address and port.
        from: SocketAddrV4,
        dst: SocketAddrV4,
        payload: Vec<u8>,
        gso_size: u16,
    },
    UdpToClient {
        publish_id: u32,
        client: SocketAddrV4,
        payload: Vec<u8>,
        gso_size: u16,
    },
    /// Serve these published ports (already bound by the manager) for a container.
    Publish {
        container: Ipv4Addr,
        mac: [u8; 6],
        ports: Vec<(Listener, u16)>,
    },
    /// Close a container's published ports.
    Unpublish { container: Ipv4Addr },
    /// Flows the table reclaimed: close their sockets.
    Forget(Vec<Expired>),
    /// Stop serving and describe every socket (listed in `fds`) for a process that takes over;
    /// then wait: a message on `resume` (or its end) goes on.
    Pause {
        fds: FdOut,
        reply: Sender<(ServiceSnap, FdOut)>,
        resume: Receiver<()>,
    },
}

/// A bound host socket of a published port.
pub enum Listener {
    Tcp(TcpListener),
    Udp(UdpSocket),
}
