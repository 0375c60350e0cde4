//! vswitch's pure datapath. A frame (plain Ethernet: the I/O edge strips the virtio-net
//! header), its ingress port and the current time go in; an [`Action`] comes out. No sockets,
//! no clock and no threads live here, so the forwarding logic is unit tested and benchmarked
//! without root, and one [`Switch`] is shared by `&self` between all worker threads.

mod arp;
mod brlock;
mod fdb;
mod flow;
mod frame;
mod hash;
mod mac;
mod policy;
mod port;
mod slot;
mod stats;
mod switch;
pub mod vnet;

pub use fdb::FdbEntry;
pub use flow::flow_hash;
pub use frame::ethertype;
pub use mac::{MacAddr, ParseMacError};
pub use policy::{Ipv4Prefix, ParsePrefixError, PortPolicy, PortSecurityStats, SpoofKind};
pub use port::{PortId, PortInfo};
pub use stats::SwitchStats;
pub use switch::{Action, Config, DropReason, Switch};

/// Monotonic time in milliseconds, supplied by the caller.
pub type Millis = u64;

/// Size of the virtio-net header (see [`vnet`]) that precedes every frame on the ports. The edge
/// strips it before [`Switch::process`] and writes a zeroed one before frames the switch
/// generates.
pub use vnet::VNET_HDR_LEN;
