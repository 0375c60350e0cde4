//! vswitch's NAT: connection tracking and translation of the containers' traffic to and from
//! the outside, carried by the host's own sockets or translated by the edge (no IP forwarding,
//! no firewall rule).
//!
//! Pure like the switch: frames (`[virtio_net_hdr][Ethernet][IPv4]...`, as the datapath carries
//! them) and the time in milliseconds go in, verdicts and rewritten frames come out. No sockets,
//! no clock, no threads: the edge (the daemon's datapath and relay) does the I/O, so translation
//! and flow tracking are unit tested with a controlled clock and benchmarked without root. One
//! [`Nat`] is shared by `&self` between the datapath workers. See [`nat`] for the mechanism.

mod checksum;
mod conntrack;
mod craft;
pub mod echo;
mod error;
mod hash;
pub mod nat;
pub mod snapshot;
mod tcp_state;
mod wire;

#[cfg(test)]
mod tests;

pub use conntrack::{
    ContainerStats, Expired, FlowId, FlowView, NatStats, Proto, Refusals, Shares, StateCount,
    Timeouts, DEFAULT_MAX_FLOWS,
};
pub use craft::{
    tcp_reset_frame, tcp_syn_frame, ECHO_FRAME_OVERHEAD, ICMP_ERROR_FRAME_MAX, TCP_RST_FRAME_LEN,
    TCP_SYN_FRAME_MAX, UDP_FRAME_OVERHEAD,
};
pub use error::{NatDrop, NatError};
pub use nat::{
    DatagramFlow, Nat, NatConfig, Offload, RelayFlow, ReplyFrame, Verdict, ICMP_DEST_UNREACH,
    OFFLOAD_AFTER,
};
pub use snapshot::{NatSnapshot, RestoreError};
pub use tcp_state::TcpState;
pub use wire::{WireError, VNET_F_DATA_VALID, VNET_F_NEEDS_CSUM, VNET_HDR_LEN};
