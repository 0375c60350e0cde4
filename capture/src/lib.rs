//! vswitch's packet capture, as pure code: what the daemon's ports hand a capture and what the
//! command line writes to a file. No sockets, no clock and no threads of its own (the caller
//! gives every frame its time), so all of it is unit tested and benchmarked without root.
//!
//! - [`Mirror`]: a port's list of running captures. Its idle check is one relaxed atomic load,
//!   the only cost a port pays while nobody captures it.
//! - [`Session`]: one capture: its [`Filter`], a bounded queue of [`Record`]s that the daemon's
//!   datapath fills without ever waiting (a full queue drops the frame and counts it) and a
//!   reader drains, and how many frames it still wants.
//! - [`record`]: a captured frame (its port, direction, time and bytes) and the length-prefixed
//!   records in which the daemon streams them to the command line.
//! - [`pcapng`] and [`pcap`]: the file formats `tcpdump -r` and `tshark` read.
//! - [`summary`]: one line of text per frame, for a capture printed on a terminal.

mod checksum;
pub mod filter;
mod mirror;
mod packet;
pub mod pcap;
pub mod pcapng;
pub mod record;
pub mod summary;

pub use filter::{Filter, ParseProtoError, Proto};
pub use mirror::{Mirror, Session, SessionConfig};
pub use record::{Direction, Record};
