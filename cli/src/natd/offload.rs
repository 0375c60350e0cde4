//! Relayed TCP connections handed to the kernel (`bpf::relay`). The NAT offers a relayed
//! connection once it is established and past its first segments (`Verdict::Offload`), and says
//! when it leaves ESTABLISHED (`Verdict::Closing`) or the table forgets it; this
//! installs and removes the connection's two entries, only for containers whose port the kernel
//! fast path serves (not isolated, not captured), and reports to the NAT what the kernel
//! carried, which counts on the flow and keeps it alive.
//!
//! It keeps the translated connections too (`natd::translate`), which the kernel carries from
//! their SYN on: their flags, reported the same way, move the NAT's flow, and once a connection
//! is over (and nothing moved for a report) its entries go; the NAT answers a new SYN on the
//! same ports with a new flow.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use vswitch_nat::{tcp_reset_frame, FlowId, Nat, Offload, TCP_RST_FRAME_LEN, VNET_HDR_LEN};
use vswitch_switch::PortId;

use serde::{Deserialize, Serialize};

use crate::bpf::fastpath::Uplinks;
use crate::bpf::relay::{EntryKind, Event, RelayMaps, Rule, Traffic, Translation};
use crate::bpf::ringbuf::RingBuf;
use crate::datapath::Fabric;
use crate::kernel::fdpass::{FdIn, FdOut};

use super::budget::{FdBudget, Lease};
use super::sockets::send_raw;

/// The connections the kernel carries, as a hand-over describes them to the next daemon: the
/// maps are pinned and stay as they are; a translated connection's reservation travels by
/// index (none once it is over).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSnap {
    pub relayed: Vec<FlowId>,
    pub translated: Vec<(FlowId, Option<usize>)>,
}

pub struct Offloads {
    maps: Arc<RelayMaps>,
    state: Mutex<State>,
    resets: OnceLock<Resets>,
    /// Connections handed to the kernel so far.
    total: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The containers whose connections the kernel may carry: address → (port, veth).
    served: HashMap<Ipv4Addr, (PortId, u32)>,
    flows: HashMap<FlowId, Entry>,
    /// Which flow holds the entries of a (container, remote) pair: a new connection on the same
    /// ports replaces an old one's entries, which must then not go with the old one.
    holder: HashMap<(SocketAddrV4, SocketAddrV4), FlowId>,
}

struct Entry {
    out: Rule,
    back: Rule,
    /// What the kernel had carried at the last report, each way.
    reported: (Traffic, Traffic),
    /// A translated connection's: the host's side it holds (until it is over).
    translated: Option<Translated>,
}

struct Translated {
    /// The host's four-tuple (`sockets::reserve_tcp`) and the descriptor it costs.
    reservation: Option<(OwnedFd, Lease)>,
    /// Over at the last report, having carried this much: the entries go at the next one if
    /// nothing moved meanwhile.
    over: Option<(Traffic, Traffic)>,
    /// The TCP flags its segments carried out and back, as last read or told.
    flags: (u8, u8),
    /// The container's MAC, then the gateway's.
    macs: [u8; 12],
}

impl Entry {
    /// Carried by the kernel now: relayed, or translated and not over.
    fn open(&self) -> bool {
        (self.translated.as_ref()).is_none_or(|t| t.reservation.is_some())
    }
}

/// Where the daemon's resets of translated connections go: the remote end's through a raw
/// socket of the host, the container's into the switch.
pub struct Resets {
    pub raw: OwnedFd,
    pub fabric: Fabric,
}

