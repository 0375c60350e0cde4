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
//!
//! And the UDP flows and echoes the kernel carries after their first datagram (`carry`),
//! reported like relayed connections.

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
use crate::bpf::relay::{EntryKind, Event, Proto, RelayMaps, Rule, Traffic, Translation};
use crate::bpf::ringbuf::RingBuf;
use crate::datapath::Fabric;
use crate::kernel::fdpass::{FdIn, FdOut};

use super::budget::{FdBudget, Lease};
use super::sockets::send_raw;

/// The TCP flag of a connection's first segment.
const TCP_SYN: u8 = 0x02;
/// Most connections the kernel may open for one container before the daemon follows them
/// (`Offloads::grant`): some milliseconds of a fast client's connections. As many of the last
/// places of a container's room are the daemon's alone (`natd::translate::grant`).
pub const MAX_CREDITS: usize = 256;

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
    /// The gateway's MAC, once the veth's filter may open connections itself (`open_in_kernel`).
    opens: OnceLock<[u8; 6]>,
    /// A hand-over is under way (`hold`): the kernel opens nothing, the events wait.
    held: std::sync::atomic::AtomicBool,
    /// Held by the events' reader while it reads a batch (see `hold`).
    batch: Mutex<()>,
    /// Connections handed to the kernel so far, and of those, the ones it opened itself; UDP
    /// flows and echoes handed to it so far.
    total: AtomicU64,
    opened: AtomicU64,
    datagrams: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The containers whose connections the kernel may carry: address → (port, veth).
    served: HashMap<Ipv4Addr, (PortId, u32)>,
    flows: HashMap<FlowId, Entry>,
    /// Which flow holds the entries of a (container, remote) pair: a new connection on the same
    /// ports replaces an old one's entries, which must then not go with the old one.
    holder: HashMap<(Proto, SocketAddrV4, SocketAddrV4), FlowId>,
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
            opens: OnceLock::new(),
            held: Default::default(),
            batch: Mutex::new(()),
            total: AtomicU64::new(0),
            opened: AtomicU64::new(0),
            datagrams: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// TCP connections the kernel carries now.
    pub fn len(&self) -> usize {
        (self.lock().flows.values())
            .filter(|e| e.open() && e.out.proto == Proto::Tcp)
            .count()
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

    /// Of those, the connections the kernel opened itself (`opened`).
    pub fn opened_total(&self) -> u64 {
        self.opened.load(Relaxed)
    }

    /// UDP flows and echoes handed to the kernel so far (`carry`).
    pub fn datagrams_total(&self) -> u64 {
        self.datagrams.load(Relaxed)
    }

    /// From now on the veth's filter opens served containers' connections in the kernel, to the
    /// destinations of `route` (see `RelayMaps::serve`); the daemon follows them (`opened`).
    pub fn open_in_kernel(&self, gateway_mac: [u8; 6]) {
        if self.opens.set(gateway_mac).is_ok() {
            self.maps.serve(&self.lock().served, gateway_mac);
        }
    }

    /// Holds the kernel's connections still while a hand-over describes them (`on`), or lets
    /// them go on (a hand-over that failed): while held, the veth's filter opens nothing (the
    /// SYNs wait in the paused packet sockets, for whichever daemon serves next) and the events
    /// wait in their ring. Returns once the reader's batch under way is done.
    pub fn hold(&self, on: bool) {
        self.held.store(on, Relaxed);
        if let Some(&gateway_mac) = self.opens.get() {
            let none = HashMap::new();
            let st = self.lock();
            self.maps
                .serve(if on { &none } else { &st.served }, gateway_mac);
        }
        drop(self.batch.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// For the events' reader: a batch may be read (None while held); the guard keeps `hold`
    /// waiting until it is done.
    pub fn batch(&self) -> Option<MutexGuard<'_, ()>> {
        let guard = self.batch.lock().unwrap_or_else(|e| e.into_inner());
        (!self.held.load(Relaxed)).then_some(guard)
    }

    /// The host's route to `dst` leaves by `uplink` from `host` (a connection the daemon
    /// translated found it): the kernel may open the next ones itself.
    pub fn route(&self, dst: Ipv4Addr, uplink: u32, host: Ipv4Addr) {
        if self.opens.get().is_some() {
            self.maps.route(dst, uplink, host);
        }
    }

    /// The connection from `container` to `remote` the kernel carries, as its entries hold it.
    pub fn translation(
        &self,
        container: SocketAddrV4,
        remote: SocketAddrV4,
    ) -> Option<Translation> {
        self.maps.translation(container, remote)
    }

    /// The kernel opened connection `flow` (`t`) itself, having sent its SYN (counted as
    /// `syn`): followed from now on as one the daemon handed over, holding `reservation`.
    pub fn opened(
        &self,
        flow: FlowId,
        t: &Translation,
        reservation: (OwnedFd, Lease),
        syn: Traffic,
    ) {
        let mut st = self.lock();
        let (out, back) = t.rules();
        // Another flow's hold on the pair is stale: the kernel had no entries for it.
        if let Some(old) = st.holder.insert((t.proto, t.container, t.remote), flow) {
            st.flows.remove(&old);
        }
        let entry = Entry {
            out,
            back,
            reported: (syn, Traffic::default()),
            translated: Some(Translated {
                reservation: Some(reservation),
                over: None,
                flags: (TCP_SYN, 0),
                macs: t.macs,
            }),
        };
        st.flows.insert(flow, entry);
        self.total.fetch_add(1, Relaxed);
        self.opened.fetch_add(1, Relaxed);
    }

    /// A connection the kernel opened that the daemon refuses (the NAT's limits, no
    /// descriptor, the host's four-tuple taken): its entries go, and `reply` (the NAT's
    /// refusal, or a reset; none if empty) goes to the container, or, if the remote end has
    /// answered already, both ends are reset (as `forget` resets them).
    pub fn refuse(&self, t: &Translation, reply: &[u8]) {
        let (out, back) = t.rules();
        let carried = self.maps.traffic(&out, &back);
        self.maps.remove(&out, &back);
        if carried.1.packets > 0 {
            self.reset(&out, &t.macs, carried);
            return;
        }
        match self.resets.get() {
            Some(r) if !reply.is_empty() => r.fabric.to_containers(reply),
            _ => {}
        }
    }

    /// Container `ip` may have `room` more connections opened by the kernel before the daemon
    /// follows them (at most `MAX_CREDITS`; see `RelayMaps::grant`).
    pub fn grant(&self, ip: Ipv4Addr, room: usize) {
        let Some(&gateway_mac) = self.opens.get() else {
            return;
        };
        let st = self.lock();
        match st.served.get(&ip) {
            Some(&served) if !self.held.load(Relaxed) => {
                let credits = room.min(MAX_CREDITS) as u32;
                self.maps.grant(ip, served, gateway_mac, credits);
            }
            _ => {}
        }
    }

    /// The NAT offers an established relayed connection: the kernel carries it if its
    /// container is served. If the maps are full, the daemon keeps carrying it.
    pub fn offer(&self, o: &Offload) {
        let mut st = self.lock();
        let Some(&(port, veth)) = st.served.get(o.container.ip()) else {
            return;
        };
        let out = Rule {
            proto: Proto::Tcp,
            src: o.container,
            dst: o.remote,
            to: o.relay,
            veth,
            port,
        };
        let back = Rule {
            proto: Proto::Tcp,
            src: o.relay,
            dst: o.container,
            to: o.remote,
            veth,
            port,
        };
        // A connection on the same ports that the NAT forgot without a word: its entries go
        // first (its way back may have had another relay port).
        if let Some(old) = st.holder.remove(&(Proto::Tcp, o.container, o.remote)) {
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
        st.holder
            .insert((Proto::Tcp, o.container, o.remote), o.flow);
        st.flows.insert(o.flow, entry);
        self.total.fetch_add(1, Relaxed);
    }

    /// Hands translated connection `flow` to the kernel before its first segment goes; it
    /// holds `reservation` until it is over. False if the maps are full.
    pub fn translate(&self, flow: FlowId, t: &Translation, reservation: (OwnedFd, Lease)) -> bool {
        let mut st = self.lock();
        let (out, back) = t.rules();
        if let Some(old) = st.holder.remove(&(t.proto, t.container, t.remote)) {
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
        st.holder.insert((t.proto, t.container, t.remote), flow);
        st.flows.insert(flow, entry);
        self.total.fetch_add(1, Relaxed);
        true
    }

    /// Hands UDP flow or echo `flow` (`t`) to the kernel: its next datagrams both ways no longer
    /// cross the daemon, and reports count them on the flow, which keeps it alive (as a relayed
    /// connection's segments). False if the kernel carries it already or the maps are full.
    pub fn carry(&self, flow: FlowId, t: &Translation) -> bool {
        let mut st = self.lock();
        if st.flows.contains_key(&flow) {
            return false;
        }
        let key = (t.proto, t.container, t.remote);
        if let Some(old) = st.holder.remove(&key) {
            if let Some(e) = st.flows.remove(&old) {
                self.maps.remove(&e.out, &e.back);
            }
        }
        if self.maps.translate(t, flow).is_err() {
            return false;
        }
        let (out, back) = t.rules();
        let entry = Entry {
            out,
            back,
            reported: Default::default(),
            translated: None,
        };
        st.holder.insert(key, flow);
        st.flows.insert(flow, entry);
        self.datagrams.fetch_add(1, Relaxed);
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
                if let (true, Some(t)) = (e.open(), &e.translated) {
                    self.reset(&e.out, &t.macs, carried);
                }
            }
        }
    }

    /// Where the resets of translated connections go (see `forget`).
    pub fn reset_with(&self, resets: Resets) {
        let _ = self.resets.set(resets);
    }

    /// Resets both ends of the translated connection whose way out is `rule` (MACs `macs`),
    /// each from where the other acknowledged last (what it expects next), if both ends have
    /// spoken.
    fn reset(&self, rule: &Rule, macs: &[u8; 12], (out, back): (Traffic, Traffic)) {
        let Some(r) = self.resets.get() else {
            return;
        };
        if out.packets == 0 || back.packets == 0 {
            return;
        }
        let (container, remote, host) = (rule.src, rule.dst, rule.to);
        let mut frame = [0u8; TCP_RST_FRAME_LEN];
        let macs = (macs[..6].try_into(), macs[6..].try_into());
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
        self.take_locked(&mut self.lock(), flow)
    }

    fn take_locked(&self, st: &mut State, flow: FlowId) -> Option<(Entry, (Traffic, Traffic))> {
        let e = st.flows.remove(&flow)?;
        let key = (e.out.proto, e.out.src, e.out.dst);
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
            if let Some(&gateway_mac) = self.opens.get() {
                self.maps.serve(&st.served, gateway_mac);
            }
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
    /// drops the entries of flows the NAT no longer has. The lock is taken per connection (the
    /// workers need it to hand connections over and take them back), and held while its entries
    /// are read: an event told meanwhile would otherwise be overwritten by older flags.
    pub fn report(&self, nat: &Nat, now: u64) {
        let entries: Vec<(FlowId, Rule, Rule)> = (self.lock().flows.iter())
            .map(|(&flow, e)| (flow, e.out, e.back))
            .collect();
        let mut gone = Vec::new();
        for (flow, out, back) in entries {
            let mut st = self.lock();
            let carried = self.maps.traffic(&out, &back);
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
                    // report (a last ACK, a FIN sent again), at once, under the lock that read
                    // them: a new SYN on the same ports (which moves them) has the shortest
                    // window to be cut off.
                    t.reservation = None;
                    if t.over == Some(carried) {
                        self.take_locked(&mut st, flow);
                        continue;
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
        // A UDP flow or an echo is the next daemon's to hand to its own maps again.
        for (&flow, e) in st.flows.iter().filter(|(_, e)| e.out.proto == Proto::Tcp) {
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
    ///
    /// Returns the connections the kernel opened that the previous daemon had not followed yet
    /// (its events were left in its ring): their entries stay, for the translator to take them
    /// up as it takes up any the kernel opens (`natd::Translator::adopt_opened`).
    pub fn adopt(
        &self,
        snap: &KernelSnap,
        nat: &Nat,
        fds: &mut FdIn,
        budget: &Arc<FdBudget>,
        uplinks: &Uplinks,
    ) -> Vec<Translation> {
        let mut orphans = Vec::new();
        let relayed: std::collections::HashSet<FlowId> = snap.relayed.iter().copied().collect();
        let translated: HashMap<FlowId, Option<usize>> = snap.translated.iter().copied().collect();
        let mut st = self.lock();
        for found in self.maps.entries() {
            // A connection the kernel opened names no flow in its entries: the NAT's has it,
            // unless the previous daemon never heard of it (the NAT may then have another,
            // finished, on the same ports).
            let flow = match found.kind {
                EntryKind::Translated(t) => match nat.translated_flow(t.container, t.remote) {
                    Some(flow) if translated.contains_key(&flow) => flow,
                    _ if found.flow == 0 => {
                        if let Err(e) = uplinks.attach(t.uplink) {
                            tracing::warn!(uplink = t.uplink, "no program on the uplink ({e})");
                        }
                        orphans.push(t);
                        continue;
                    }
                    _ => found.flow,
                },
                EntryKind::Relayed(_) => found.flow,
            };
            let out = found.out;
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
            st.holder.insert((out.proto, out.src, out.dst), flow);
            st.flows.insert(flow, Entry { reported, ..entry });
        }
        orphans
    }

    /// Empties the maps of what a daemon that died left there: no one follows those
    /// connections any more.
    pub fn clear(&self) {
        self.maps.clear();
    }

    /// Whether the programs wake the events' reader (see `RelayMaps::set_wake`).
    pub fn wake_events(&self, on: bool) {
        self.maps.set_wake(on);
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
    pub fn event(&self, ev: &Event, nat: &Nat, now: u64) -> Option<(FlowId, [SocketAddrV4; 3])> {
        let mut st = self.lock();
        let flow = *st.holder.get(&(Proto::Tcp, ev.container, ev.remote))?;
        let e = st.flows.get_mut(&flow)?;
        let ends = [e.out.src, e.out.dst, e.out.to];
        let t = e.translated.as_mut()?;
        let reopened = match ev.out() {
            // The container's SYN: a new connection on the same ports, the note starts again.
            true if ev.flags & 0x12 == 0x02 => {
                t.flags = (ev.flags, 0);
                t.over = None;
                true
            }
            // Flags only add up within a connection: an event that comes after a report that
            // read more must not take them back.
            true => {
                t.flags.0 |= ev.flags;
                false
            }
            false => {
                t.flags.1 |= ev.flags;
                false
            }
        };
        let state = nat.translated_seen(flow, t.flags, (0, 0), (0, 0), now);
        if state.is_none_or(|s| s.is_closed()) {
            t.reservation = None;
        }
        (reopened && state.is_some() && t.reservation.is_none()).then_some((flow, ends))
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
