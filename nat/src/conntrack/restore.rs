//! The table as plain data and back (see `crate::snapshot`): a child of `conntrack`, so that it
//! reads the table's private parts and nothing else has to.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use super::{
    fingerprint, make_id, Cold, Counters, Expired, Extra, Flow, Kind, Padded, Proto, Quota, Shard,
    Shares, Side, Slot, Table, Timeouts, QUOTE_LEN, SHARDS,
};
use crate::snapshot::{
    CountersSnapshot, FlowKind, FlowSnapshot, RestoreError, ShardSnapshot, SlotSnapshot,
    TableSnapshot, TcpSnapshot,
};
use crate::tcp_state::{Dir, TcpTracker};

impl Table {
    /// The table as plain data. Shards are read one at a time: for a consistent snapshot, no
    /// frame may be translated meanwhile (the edge pauses its workers first).
    pub fn snapshot(&self) -> TableSnapshot {
        let mut shards = Vec::with_capacity(SHARDS);
        let mut key_seed = 0;
        for i in 0..SHARDS {
            let sh = self.lock(i);
            key_seed = sh.seed;
            shards.push(shard_snapshot(&sh));
        }
        TableSnapshot {
            key_seed,
            shard_seed: self.shard_seed,
            shards,
            next_ident: self.side().next_ident,
            counters: counters_snapshot(&self.counters),
        }
    }

    /// The table `snap` describes, bounded by `max_flows` and `shares` (this process's: a
    /// table over its bound keeps its flows and refuses new ones until it is under again).
    /// Every flow must be where its ids say, with keys no other flow has and a relay port of
    /// `relay_ports`.
    pub fn restore(
        max_flows: usize,
        shares: Shares,
        timeouts: Timeouts,
        snap: &TableSnapshot,
        relay_ports: &[u16],
    ) -> Result<Table, RestoreError> {
        if snap.shards.len() != SHARDS {
            return Err(RestoreError::Shards {
                got: snap.shards.len(),
                want: SHARDS,
            });
        }
        let mut table = Table::with_shares(max_flows, shares, timeouts);
        table.shard_seed = snap.shard_seed;
        let mut side = Side {
            next_ident: snap.next_ident,
            ..Side::default()
        };
        let mut quotas: HashMap<u32, Quota> = HashMap::new();
        let mut live = 0;
        let mut finished = 0;
        let mut shards = Vec::with_capacity(SHARDS);
        for (index, s) in snap.shards.iter().enumerate() {
            let shard = restore_shard(&table, index, snap.key_seed, s, relay_ports)?;
            for (slot, Slot(flow)) in shard.slots.iter().enumerate() {
                let Some(flow) = flow else { continue };
                let id = shard.id_of(slot as u32);
                let taken = match flow.kind {
                    Kind::Echo { nat_ident } => side.idents.insert(nat_ident, id).is_some(),
                    Kind::TcpPublished { eph } => side.ephs.insert(eph, id).is_some(),
                    _ => false,
                };
                if taken {
                    return Err(RestoreError::DuplicateSide(id));
                }
                if shard.is_finished(slot as u32) {
                    finished += 1;
                    continue;
                }
                if flow.kind.egress() {
                    let q = quotas.entry(flow.cip).or_default();
                    q.live += 1;
                    q.half_open += usize::from(flow.kind.connecting());
                }
                live += 1;
            }
            shards.push(Padded(Mutex::new(shard)));
        }
        table.shards = shards.into_boxed_slice();
        table.side = Mutex::new(side);
        table.quotas = Mutex::new(quotas);
        table.live = AtomicUsize::new(live);
        table.finished = AtomicUsize::new(finished);
        table.counters = restore_counters(&snap.counters);
        Ok(table)
    }
}

