//! Relayed TCP connections handed to the kernel (`bpf::relay`). The NAT offers a relayed
//! connection once it is established and past its first segments (`Verdict::Offload`), and says
//! when it leaves ESTABLISHED (`Verdict::Closing`) or the table forgets it; this
//! installs and removes the connection's two entries, only for containers whose port the kernel
//! fast path serves (not isolated, not captured), and reports to the NAT what the kernel
//! carried, which counts on the flow and keeps it alive.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, MutexGuard};

use vswitch_nat::{FlowId, Nat, Offload};
use vswitch_switch::PortId;

use crate::bpf::relay::{RelayMaps, Rule, Traffic};

pub struct Offloads {
    maps: Arc<RelayMaps>,
    state: Mutex<State>,
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
}

impl Offloads {
    pub fn new(maps: Arc<RelayMaps>) -> Offloads {
        Offloads {
            maps,
            state: Mutex::new(State::default()),
            total: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Connections the kernel carries now.
    pub fn len(&self) -> usize {
        self.lock().flows.len()
    }

    /// Whether the kernel carries flow `flow` now.
    pub fn carries(&self, flow: FlowId) -> bool {
        self.lock().flows.contains_key(&flow)
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
        if self.maps.install(&out, &back).is_err() {
            return;
        }
        let entry = Entry {
            out,
            back,
            reported: Default::default(),
        };
        st.holder.insert((o.container, o.remote), o.flow);
        st.flows.insert(o.flow, entry);
        self.total.fetch_add(1, Relaxed);
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
    pub fn forget(&self, flows: impl IntoIterator<Item = FlowId>) {
        for flow in flows {
            self.take(flow);
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
            (st.flows.iter())
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
            drop(st);
            if !nat.offloaded(flow, out, back, now) {
                gone.push(flow);
            }
        }
        self.forget(gone);
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
