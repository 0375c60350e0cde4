//! The switch's ports as the workers see them: the [`PortIo`] seam and its two backends, the
//! AF_PACKET socket on a container veth's host end and the host's TAP.

mod coalesce;
pub mod packet;
mod port;
pub mod tap;

pub use coalesce::Coalescing;
pub use port::{Counters, Port, PortIo, RxBatch};