fn shard_snapshot(sh: &Shard) -> ShardSnapshot {
    let slots = (sh.slots.iter().zip(&sh.cold))
        .map(|(Slot(flow), cold)| SlotSnapshot {
            generation: cold.generation,
            flow: flow.as_ref().map(|f| flow_snapshot(f, &cold.extra)),
        })
        .collect();
    let mut retired: Vec<_> = (sh.retired.iter())
        .map(|(&ip, stats)| (Ipv4Addr::from(ip), *stats))
        .collect();
    retired.sort_unstable_by_key(|(ip, _)| *ip);
    ShardSnapshot {
        slots,
        free: sh.free.clone(),
        reaped: sh.reaped.iter().map(|e| (e.flow, e.proto)).collect(),
        retired,
        relay_cursor: sh.relay_cursor as u64,
    }
}

fn flow_snapshot(f: &Flow, extra: &Extra) -> FlowSnapshot {
    let (state, first_fin, last_fin) = f.tcp.parts();
    FlowSnapshot {
        kind: match f.kind {
            Kind::TcpEgress { relay, connecting } => FlowKind::TcpEgress { relay, connecting },
            Kind::TcpTranslated { relay, connecting } => {
                FlowKind::TcpTranslated { relay, connecting }
            }
            Kind::TcpPublished { eph } => FlowKind::TcpPublished { eph },
            Kind::UdpEgress => FlowKind::UdpEgress,
            Kind::UdpPublished { publish_id } => FlowKind::UdpPublished { publish_id },
            Kind::Echo { nat_ident } => FlowKind::Echo { nat_ident },
        },
        inside: (Ipv4Addr::from(f.cip), f.cport),
        remote: (Ipv4Addr::from(f.rip), f.rport),
        tcp: TcpSnapshot {
            state,
            first_fin_orig: first_fin == Dir::Orig,
            last_fin_orig: last_fin == Dir::Orig,
        },
        replied: f.replied,
        expires_at: f.expires_at,
        packets_out: f.packets_out,
        packets_in: f.packets_in,
        bytes_out: f.bytes_out,
        bytes_in: f.bytes_in,
        mac: extra.mac,
        quote: extra.quote.map(|q| q.to_vec()),
    }
}

fn dir(orig: bool) -> Dir {
    if orig {
        Dir::Orig
    } else {
        Dir::Reply
    }
}

/// One shard, its keys indexed again; checks that every flow is where its id and keys say.
fn restore_shard(
    table: &Table,
    index: usize,
    key_seed: u64,
    s: &ShardSnapshot,
    relay_ports: &[u16],
) -> Result<Shard, RestoreError> {
    if u32::try_from(s.slots.len()).is_err() {
        return Err(RestoreError::TooManySlots { shard: index });
    }
    let mut sh = Shard::new(index, key_seed);
    sh.relay_cursor = s.relay_cursor as usize;
    let mut free = HashSet::new();
    for &slot in &s.free {
        let empty = s.slots.get(slot as usize).is_some_and(|s| s.flow.is_none());
        if !empty || !free.insert(slot) {
            return Err(RestoreError::FreeSlot { shard: index, slot });
        }
    }
    sh.free = s.free.clone();
    let mut by_age = Vec::new();
    for (slot, snap) in s.slots.iter().enumerate() {
        let slot = slot as u32;
        let id = make_id(snap.generation, index, slot);
        let (flow, extra) = match &snap.flow {
            Some(f) => {
                let (flow, extra) = restore_flow(id, f)?;
                (Some(flow), extra)
            }
            None if free.contains(&slot) => (None, Extra::default()),
            None => return Err(RestoreError::LostSlot { shard: index, slot }),
        };
        if let Some(flow) = &flow {
            if table.shard_of(flow.cip, flow.cport) != index {
                return Err(RestoreError::WrongShard(id));
            }
            if let Kind::TcpEgress { relay, .. } | Kind::TcpTranslated { relay, .. } = flow.kind {
                if !relay_ports.contains(&relay) {
                    return Err(RestoreError::UnknownRelayPort(id, relay));
                }
            }
            let keys = std::iter::once(flow.inside_key()).chain(flow.outside_key());
            for key in keys {
                if sh.keys.insert(fingerprint(key_seed, key), id).is_some() {
                    return Err(RestoreError::DuplicateKey(id));
                }
            }
        }
        // A finished TCP flow is outside the bound and the shares (see `Table::settle`).
        let finished = flow
            .as_ref()
            .is_some_and(|f| f.kind.proto() == Proto::Tcp && f.tcp.state().is_closed());
        if finished {
            let expires_at = flow.as_ref().map_or(0, |f| f.expires_at);
            by_age.push((expires_at, slot, snap.generation));
        }
        sh.slots.push(Slot(flow));
        sh.cold.push(Cold {
            generation: snap.generation,
            extra,
            finished,
        });
    }
    by_age.sort_unstable();
    sh.finished_count = by_age.len();
    sh.finished = by_age.into_iter().map(|(_, s, g)| (s, g)).collect();
    sh.reaped = (s.reaped.iter())
        .map(|&(flow, proto)| Expired { flow, proto })
        .collect();
    sh.retired = (s.retired.iter())
        .map(|(ip, stats)| (u32::from(*ip), *stats))
        .collect();
    Ok(sh)
}

