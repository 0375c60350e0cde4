//! A port of the switch: its I/O backend, its identity and its counters.
//!
//! Port I/O sits behind the small [`PortIo`] trait so that the workers never care whether a
//! frame came from an AF_PACKET socket or the TAP, and so that a faster backend can replace the
//! plain one without touching the switching logic. Every backend speaks the same frame format:
//! `[virtio_net_hdr][Ethernet frame]` (see ARCHITECTURE.md).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use vswitch_switch::{PortId, VNET_HDR_LEN};

/// Largest frame a port can hand us: a 64 KiB GSO super-frame plus Ethernet/VLAN headers and the
/// virtio-net header. Receive buffers are this big so that nothing is ever silently truncated.
pub const MAX_FRAME: usize = 65536 + 14 + 4 + VNET_HDR_LEN;

/// Receive-side buffers for one batch; owned by a worker and reused for every batch.
pub struct RxBatch {
    pub bufs: Vec<Box<[u8]>>,
    /// Bytes received into each buffer (virtio-net header included).
    pub lens: Vec<usize>,
    /// The frame was transmitted by this host (AF_PACKET `PACKET_OUTGOING`): never switch it.
    pub outgoing: Vec<bool>,
    /// The frame did not fit its buffer.
    pub truncated: Vec<bool>,
}

impl RxBatch {
    pub fn new(frames: usize) -> RxBatch {
        RxBatch {
            bufs: (0..frames)
                .map(|_| vec![0u8; MAX_FRAME].into_boxed_slice())
                .collect(),
            lens: vec![0; frames],
            outgoing: vec![false; frames],
            truncated: vec![false; frames],
        }
    }
}

/// The I/O seam between the switch and the kernel.
pub trait PortIo: Send + Sync {
    /// The file descriptor workers poll for readability.
    fn fd(&self) -> RawFd;
    /// Reads up to `batch.bufs.len()` frames without blocking; `Ok(0)` when none is waiting.
    fn recv_batch(&self, batch: &mut RxBatch) -> io::Result<usize>;
    /// Sends one frame (`[virtio_net_hdr][Ethernet]`) without blocking.
    fn send(&self, frame: &[u8]) -> io::Result<()>;
    /// Frames the kernel dropped before we could read them (receive queue full), so far.
    fn kernel_drops(&self) -> u64 {
        0
    }
}

/// Per-port counters, updated by the workers with relaxed atomics.
#[derive(Default)]
pub struct Counters {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub drops: AtomicU64,
}

impl Counters {
    pub fn rx(&self, bytes: usize) {
        self.rx_frames.fetch_add(1, Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Relaxed);
    }
    pub fn tx(&self, bytes: usize) {
        self.tx_frames.fetch_add(1, Relaxed);
        self.tx_bytes.fetch_add(bytes as u64, Relaxed);
    }
    pub fn drop_one(&self) {
        self.drops.fetch_add(1, Relaxed);
    }
}

/// A port as the datapath sees it. Dropping the last reference closes its descriptor, so a
/// worker that still holds a port while it is being unplugged never writes to a reused fd.
pub struct Port {
    pub id: PortId,
    pub name: String,
    pub io: Box<dyn PortIo>,
    pub counters: Counters,
}

impl Port {
    /// Sends a frame and counts it; a full or vanished egress is a drop on that port, not an
    /// error for the sender.
    pub fn transmit(&self, frame: &[u8]) {
        match self.io.send(frame) {
            Ok(()) => self.counters.tx(frame.len() - VNET_HDR_LEN),
            Err(_) => self.counters.drop_one(),
        }
    }
}