impl Offloads {
    pub fn new(maps: Arc<RelayMaps>) -> Offloads {
        Offloads {
            maps,
            state: Mutex::new(State::default()),
            resets: OnceLock::new(),
            total: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections the kernel carries now.
    pub fn len(&self) -> usize {
        self.lock().flows.values().filter(|e| e.open()).count()
    }

    /// The port and veth of container `ip`, if the kernel may carry its connections.
    pub fn served(&self, ip: &Ipv4Addr) -> Option<(PortId, u32)> {
        self.lock().served.get(ip).copied()
    }

    /// Whether the kernel carries flow `flow` now.
    pub fn carries(&self, flow: FlowId) -> bool {
        self.lock().flows.get(&flow).is_some_and(Entry::open)
    }

    /// Connections handed to the kernel so far.
    pub fn total(&self) -> u64 {
        self.total.load(Relaxed)
    }

    /// The NAT offers an established relayed connection: the kernel carries it if its
    /// container is served. If the maps are full, the daemon keeps carrying it.
    pub fn offer(&self, o: &Offload) {
        let mut st = self.lock();
        let Some(&(port, veth)) = st.served.get(o.container.ip()) else {
            return;
        };
        let out = Rule {
            src: o.container,
            dst: o.remote,
            to: o.relay,
            veth,
            port,
        };
        let back = Rule {
            src: o.relay,
            dst: o.container,
            to: o.remote,
            veth,
            port,
        };
        // A connection on the same ports that the NAT forgot without a word: its entries go
        // first (its way back may have had another relay port).
        if let Some(old) = st.holder.remove(&(o.container, o.remote)) {
            if let Some(e) = st.flows.remove(&old) {
                self.maps.remove(&e.out, &e.back);
            }
        }
        if self.maps.install(&out, &back, o.flow).is_err() {
            return;
        }
        let entry = Entry {
            out,
            back,
            reported: Default::default(),
            translated: None,
        };
        st.holder.insert((o.container, o.remote), o.flow);
        st.flows.insert(o.flow, entry);
        self.total.fetch_add(1, Relaxed);
    }

    /// Hands translated connection `flow` to the kernel before its first segment goes; it
    /// holds `reservation` until it is over. False if the maps are full.
    pub fn translate(&self, flow: FlowId, t: &Translation, reservation: (OwnedFd, Lease)) -> bool {
        let mut st = self.lock();
        let (out, back) = t.rules();
        if let Some(old) = st.holder.remove(&(t.container, t.remote)) {
            if let Some(e) = st.flows.remove(&old) {
                self.maps.remove(&e.out, &e.back);
            }
        }
        if self.maps.translate(t, flow).is_err() {
            return false;
        }
        let entry = Entry {
            out,
            back,
            reported: Default::default(),
            translated: Some(Translated {
                reservation: Some(reservation),
                over: None,
                flags: (0, 0),
                macs: t.macs,
            }),
        };
        st.holder.insert((t.container, t.remote), flow);
        st.flows.insert(flow, entry);
        self.total.fetch_add(1, Relaxed);
        true
    }

    /// Flow `flow` leaves ESTABLISHED: its segments cross the daemon again, and what the kernel
    /// carried of it since the last report is counted.
    pub fn closing(&self, flow: FlowId, nat: &Nat, now: u64) {
        if let Some((e, carried)) = self.take(flow) {
            let (out, back) = delta(&e, carried);
            nat.offloaded(flow, out, back, now);
        }
    }

    /// Flows the NAT forgot (expired, reclaimed, their container gone).
    /// A translated connection still open is reset at both ends: the daemon stops carrying
    /// it (deleted, its container gone), and no host socket would end it as the relay's do.
    pub fn forget(&self, flows: impl IntoIterator<Item = FlowId>) {
        for flow in flows {
            if let Some((e, carried)) = self.take(flow) {
                if e.open() && e.translated.is_some() {
                    self.reset(&e, carried);
                }
            }
        }
    }

    /// Where the resets of translated connections go (see `forget`).
    pub fn reset_with(&self, resets: Resets) {
        let _ = self.resets.set(resets);
    }

    /// Resets both ends of translated connection `e`, each from where the other acknowledged
    /// last (what it expects next), if both ends have spoken.
    fn reset(&self, e: &Entry, (out, back): (Traffic, Traffic)) {
        let (Some(r), Some(t)) = (self.resets.get(), &e.translated) else {
            return;
        };
        if out.packets == 0 || back.packets == 0 {
            return;
        }
        let (container, remote, host) = (e.out.src, e.out.dst, e.out.to);
        let mut frame = [0u8; TCP_RST_FRAME_LEN];
        let macs = (t.macs[..6].try_into(), t.macs[6..].try_into());
        let (Ok(container_mac), Ok(gateway_mac)) = macs else {
            return;
        };
        // The remote end's leaves by the host's routes, as an IPv4 packet: no MACs.
        let rst = tcp_reset_frame(
            &mut frame,
            ([0; 6], [0; 6]),
            host,
            remote,
            back.acked,
            out.acked,
        );
        if let Ok(len) = rst {
            let _ = send_raw(&r.raw, &frame[VNET_HDR_LEN + 14..len], *remote.ip());
        }
        let macs = (container_mac, gateway_mac);
        let rst = tcp_reset_frame(&mut frame, macs, remote, container, out.acked, back.acked);
        if let Ok(len) = rst {
            r.fabric.to_containers(&frame[..len]);
        }
    }

    /// Removes flow `flow`'s entries; returns them and what they carried in all.
    fn take(&self, flow: FlowId) -> Option<(Entry, (Traffic, Traffic))> {
        let mut st = self.lock();
        let e = st.flows.remove(&flow)?;
        let key = (e.out.src, e.out.dst);
        if st.holder.get(&key) == Some(&flow) {
            st.holder.remove(&key);
        }
        let carried = self.maps.traffic(&e.out, &e.back);
        self.maps.remove(&e.out, &e.back);
        Some((e, carried))
    }

    /// The containers the kernel may carry connections for (address → port, veth). The
    /// connections of any other container (unplugged, isolated, captured) come back to the
    /// daemon.
    pub fn serve(&self, served: HashMap<Ipv4Addr, (PortId, u32)>) {
        let gone: Vec<FlowId> = {
            let mut st = self.lock();
            if st.served == served {
                return;
            }
            st.served = served;
            // A translated connection stays: the daemon has no way to carry it.
            (st.flows.iter())
                .filter(|(_, e)| e.translated.is_none())
                .filter(|(_, e)| st.served.get(e.out.src.ip()) != Some(&(e.out.port, e.out.veth)))
                .map(|(&flow, _)| flow)
                .collect()
        };
        self.forget(gone);
    }

    /// Reports what the kernel carried of each connection since the last report to the NAT;
    /// drops the entries of flows the NAT no longer has. The maps are read without the lock,
    /// which the workers need to hand connections over and take them back.
    pub fn report(&self, nat: &Nat, now: u64) {
        let entries: Vec<(FlowId, Rule, Rule)> = (self.lock().flows.iter())
            .map(|(&flow, e)| (flow, e.out, e.back))
            .collect();
        let mut gone = Vec::new();
        for (flow, out, back) in entries {
            let carried = self.maps.traffic(&out, &back);
            let mut st = self.lock();
            // Taken back meanwhile: `closing` counted it.
            let Some(e) = st.flows.get_mut(&flow) else {
                continue;
            };
            let (out, back) = delta(e, carried);
            e.reported = carried;
            if e.translated.is_none() {
                drop(st);
                if !nat.offloaded(flow, out, back, now) {
                    gone.push(flow);
                }
                continue;
            }
            let Some(t) = e.translated.as_mut() else {
                continue;
            };
            t.flags = (carried.0.flags, carried.1.flags);
            let state = nat.translated_seen(flow, t.flags, out, back, now);
            match state {
                None => gone.push(flow),
                Some(state) if state.is_closed() => {
                    // Over: the host's side goes now; the entries once nothing moved for a
                    // report (a last ACK, a FIN sent again).
                    t.reservation = None;
                    if t.over == Some(carried) {
                        gone.push(flow);
                    }
                    t.over = Some(carried);
                }
                Some(_) => t.over = None,
            }
        }
        self.forget(gone);
    }
}

impl Offloads {
    /// Its connections for a hand-over, with duplicates of the reservations' descriptors (in
    /// `fds`, kept open by the caller until they are sent: a connection that ends meanwhile
    /// closes its own).
    pub fn snapshot(&self, fds: &mut FdOut) -> (KernelSnap, Vec<OwnedFd>) {
        let st = self.lock();
        let mut snap = KernelSnap::default();
        let mut held = Vec::new();
        for (&flow, e) in &st.flows {
            let Some(t) = &e.translated else {
                snap.relayed.push(flow);
                continue;
            };
            let fd = (t.reservation.as_ref()).and_then(|(fd, _)| fd.try_clone().ok());
            let index = fd.map(|fd| {
                let i = fds.add(&fd);
                held.push(fd);
                i
            });
            snap.translated.push((flow, index));
        }
        (snap, held)
    }

    /// Carries on with the connections a previous daemon handed the kernel (`snap`), from the
    /// pinned maps: those are followed from now on (the translated ones' uplinks get this
    /// daemon's program); any other entry in the maps goes.
    pub fn adopt(
        &self,
        snap: &KernelSnap,
        fds: &mut FdIn,
        budget: &Arc<FdBudget>,
        uplinks: &Uplinks,
    ) {
        let relayed: std::collections::HashSet<FlowId> = snap.relayed.iter().copied().collect();
        let translated: HashMap<FlowId, Option<usize>> = snap.translated.iter().copied().collect();
        let mut st = self.lock();
        for found in self.maps.entries() {
            let (flow, out) = (found.flow, found.out);
            let entry = match found.kind {
                EntryKind::Relayed(back) if relayed.contains(&flow) => Entry {
                    out,
                    back,
                    reported: Default::default(),
                    translated: None,
                },
                EntryKind::Translated(t) if translated.contains_key(&flow) => {
                    if let Err(e) = uplinks.attach(t.uplink) {
                        tracing::warn!(uplink = t.uplink, "no program on the uplink ({e})");
                    }
                    let reservation = translated[&flow]
                        .and_then(|i| fds.take(i).ok())
                        .map(|fd| (fd, budget.lease_held(1, Some(*t.container.ip()))));
                    let (out, back) = t.rules();
                    Entry {
                        out,
                        back,
                        reported: Default::default(),
                        translated: Some(Translated {
                            reservation,
                            over: None,
                            flags: (0, 0),
                            macs: t.macs,
                        }),
                    }
                }
                EntryKind::Relayed(back) => {
                    self.maps.remove(&out, &back);
                    continue;
                }
                EntryKind::Translated(t) => {
                    let (out, back) = t.rules();
                    self.maps.remove(&out, &back);
                    continue;
                }
            };
            // What the kernel carried before counts from here on.
            let reported = self.maps.traffic(&entry.out, &entry.back);
            st.holder.insert((out.src, out.dst), flow);
            st.flows.insert(flow, Entry { reported, ..entry });
        }
    }

    /// Empties the maps of what a daemon that died left there: no one follows those
    /// connections any more.
    pub fn clear(&self) {
        self.maps.clear();
    }

    /// The events' ring of the maps (see `bpf::relay::Event`), for its one reader.
    pub fn take_events(&self) -> Option<RingBuf> {
        self.maps.take_events()
    }

    /// A translated connection's segment opened it (SYN), was the answer (SYN|ACK), or carried a
    /// new FIN or RST: the NAT's flow moves now (answered, it is no longer half-open; finished,
    /// it gives its place in the table back), and a connection that is over gives back the
    /// host's side.
    ///
    /// Returns the (container, remote, host) ends of a finished connection whose ports the
    /// container opened again, which holds no reservation any more: the caller reserves them
    /// again (`reserved`).
    pub fn event(&self, ev: &Event, nat: &Nat, now: u64) -> Option<[SocketAddrV4; 3]> {
        let mut st = self.lock();
        let e = st.flows.get_mut(&ev.flow)?;
        let ends = [e.out.src, e.out.dst, e.out.to];
        let t = e.translated.as_mut()?;
        let reopened = match ev.out {
            // The container's SYN: a new connection on the same ports, the note starts again.
            true if ev.flags & 0x12 == 0x02 => {
                t.flags = (ev.flags, 0);
                t.over = None;
                true
            }
            true => {
                t.flags.0 = ev.flags;
                false
            }
            false => {
                t.flags.1 = ev.flags;
                false
            }
        };
        let state = nat.translated_seen(ev.flow, t.flags, (0, 0), (0, 0), now);
        if state.is_none_or(|s| s.is_closed()) {
            t.reservation = None;
        }
        (reopened && state.is_some() && t.reservation.is_none()).then_some(ends)
    }

    /// Flow `flow`'s host side, reserved again (see `event`).
    pub fn reserved(&self, flow: FlowId, reservation: (OwnedFd, Lease)) {
        let mut st = self.lock();
        let t = (st.flows.get_mut(&flow)).and_then(|e| e.translated.as_mut());
        if let Some(t) = t.filter(|t| t.reservation.is_none()) {
            t.reservation = Some(reservation);
        }
    }
}

/// What entry `e` carried since its last report, each way, as (packets, bytes).
fn delta(e: &Entry, (out, back): (Traffic, Traffic)) -> ((u64, u64), (u64, u64)) {
    let d = |now: Traffic, then: Traffic| {
        (
            now.packets.saturating_sub(then.packets),
            now.bytes.saturating_sub(then.bytes),
        )
    };
    (d(out, e.reported.0), d(back, e.reported.1))
}