fn restore_flow(id: u64, f: &FlowSnapshot) -> Result<(Flow, Extra), RestoreError> {
    let kind = match f.kind {
        FlowKind::TcpEgress { relay, connecting } => Kind::TcpEgress { relay, connecting },
        FlowKind::TcpTranslated { relay, connecting } => Kind::TcpTranslated { relay, connecting },
        FlowKind::TcpPublished { eph } => Kind::TcpPublished { eph },
        FlowKind::UdpEgress => Kind::UdpEgress,
        FlowKind::UdpPublished { publish_id } => Kind::UdpPublished { publish_id },
        FlowKind::Echo { nat_ident } => Kind::Echo { nat_ident },
    };
    let mut flow = Flow::new(
        kind,
        f.inside.0.into(),
        f.inside.1,
        f.remote.0.into(),
        f.remote.1,
    );
    let t = f.tcp;
    flow.tcp = TcpTracker::from_parts(t.state, dir(t.first_fin_orig), dir(t.last_fin_orig));
    flow.replied = f.replied;
    flow.expires_at = f.expires_at;
    flow.packets_out = f.packets_out;
    flow.packets_in = f.packets_in;
    flow.bytes_out = f.bytes_out;
    flow.bytes_in = f.bytes_in;
    let quote = match &f.quote {
        None => None,
        Some(q) => Some(
            <[u8; QUOTE_LEN]>::try_from(q.as_slice())
                .map_err(|_| RestoreError::BadQuote(id, q.len()))?,
        ),
    };
    Ok((flow, Extra { mac: f.mac, quote }))
}

fn counters_snapshot(c: &Counters) -> CountersSnapshot {
    let get = |a: &AtomicU64| a.load(Relaxed);
    CountersSnapshot {
        created: get(&c.created),
        expired: get(&c.expired),
        removed: get(&c.removed),
        table_full: get(&c.table_full),
        malformed: get(&c.malformed),
        fragments: get(&c.fragments),
        no_flow: get(&c.no_flow),
        no_relay_port: get(&c.no_relay_port),
        no_echo_ident: get(&c.no_echo_ident),
        unsupported: get(&c.unsupported),
        bad_address: get(&c.bad_address),
        bad_checksum: get(&c.bad_checksum),
        bad_length: get(&c.bad_length),
        ttl_exceeded: get(&c.ttl_exceeded),
        tagged: get(&c.tagged),
        container_limit: get(&c.container_limit),
        half_open_limit: get(&c.half_open_limit),
    }
}

fn restore_counters(c: &CountersSnapshot) -> Counters {
    let new = AtomicU64::new;
    Counters {
        created: new(c.created),
        expired: new(c.expired),
        removed: new(c.removed),
        table_full: new(c.table_full),
        malformed: new(c.malformed),
        fragments: new(c.fragments),
        no_flow: new(c.no_flow),
        no_relay_port: new(c.no_relay_port),
        no_echo_ident: new(c.no_echo_ident),
        unsupported: new(c.unsupported),
        bad_address: new(c.bad_address),
        bad_checksum: new(c.bad_checksum),
        bad_length: new(c.bad_length),
        ttl_exceeded: new(c.ttl_exceeded),
        tagged: new(c.tagged),
        container_limit: new(c.container_limit),
        half_open_limit: new(c.half_open_limit),
    }
}
