//! A port of the switch: its I/O backend, its identity and its counters.
//!
//! Port I/O sits behind the small [`PortIo`] trait so that the workers never care whether a
//! frame came from an AF_PACKET socket or the TAP, and so that a faster backend can replace the
//! plain one without touching the switching logic. Every backend speaks the same frame format:
//! `[virtio_net_hdr][Ethernet frame]` (see ARCHITECTURE.md).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use vswitch_capture::{Direction, Mirror};
use vswitch_switch::vnet::datagrams;
use vswitch_switch::{flow_hash, PortId, VNET_HDR_LEN};

use super::Coalescing;

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
    /// Sends frames in order without blocking; returns how many went out and their bytes (a
    /// frame that cannot go is skipped: the caller counts it as dropped).
    fn send_batch(&self, frames: &[&[u8]]) -> (usize, u64) {
        let mut sent = (0, 0);
        for frame in frames {
            if self.send(frame).is_ok() {
                sent.0 += 1;
                sent.1 += frame.len() as u64;
            }
        }
        sent
    }
    /// Frames the kernel dropped before we could read them (receive queue full), so far.
    fn kernel_drops(&self) -> u64 {
        0
    }
    /// Whether a quarter or more of the receive buffer is taken by frames not yet read.
    fn backed_up(&self) -> bool {
        false
    }
}

/// Nanoseconds since the Unix epoch: a captured frame's time.
fn realtime_ns() -> u64 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH))
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Per-port counters, updated by the workers with relaxed atomics.
#[derive(Default)]
pub struct Counters {
    /// Frames received and sent, as the links count packets: a UDP super-frame counts its
    /// datagrams (see `vnet::datagrams`).
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames received and refused: truncated, malformed, for a port gone.
    pub drops: AtomicU64,
    /// Frames the port's sockets would not take (queue full, link gone).
    pub tx_drops: AtomicU64,
}

impl Counters {
    pub fn rx(&self, frames: usize, bytes: usize) {
        self.rx_frames.fetch_add(frames as u64, Relaxed);
        self.rx_bytes.fetch_add(bytes as u64, Relaxed);
    }
    pub fn drop_one(&self) {
        self.drops.fetch_add(1, Relaxed);
    }
}

/// A port as the datapath sees it. Dropping the last reference closes its descriptors, so a
/// worker that still holds a port while it is being unplugged never writes to a reused fd.
pub struct Port {
    pub id: PortId,
    pub name: String,
    /// Receive queues, one per worker where the backend has several (AF_PACKET fanout,
    /// multi-queue TAP); any of them can send.
    pub queues: Vec<Box<dyn PortIo>>,
    /// Send each frame through the queue its flow picks, not the sender's own (the TAP: the
    /// kernel sends a flow's frames back through the queue the flow's frames last came in by,
    /// and one flow read from two queues by two workers would be reordered).
    pub by_flow: bool,
    pub counters: Counters,
    /// The captures running on this port (`vswitch capture`); idle, one relaxed load per batch.
    pub mirror: Mirror,
    /// Receive coalescing, on a container's port the daemon serves itself.
    pub coalesce: Option<Coalescing>,
}

impl Port {
    fn queue(&self, hint: usize) -> &dyn PortIo {
        &*self.queues[hint % self.queues.len()]
    }

    /// Sends a frame and counts it; a full or vanished egress is a drop on that port, not an
    /// error for the sender. `hint` picks the queue (a worker uses its own), except on a port
    /// that sends by flow.
    pub fn transmit(&self, hint: usize, frame: &[u8]) {
        self.transmit_batch(hint, &[frame]);
    }

    pub fn transmit_batch(&self, hint: usize, frames: &[&[u8]]) {
        if self.mirror.on() {
            self.mirror_sent(frames);
        }
        let (sent, bytes) = if self.by_flow && self.queues.len() > 1 {
            frames.iter().fold((0, 0), |(sent, bytes), frame| {
                let flow = flow_hash(frame.get(VNET_HDR_LEN..).unwrap_or_default());
                let (s, b) = self.queue(flow as usize).send_batch(&[frame]);
                (sent + s, bytes + b)
            })
        } else {
            self.queue(hint).send_batch(frames)
        };
        let c = &self.counters;
        let packets: usize = frames[..sent].iter().map(|f| datagrams(f)).sum();
        c.tx_frames.fetch_add(packets as u64, Relaxed);
        c.tx_bytes
            .fetch_add(bytes - (sent * VNET_HDR_LEN) as u64, Relaxed);
        if sent < frames.len() {
            c.tx_drops.fetch_add((frames.len() - sent) as u64, Relaxed);
        }
    }

    /// Hands the frames of a received batch to the port's captures: those that came in
    /// (`outgoing` ones are the host's own transmissions, captured when sent). Call only while
    /// `self.mirror.on()`.
    #[cold]
    pub fn mirror_received(&self, batch: &RxBatch, got: usize) {
        for i in 0..got {
            if !batch.outgoing[i] && !batch.truncated[i] {
                let frame = &batch.bufs[i][..batch.lens[i]];
                self.mirror
                    .offer(self.id.0, Direction::In, realtime_ns(), frame);
            }
        }
    }

    /// Hands frames about to be sent to the port's captures: before they go, so that a reply
    /// to one of them is never captured ahead of it.
    #[cold]
    fn mirror_sent(&self, frames: &[&[u8]]) {
        for frame in frames {
            self.mirror
                .offer(self.id.0, Direction::Out, realtime_ns(), frame);
        }
    }

    /// Frames the kernel dropped on this port's receive queues.
    pub fn kernel_drops(&self) -> u64 {
        self.queues.iter().map(|q| q.kernel_drops()).sum()
    }

    /// Whether any of the port's receive queues is backed up (see [`PortIo::backed_up`]).
    pub fn backed_up(&self) -> bool {
        self.queues.iter().any(|q| q.backed_up())
    }
}
