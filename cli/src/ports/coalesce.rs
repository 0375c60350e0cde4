//! Receive coalescing on a container's port that the daemon serves itself (no kernel fast path
//! on it): under a flood of datagrams, the kernel merges them into UDP GSO super-frames
//! before the daemon reads them, so the daemon reads, switches and sends one frame for up to 64
//! datagrams instead of one for each.
//!
//! Why: a container sending small datagrams as fast as it can costs its own CPU a system call
//! and a copy per datagram, while the daemon pays that and the receiver's delivery too. A packet
//! socket gives the sender no back-pressure (its buffer is freed once the frame is queued at the
//! socket), so the sender outran the daemon and more than half of a 64-byte UDP flood was lost
//! at the port's socket. Merged, the same flood crosses the daemon with nothing lost there.
//!
//! How: GRO with UDP forwarding on the veth's host end (`rx-gro`, `rx-udp-gro-forwarding`)
//! merges the datagrams its NAPI polls together; NAPI deferral (`gro_flush_timeout`,
//! `napi_defer_hard_irqs`) makes it poll them together, holding them for up to [`FLUSH_NS`].
//! Both stay off until the daemon falls behind, as a NIC's interrupt moderation comes on under
//! load: the delay is what a request/response exchange must not pay. A worker that keeps reading
//! full batches of single UDP datagrams from the port, while the port's socket buffer fills (a
//! quarter full) or drops frames, turns them on; the manager's tick turns them off when no
//! merged frame came in since the last tick (the datagrams no longer come as a stream). TCP is
//! not affected either way: a veth passes a TCP socket's segments around its NAPI.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

use vswitch_switch::vnet::GSO_UDP_L4;
use vswitch_switch::VNET_HDR_LEN;

use crate::kernel::ethtool;

/// How long the kernel may hold a port's datagrams to merge them, while deferral is on.
pub const FLUSH_NS: u32 = 50_000;
/// Idle polls the kernel defers before it goes back to polling at once.
const DEFER_POLLS: u32 = 2;
/// Full batches of mostly single datagrams in a row after which the port's socket is checked:
/// coalescing comes on only once its buffer is a quarter full, or it dropped frames.
const ON_AFTER: u32 = 4;
/// IP protocol number of UDP.
const UDP: u8 = 17;

/// A port's coalescing: checked at plug, switched on by the workers, and off by the manager's
/// tick.
#[derive(Debug)]
pub struct Coalescing {
    ifname: String,
    /// Coalescing is on: the kernel merges the port's datagrams.
    on: AtomicBool,
    /// Turning it on or off failed once: leave the port as it is.
    broken: AtomicBool,
    /// Full batches of single datagrams in a row, while off.
    streak: AtomicU32,
    /// The port's socket drops when the streak was last checked.
    drops_seen: AtomicU64,
    /// A UDP super-frame came in since the last tick (or coalescing came on since).
    merged: AtomicBool,
    /// How many times coalescing came on.
    engaged: AtomicU64,
    /// Held while writing the link's settings.
    writing: Mutex<()>,
}

impl Coalescing {
    /// Checks that the host end `ifname` (ifindex `index`, in the calling thread's namespace)
    /// can coalesce, and leaves it off. Fails where the kernel has no UDP GRO forwarding
    /// (before 5.12) or `/sys/class/net` shows another namespace than the daemon's.
    pub fn prepare(ifname: &str, index: u32) -> io::Result<Coalescing> {
        Coalescing::reset(ifname, index)?;
        Ok(Coalescing::off(ifname))
    }

    /// The state of a port whose coalescing is off.
    fn off(ifname: &str) -> Coalescing {
        Coalescing {
            ifname: ifname.to_string(),
            on: AtomicBool::new(false),
            broken: AtomicBool::new(false),
            streak: AtomicU32::new(0),
            drops_seen: AtomicU64::new(0),
            merged: AtomicBool::new(false),
            engaged: AtomicU64::new(0),
            writing: Mutex::new(()),
        }
    }

    /// Turns coalescing off on `ifname` (ifindex `index`), as on a port the kernel fast path
    /// serves: a daemon without the fast path may have left it on, and the fast path's
    /// programs should see the frames as they were sent.
    pub fn reset(ifname: &str, index: u32) -> io::Result<()> {
        sysfs_is_ours(ifname, index)?;
        set(ifname, false)
    }

    /// Whether coalescing is on now.
    pub fn is_on(&self) -> bool {
        self.on.load(Relaxed)
    }

    /// How many times coalescing came on.
    pub fn engaged(&self) -> u64 {
        self.engaged.load(Relaxed)
    }

