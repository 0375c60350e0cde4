//! The operator's verbs on the daemon's tables, as conntrack-tools and `ovs-appctl` have them:
//! deleting NAT flows (`conntrack -D`, `-F`) and flushing learned MACs (`fdb --flush`).

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use vswitch_nat::{Expired, FlowView, Proto};

use crate::control::{FdbView, FlowFilter, FlowProto, FlowRow};
use crate::datapath::{now_ms, TAP_PORT};

use super::error::DaemonError;
use super::manager::Manager;
use super::views::row;

/// How long a deletion waits for the resets of the relayed connections it ends to reach their
/// containers (through the flows, which go only then).
const RESET_WAIT: Duration = Duration::from_secs(1);

/// Whether `filter` selects flow `f`.
fn selects(filter: &FlowFilter, f: &FlowView) -> bool {
    let proto = match f.proto {
        Proto::Tcp => FlowProto::Tcp,
        Proto::Udp => FlowProto::Udp,
        Proto::Icmp => FlowProto::Icmp,
    };
    filter.proto.is_none_or(|p| p == proto)
        && filter.inside.is_none_or(|ip| ip == *f.inside.ip())
        && filter.inside_port.is_none_or(|p| p == f.inside.port())
        && filter.outside.is_none_or(|ip| ip == *f.outside.ip())
        && filter.outside_port.is_none_or(|p| p == f.outside.port())
}

impl Manager {
    /// Deletes the flows `filter` selects, as if they had expired: the NAT service closes
    /// their sockets, and a relayed TCP connection is reset on both sides (the container and
    /// the far end see the connection end, not hang). Returns the flows deleted.
    pub fn conntrack_delete(&mut self, filter: &FlowFilter) -> Vec<FlowRow> {
        let chosen: Vec<FlowView> = (self.nat.entries(now_ms()).into_iter())
            .filter(|f| selects(filter, f))
            .collect();
        // The resets go to the containers through the flows: reset first, then wait until the
        // NAT has seen each one pass (the flow is CLOSE), then delete.
        let relayed: Vec<(SocketAddrV4, u16)> = (chosen.iter())
            .filter_map(|f| Some((f.inside, f.gateway_port?)))
            .collect();
        if !relayed.is_empty() && self.datapath.relays().reset_flows(&relayed) > 0 {
            let deadline = Instant::now() + RESET_WAIT;
            let passed = |f: &FlowView| {
                f.gateway_port.is_none() || self.nat.state_of(f.flow).is_none_or(|s| s == "CLOSE")
            };
            while !chosen.iter().all(passed) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        let mut gone = Vec::new();
        let mut deleted = Vec::new();
        for f in &chosen {
            if self.nat.remove_flow(f.flow) {
                gone.push(Expired {
                    flow: f.flow,
                    proto: f.proto,
                });
                deleted.push(row(f));
            }
        }
        self.forget_flows(gone);
        tracing::info!(
            filter = %filter,
            flows = deleted.len(),
            relayed = relayed.len(),
            "deleted NAT flows"
        );
        deleted
    }

    /// Forgets the MACs learned on port `name` (a container's host interface, or the TAP), or
    /// every learned MAC. Returns the entries forgotten.
    pub fn fdb_flush(&mut self, name: Option<&str>) -> Result<Vec<FdbView>, DaemonError> {
        let port = match name {
            None => None,
            Some(name) if name == self.tap_name => Some(TAP_PORT),
            Some(name) => Some(
                (self.containers.iter())
                    .find(|c| c.host_ifname == name)
                    .map(|c| c.port)
                    .ok_or_else(|| DaemonError::NoSuchPort(name.to_string()))?,
            ),
        };
        let before: Vec<FdbView> = (self.fdb().into_iter())
            .filter(|e| port.is_none_or(|p| p.0 == e.port))
            .collect();
        let flushed = self.datapath.switch().flush_fdb(port);
        self.tally.fdb_flushed += flushed as u64;
        // The fast path forwards by what the table held: take the forgotten MACs out of it now.
        self.sync_fast_path();
        tracing::info!(
            port = %name.unwrap_or("all"),
            entries = flushed,
            "flushed the forwarding table"
        );
        Ok(before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn flow(proto: Proto, inside: &str, outside: &str) -> FlowView {
        FlowView {
            flow: 1,
            proto,
            inside: inside.parse().unwrap(),
            outside: outside.parse().unwrap(),
            published: false,
            gateway_port: None,
            state: "ESTABLISHED",
            timeout_ms: 1000,
            packets_out: 0,
            packets_in: 0,
            bytes_out: 0,
            bytes_in: 0,
        }
    }

    #[test]
    fn a_filter_selects_by_every_field_given() {
        let f = flow(Proto::Tcp, "10.1.1.2:40000", "198.51.100.2:80");
        let ip = |s: &str| Some(s.parse::<Ipv4Addr>().unwrap());
        let yes = [
            FlowFilter::default(),
            FlowFilter {
                proto: Some(FlowProto::Tcp),
                ..FlowFilter::default()
            },
            FlowFilter {
                inside: ip("10.1.1.2"),
                outside_port: Some(80),
                ..FlowFilter::default()
            },
            FlowFilter {
                proto: Some(FlowProto::Tcp),
                inside: ip("10.1.1.2"),
                inside_port: Some(40000),
                outside: ip("198.51.100.2"),
                outside_port: Some(80),
            },
        ];
        for filter in yes {
            assert!(selects(&filter, &f), "{filter:?}");
        }
        let no = [
            FlowFilter {
                proto: Some(FlowProto::Udp),
                ..FlowFilter::default()
            },
            FlowFilter {
                inside: ip("10.1.1.3"),
                ..FlowFilter::default()
            },
            FlowFilter {
                inside: ip("10.1.1.2"),
                outside_port: Some(443),
                ..FlowFilter::default()
            },
            FlowFilter {
                outside: ip("10.1.1.2"),
                ..FlowFilter::default()
            },
        ];
        for filter in no {
            assert!(!selects(&filter, &f), "{filter:?}");
        }
        let ping = flow(Proto::Icmp, "10.1.1.2:7", "198.51.100.2:1");
        let icmp = FlowFilter {
            proto: Some(FlowProto::Icmp),
            ..FlowFilter::default()
        };
        assert!(selects(&icmp, &ping) && !selects(&icmp, &f));
    }
}
