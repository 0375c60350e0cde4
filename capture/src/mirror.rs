//! A port's mirror: the captures running on it, and each capture's bounded queue.
//!
//! The datapath asks [`Mirror::on`] once per batch it receives on a port and once per batch it
//! sends to one: a relaxed load of a flag that is false while nobody captures the port, and
//! that is all a port pays then. Captured, each frame a capture's [`Filter`] keeps is copied
//! into the capture's queue, never waiting: a full queue (a slow reader) drops the frame and
//! counts it, so a capture never slows the switch down.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use vswitch_switch::VNET_HDR_LEN;

use crate::filter::Filter;
use crate::record::{Direction, Record};

/// The captures of one port.
#[derive(Default)]
pub struct Mirror {
    /// Whether any capture is attached: the datapath's only question while none is.
    on: AtomicBool,
    sessions: ArcSwap<Vec<Arc<Session>>>,
    /// Serialises attach and detach (the datapath only reads).
    edit: Mutex<()>,
}

impl Mirror {
    /// Whether the port is being captured (then call [`Mirror::offer`] with its frames).
    #[inline]
    pub fn on(&self) -> bool {
        self.on.load(Relaxed)
    }

    /// Offers a frame (`[virtio_net_hdr][Ethernet]`) that crossed port `port` at `ts_ns` to
    /// every capture of the port.
    pub fn offer(&self, port: u16, dir: Direction, ts_ns: u64, frame: &[u8]) {
        for session in self.sessions.load().iter() {
            session.offer(port, dir, ts_ns, frame);
        }
    }

    /// Adds a capture.
    pub fn attach(&self, session: Arc<Session>) {
        let _edit = self.edit.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = Vec::clone(&self.sessions.load());
        list.push(session);
        self.sessions.store(Arc::new(list));
        self.on.store(true, Relaxed);
    }

    /// Removes a capture; the port is no longer captured when it was the last.
    pub fn detach(&self, session: &Session) {
        let _edit = self.edit.lock().unwrap_or_else(|e| e.into_inner());
        let mut list = Vec::clone(&self.sessions.load());
        list.retain(|s| !std::ptr::eq(&**s, session));
        self.on.store(!list.is_empty(), Relaxed);
        self.sessions.store(Arc::new(list));
    }

    /// How many captures are attached.
    pub fn captures(&self) -> usize {
        self.sessions.load().len()
    }
}

/// What a capture keeps and how much it may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionConfig {
    pub filter: Filter,
    /// Bytes kept of each frame.
    pub snaplen: usize,
    /// Frames the capture wants in all (`None`: until it is closed).
    pub count: Option<u64>,
    /// Frames and bytes its queue holds at most; past either, frames are dropped (counted).
    pub queue_frames: usize,
    pub queue_bytes: usize,
}

impl SessionConfig {
    /// tcpdump's default snap length: whole frames, even 64 KiB super-frames.
    pub const SNAPLEN: usize = 262144;

    pub fn new(filter: Filter) -> SessionConfig {
        SessionConfig {
            filter,
            snaplen: SessionConfig::SNAPLEN,
            count: None,
            queue_frames: 8192,
            queue_bytes: 16 << 20,
        }
    }
}

/// One capture: frames offered by the ports it is attached to, queued for its reader.
pub struct Session {
    config: SessionConfig,
    tx: Sender<Record>,
    rx: Receiver<Record>,
    /// Bytes of the records queued now.
    queued_bytes: AtomicUsize,
    /// Frames queued so far (toward `count`).
    queued: AtomicU64,
    /// Frames the filter kept that a full queue dropped.
    dropped: AtomicU64,
    closed: AtomicBool,
}