    /// A worker read `frames` from the port, filling its batch if `full`. Turns coalescing on
    /// when the daemon keeps falling behind a stream of datagrams and the port's socket
    /// (`pressure`, read only then: its drops so far, and whether its buffer is a quarter
    /// full) is backed up or has dropped some since the last check.
    pub fn after_batch<'a>(
        &self,
        frames: impl Iterator<Item = &'a [u8]>,
        full: bool,
        pressure: impl FnOnce() -> (u64, bool),
    ) {
        if self.on.load(Relaxed) {
            if !self.merged.load(Relaxed) && frames.into_iter().any(is_udp_super_frame) {
                self.merged.store(true, Relaxed);
            }
            return;
        }
        if !full || self.broken.load(Relaxed) {
            self.streak.store(0, Relaxed);
            return;
        }
        let (mut datagrams, mut all) = (0, 0);
        for frame in frames {
            all += 1;
            datagrams += usize::from(is_datagram(frame));
        }
        if 2 * datagrams < all || self.streak.fetch_add(1, Relaxed) + 1 < ON_AFTER {
            return;
        }
        // Behind, but by little (a burst the socket's buffer holds): look again after another
        // streak. Not waiting for drops: a merged frame takes the buffer space of all its
        // datagrams, and the first ones would not fit in a full buffer, each losing up to 64
        // datagrams while the socket counts one drop.
        self.streak.store(0, Relaxed);
        let (drops, backed_up) = pressure();
        if self.drops_seen.swap(drops, Relaxed) >= drops && !backed_up {
            return;
        }
        // One worker switches (a few system calls, once per flood; the ioctl may wait for the
        // rtnl lock); the others see it on.
        if self
            .on
            .compare_exchange(false, true, Relaxed, Relaxed)
            .is_ok()
        {
            self.merged.store(true, Relaxed);
            self.switch(true);
        }
    }

    /// The manager's tick: coalescing goes off when no merged frame came in since the last
    /// tick.
    pub fn tick(&self) {
        if self.on.load(Relaxed) && !self.merged.swap(false, Relaxed) {
            self.streak.store(0, Relaxed);
            self.on.store(false, Relaxed);
            self.switch(false);
        }
    }

    /// Writes coalescing `on` to the link, unless `on` changed again meanwhile (a worker and
    /// the tick may race): the writes are serialised, and the last one matches `self.on`.
    fn switch(&self, on: bool) {
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        if self.on.load(Relaxed) != on {
            return;
        }
        match set(&self.ifname, on) {
            Ok(()) if on => {
                self.engaged.fetch_add(1, Relaxed);
                tracing::debug!(port = %self.ifname, "receive coalescing on");
            }
            Ok(()) => tracing::debug!(port = %self.ifname, "receive coalescing off"),
            Err(e) => {
                // The link is going away, most likely; a port whose setting cannot be changed
                // keeps whatever it has.
                self.broken.store(true, Relaxed);
                self.on.store(false, Relaxed);
                tracing::debug!(port = %self.ifname, "receive coalescing: {e}");
            }
        }
    }
}

/// Fails unless `/sys/class/net` shows the daemon's namespace, where `ifname` has ifindex
/// `index`: sysfs shows the namespace of whoever mounted it, and a link of the same name
/// elsewhere is not the daemon's to change.
fn sysfs_is_ours(ifname: &str, index: u32) -> io::Result<()> {
    let sysfs = std::fs::read_to_string(format!("/sys/class/net/{ifname}/ifindex"))?;
    if sysfs.trim().parse::<u32>().ok() != Some(index) {
        return Err(io::Error::other(
            "/sys/class/net shows another network namespace than the daemon's",
        ));
    }
    Ok(())
}

/// Turns the host end's GRO with UDP forwarding and its NAPI deferral on or off. GRO stays off
/// while coalescing is: it puts the veth's datagrams through a NAPI, whose counters leave out
/// their Ethernet headers (the container's `ip -s link` would then count fewer bytes than the
/// port), and it merges nothing without deferral anyway.
fn set(ifname: &str, on: bool) -> io::Result<()> {
    let features = [("rx-gro", on), ("rx-udp-gro-forwarding", on)];
    if on {
        ethtool::set_features(ifname, &features)?;
        set_deferral(ifname, true)
    } else {
        set_deferral(ifname, false)?;
        ethtool::set_features(ifname, &features)
    }
}

/// Sets the host end's NAPI deferral (sysfs of the calling thread's mount namespace).
fn set_deferral(ifname: &str, on: bool) -> io::Result<()> {
    let (flush, polls) = if on { (FLUSH_NS, DEFER_POLLS) } else { (0, 0) };
    let dir = format!("/sys/class/net/{ifname}");
    std::fs::write(format!("{dir}/napi_defer_hard_irqs"), polls.to_string())?;
    std::fs::write(format!("{dir}/gro_flush_timeout"), flush.to_string())
}

/// A frame (with its virtio-net header) that is one IPv4 UDP datagram, not merged (GRO merges
/// nothing else a container sends through its NAPI: deferring it would only delay it).
fn is_datagram(frame: &[u8]) -> bool {
    let eth = frame.get(VNET_HDR_LEN..).unwrap_or_default();
    frame.get(1) == Some(&0) && eth.get(12..14) == Some(&[0x08, 0x00]) && eth.get(23) == Some(&UDP)
}