impl Session {
    pub fn new(config: SessionConfig) -> Arc<Session> {
        let (tx, rx) = crossbeam_channel::bounded(config.queue_frames.max(1));
        Arc::new(Session {
            config,
            tx,
            rx,
            queued_bytes: AtomicUsize::new(0),
            queued: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        })
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Queues a copy of `frame` if the filter keeps it, there is room, and the capture still
    /// wants frames. Never blocks.
    pub fn offer(&self, port: u16, dir: Direction, ts_ns: u64, frame: &[u8]) {
        if self.closed.load(Relaxed) || !self.wants_more() {
            return;
        }
        let Some(eth) = frame.get(VNET_HDR_LEN..) else {
            return;
        };
        if !self.config.filter.matches(eth) {
            return;
        }
        let size = Record::size_for(eth.len().min(self.config.snaplen));
        let full = self.queued_bytes.load(Relaxed) + size > self.config.queue_bytes;
        let record = match full {
            true => None,
            false => Record::of_frame(port, dir, ts_ns, frame, self.config.snaplen),
        };
        let Some(record) = record else {
            self.dropped.fetch_add(1, Relaxed);
            return;
        };
        self.queued_bytes.fetch_add(size, Relaxed);
        match self.tx.try_send(record) {
            Ok(()) => {
                self.queued.fetch_add(1, Relaxed);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued_bytes.fetch_sub(size, Relaxed);
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }

    /// Whether the capture has not queued its `count` yet. (Workers racing for the last frames
    /// may queue a few more: the reader stops at `count`.)
    fn wants_more(&self) -> bool {
        self.config
            .count
            .is_none_or(|n| self.queued.load(Relaxed) < n)
    }

    /// The next queued frame, waiting at most `timeout`.
    pub fn next(&self, timeout: Duration) -> Option<Record> {
        let record = self.rx.recv_timeout(timeout).ok()?;
        self.queued_bytes.fetch_sub(record.size(), Relaxed);
        Some(record)
    }

    /// The next queued frame, if one is there.
    pub fn try_next(&self) -> Option<Record> {
        self.next(Duration::ZERO)
    }

    /// Whether no frame is queued.
    pub fn is_empty(&self) -> bool {
        self.rx.is_empty()
    }

    /// Frames dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Relaxed)
    }

    /// Ends the capture: nothing more is queued. Its ports detach it at their own pace.
    pub fn close(&self) {
        self.closed.store(true, Relaxed);
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Proto;
    use crate::packet::tests::{echo, tcp};

    fn framed(eth: &[u8]) -> Vec<u8> {
        [&[0u8; VNET_HDR_LEN][..], eth].concat()
    }

    #[test]
    fn an_idle_mirror_is_off_and_attached_captures_get_what_their_filter_keeps() {
        let mirror = Mirror::default();
        assert!(!mirror.on());
        let all = Session::new(SessionConfig::new(Filter::default()));
        let icmp = Session::new(SessionConfig::new(Filter {
            proto: Some(Proto::Icmp),
            ..Filter::default()
        }));
        mirror.attach(all.clone());
        mirror.attach(icmp.clone());
        assert!(mirror.on());
        let ping = framed(&echo([10, 1, 1, 2], [10, 1, 1, 3], 8, 1, 1));
        let syn = framed(&tcp([10, 1, 1, 2], 1, [10, 1, 1, 3], 2, 2, b""));
        mirror.offer(1, Direction::In, 10, &ping);
        mirror.offer(1, Direction::Out, 20, &syn);
        let got: Vec<(u64, Direction)> = std::iter::from_fn(|| all.try_next())
            .map(|r| (r.ts_ns, r.dir))
            .collect();
        assert_eq!(got, [(10, Direction::In), (20, Direction::Out)]);
        assert_eq!(icmp.try_next().map(|r| r.ts_ns), Some(10));
        assert!(icmp.try_next().is_none());

        // Detached, a capture gets nothing; the port is off with the last one gone.
        mirror.detach(&all);
        assert!(mirror.on());
        mirror.offer(1, Direction::In, 30, &ping);
        assert!(all.try_next().is_none());
        assert_eq!(icmp.try_next().map(|r| r.ts_ns), Some(30));
        mirror.detach(&icmp);
        assert!(!mirror.on());
        assert_eq!(mirror.captures(), 0);
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_count_or_a_close_stops_the_queueing() {
        let ping = framed(&echo([10, 1, 1, 2], [10, 1, 1, 3], 8, 1, 1));
        let slow = Session::new(SessionConfig {
            queue_frames: 3,
            ..SessionConfig::new(Filter::default())
        });
        for ts in 0..10 {
            slow.offer(1, Direction::In, ts, &ping);
        }
        assert_eq!(slow.dropped(), 7);
        assert_eq!(slow.try_next().map(|r| r.ts_ns), Some(0));
        slow.offer(1, Direction::In, 10, &ping);
        let left: Vec<u64> = std::iter::from_fn(|| slow.try_next())
            .map(|r| r.ts_ns)
            .collect();
        assert_eq!(left, [1, 2, 10]);
        assert_eq!(slow.queued_bytes.load(Relaxed), 0);

        // The byte bound holds too.
        let small = Session::new(SessionConfig {
            queue_bytes: Record::size_for(ping.len() - VNET_HDR_LEN) * 2,
            ..SessionConfig::new(Filter::default())
        });
        for ts in 0..5 {
            small.offer(1, Direction::In, ts, &ping);
        }
        assert_eq!(small.dropped(), 3);

        let two = Session::new(SessionConfig {
            count: Some(2),
            ..SessionConfig::new(Filter::default())
        });
        for ts in 0..5 {
            two.offer(1, Direction::In, ts, &ping);
        }
        assert_eq!(std::iter::from_fn(|| two.try_next()).count(), 2);
        assert_eq!(two.dropped(), 0);

        let closed = Session::new(SessionConfig::new(Filter::default()));
        closed.close();
        closed.offer(1, Direction::In, 0, &ping);
        assert!(closed.is_closed() && closed.try_next().is_none());
    }
}