/// A frame (with its virtio-net header) that the kernel merged from UDP datagrams.
fn is_udp_super_frame(frame: &[u8]) -> bool {
    frame.get(1) == Some(&GSO_UDP_L4)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(proto: u8, len: usize, gso_type: u8) -> Vec<u8> {
        let mut f = vec![0u8; VNET_HDR_LEN + len];
        f[1] = gso_type;
        f[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[0x08, 0x00]);
        f[VNET_HDR_LEN + 23] = proto;
        f
    }

    fn port() -> Coalescing {
        Coalescing::off("vsw-test-none")
    }

    #[test]
    fn udp_datagrams_are_told_from_the_rest() {
        assert!(is_datagram(&datagram(17, 106, 0)));
        assert!(!is_datagram(&datagram(1, 98, 0)), "ICMP: nothing to merge");
        assert!(is_datagram(&datagram(17, 1514, 0)));
        assert!(!is_datagram(&datagram(6, 66, 0)), "TCP");
        assert!(!is_datagram(&datagram(17, 106, GSO_UDP_L4)), "merged");
        let mut arp = datagram(17, 60, 0);
        arp[VNET_HDR_LEN + 12..VNET_HDR_LEN + 14].copy_from_slice(&[0x08, 0x06]);
        assert!(!is_datagram(&arp));
        assert!(!is_datagram(&[0u8; 4]), "truncated");
        assert!(is_udp_super_frame(&datagram(17, 3000, GSO_UDP_L4)));
        assert!(!is_udp_super_frame(&datagram(6, 3000, 1)), "TCP GSO");
    }

    #[test]
    fn only_a_streak_of_full_batches_of_datagrams_looks_at_the_socket() {
        let udp = datagram(17, 106, 0);
        let tcp = datagram(6, 66, 0);
        let p = port();
        let looked = std::cell::Cell::new(0);
        let drops = || {
            looked.set(looked.get() + 1);
            (0, false)
        };
        for _ in 0..ON_AFTER - 1 {
            p.after_batch([&udp[..]; 32].into_iter(), true, drops);
        }
        assert_eq!(p.streak.load(Relaxed), ON_AFTER - 1);
        p.after_batch([&udp[..]; 5].into_iter(), false, drops);
        assert_eq!(
            p.streak.load(Relaxed),
            0,
            "a short batch: the daemon caught up"
        );
        for _ in 0..2 * ON_AFTER {
            p.after_batch([&tcp[..]; 32].into_iter(), true, drops);
        }
        assert_eq!(p.streak.load(Relaxed), 0, "full batches of TCP segments");
        assert_eq!(
            looked.get(),
            0,
            "the socket's drops are read only after a streak"
        );
        // A streak with no drops (a burst the socket holds): nothing, and a new streak starts.
        for _ in 0..ON_AFTER {
            p.after_batch([&udp[..]; 32].into_iter(), true, drops);
        }
        assert_eq!((looked.get(), p.streak.load(Relaxed)), (1, 0));
        assert!(!p.is_on() && !p.broken.load(Relaxed));
        // A streak with the buffer backed up, no drops yet: it tries (and fails here).
        for _ in 0..ON_AFTER {
            p.after_batch([&udp[..]; 32].into_iter(), true, || (0, true));
        }
        assert!(p.broken.load(Relaxed), "it tried to switch");
    }

    #[test]
    fn coalescing_comes_on_with_drops_and_goes_off_at_a_tick_without_a_merged_frame() {
        let udp = datagram(17, 106, 0);
        let merged = datagram(17, 3000, GSO_UDP_L4);
        let p = port();
        for _ in 0..ON_AFTER {
            p.after_batch([&udp[..]; 32].into_iter(), true, || (7, false));
        }
        // It tried (no such link here, so the write failed): the port is left alone from then
        // on.
        assert!(!p.is_on() && p.broken.load(Relaxed) && p.engaged() == 0);
        for _ in 0..ON_AFTER {
            p.after_batch([&udp[..]; 32].into_iter(), true, || (9, false));
        }
        assert!(!p.is_on());
        assert_eq!(p.drops_seen.load(Relaxed), 7, "a broken port looks no more");

        // As on a link that takes it: on, kept by merged frames, off at a tick without one.
        let p = port();
        p.on.store(true, Relaxed);
        p.merged.store(true, Relaxed);
        p.tick();
        assert!(p.is_on(), "the first tick after coming on keeps it");
        p.after_batch([&merged[..], &udp[..]].into_iter(), false, || (0, false));
        p.tick();
        assert!(p.is_on(), "a merged frame came in");
        p.after_batch([&udp[..]].into_iter(), false, || (0, false));
        p.tick();
        assert!(!p.is_on(), "no merged frame since the last tick");
    }
}
