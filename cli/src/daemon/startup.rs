//! Bringing the daemon up: the TAP with the gateway address, the DNS forwarder, the switch,
//! the eBPF programs, the datapath workers and the NAT service.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vswitch_nat::{Nat, NatConfig, Shares};
use vswitch_switch::{MacAddr, PortInfo, PortPolicy, Switch};

use crate::bpf::fanout::{Spread, SpreadProgram};
use crate::bpf::fastpath::{self, Mode};
use crate::bpf::pins::{self, Pins};
use crate::datapath::{Datapath, Fabric, TAP_PORT};
use crate::kernel::netlink::Netlink;
use crate::natd::budget::{open_now, FdBudget};
use crate::natd::{self, dns, resolv, NatHook, NatService};
use crate::ports::tap::Tap;
use crate::ports::{Counters, Port, PortIo};

use super::config::Config;
use super::ipam::Ipam;
use super::manager::Manager;
use super::plumbing::{initial_netns, marker, own_netns, Kernel};
use super::state::{self, State, StateError};
use super::systemd::Watchdog;

/// Relay listeners for containers' outgoing TCP (see `natd::bind_relays`).
const RELAY_PORTS: usize = 16;
/// Descriptors kept for the daemon beyond those it holds at start (see `natd::budget`).
const SLACK: usize = 64;

/// The flow table's default size: what the descriptors can carry (a relayed TCP connection
/// needs two sockets; pipes are budgeted as they come), at most the NAT's own default.
fn default_max_flows(fd_limit: usize) -> usize {
    (fd_limit.saturating_sub(256) / 2).clamp(64, vswitch_nat::DEFAULT_MAX_FLOWS)
}

/// Creates the TAP with the gateway address and starts the datapath, the NAT service and the
/// DNS forwarder.
pub fn start(cfg: &Config, ipam: Ipam, fd_limit: usize) -> Result<Manager> {
    let budget = FdBudget::new(fd_limit);
    let previous = previous_state(cfg)?;
    let marker = marker(&cfg.control);
    let mut nl = Netlink::open().context("opening netlink")?;
    let gateway_mac = MacAddr::from_ipv4(cfg.gateway);
    let (taps, tap_index) = open_tap(cfg, &mut nl, &marker, gateway_mac)?;

    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if !cfg.no_dns {
        let fallback = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
        let upstreams = resolv::upstreams(&cfg.dns, &host_resolv, fallback.as_deref());
        if upstreams.is_empty() {
            eprintln!("vswitch: no upstream DNS resolver known (give --dns): containers' queries will go unanswered");
        }
        dns::start(cfg.gateway, upstreams, budget.clone()).with_context(|| {
            format!("DNS forwarder on {}:53 (--no-dns disables it)", cfg.gateway)
        })?;
    }

    let switch = Arc::new(Switch::new(vswitch_switch::Config {
        fdb_capacity: cfg.fdb_size,
        fdb_age_ms: cfg.fdb_age_secs.saturating_mul(1000),
        max_macs_per_port: cfg.max_macs_per_port,
    }));
    // The host's port: unchecked (the host routes anything) and reached by isolated ports.
    switch.add_port_with_policy(
        TAP_PORT,
        PortInfo {
            mac: gateway_mac,
            ip: Some(cfg.gateway),
        },
        PortPolicy::uplink(),
    );
    let spread_program = (cfg.spread == Spread::Auto && cfg.workers > 1)
        .then(|| match SpreadProgram::load((cfg.workers / 2) as u32) {
            Ok(program) => Some(Arc::new(program)),
            Err(e) => {
                eprintln!("vswitch: no eBPF fanout program ({e}): small frames stay spread by CPU");
                None
            }
        })
        .flatten();
    // Pinned, the fast path keeps forwarding between containers while no daemon runs.
    let pins = (cfg.fast_path != Mode::Off)
        .then(|| match Pins::open(&pins::dir_for(&cfg.control)) {
            Ok(pins) => Some(pins),
            Err(e) => {
                eprintln!("vswitch: no pins for the fast path ({e}): it will stop with the daemon");
                None
            }
        })
        .flatten();
    let (fast_path, why) = fastpath::start(cfg.fast_path, cfg.fdb_size, pins);
    eprintln!("vswitch: kernel fast path: {why}");
    let fabric = Fabric::new(switch, spread_program.clone());
    let homes = cfg.spread != Spread::Hash;
    let mut datapath =
        Datapath::new(fabric.clone(), cfg.workers, cfg.poll, homes).context("preparing workers")?;
    let relays = natd::bind_relays(cfg.gateway, RELAY_PORTS).context("binding NAT relays")?;
    let max_flows = cfg.max_flows.unwrap_or_else(|| default_max_flows(fd_limit));
    let default_shares = Shares::for_table(max_flows);
    eprintln!("vswitch: NAT tracks up to {max_flows} flows (descriptor limit {fd_limit})");
    let nat = Arc::new(Nat::new(NatConfig {
        max_flows,
        shares: Shares {
            flows: cfg.max_flows_per_container.unwrap_or(default_shares.flows),
            half_open: cfg.max_half_open.unwrap_or(default_shares.half_open),
        },
        ..NatConfig::new(
            cfg.gateway,
            gateway_mac.0,
            cfg.subnet.network,
            cfg.subnet.prefix,
            relays.iter().map(|(_, port)| *port).collect(),
        )
    }));
    let poll = cfg.poll;
    let (service, nat_jobs) = NatService::new(
        nat.clone(),
        fabric.clone(),
        budget.clone(),
        datapath.relays(),
        cfg.gateway,
        relays,
    )
    .context("starting the NAT service")?;
    std::thread::Builder::new()
        .name("vswitch-nat".into())
        .spawn(move || service.run(poll))?;
    let hook = NatHook {
        nat: nat.clone(),
        gateway_mac: gateway_mac.0,
        service: nat_jobs.clone(),
        fabric,
    };
    datapath
        .run(Some(Arc::new(hook)))
        .context("starting workers")?;
    datapath.add_port(Arc::new(Port {
        id: TAP_PORT,
        name: cfg.tap.clone(),
        queues: taps
            .into_iter()
            .map(|t| Box::new(t) as Box<dyn PortIo>)
            .collect(),
        by_flow: true,
        counters: Counters::default(),
    }))?;
    let plumbing = Kernel {
        nl,
        marker: marker.clone(),
        spread: cfg.spread,
        spread_program,
    };
    // What the daemon holds open now is its own, plus a slack for control connections and
    // the threads that open a namespace or a file for a moment.
    budget.reserve(open_now() + SLACK);
    let mut manager = Manager {
        ipam,
        mtu: cfg.mtu,
        tap_name: cfg.tap.clone(),
        gateway_mac,
        own_netns: own_netns().context("identifying the daemon's own network namespace")?,
        initial_netns: initial_netns(),
        plumbing: Box::new(plumbing),
        datapath,
        containers: Vec::new(),
        nat,
        nat_jobs,
        host_resolv,
        last_expiry: 0,
        fast_path,
        budget,
        marker,
        state_path: state::path_for(&cfg.control),
        pins_dir: pins::dir_for(&cfg.control),
        tap_index,
        watchdog: Watchdog::from_env(),
        isolate: cfg.isolate,
    };
    if let Some(previous) = previous {
        manager.adopt(previous);
    }
    manager.clear_unexplained_links();
    if let Some(fast) = &manager.fast_path {
        let ports: Vec<u32> = manager.containers.iter().map(|c| c.host_index).collect();
        fast.prune_links(&ports);
    }
    manager.save_state();
    Ok(manager)
}

/// The state a previous daemon of this switch left; a daemon started for another network is
/// refused before it touches anything, and an unreadable state is put aside.
fn previous_state(cfg: &Config) -> Result<Option<State>> {
    let path = state::path_for(&cfg.control);
    let state = match state::load(&path) {
        Ok(state) => state,
        Err(StateError::Corrupt { why, .. }) => {
            let aside = state::set_aside(&path).context("putting the unreadable state aside")?;
            eprintln!(
                "vswitch: the state file {} is unreadable ({why}): kept as {}; starting \
                 without it",
                path.display(),
                aside.display()
            );
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let Some(state) = state else { return Ok(None) };
    let theirs = (
        state.subnet.as_str(),
        state.gateway,
        state.tap.as_str(),
        state.mtu,
    );
    let ours = (
        cfg.subnet.to_string(),
        cfg.gateway,
        cfg.tap.as_str(),
        cfg.mtu,
    );
    if (theirs.0, theirs.1, theirs.2, theirs.3) != (ours.0.as_str(), ours.1, ours.2, ours.3) {
        bail!(
            "the state file {} describes another network (subnet {}, gateway {}, TAP {}, \
             MTU {}) than this daemon's (subnet {}, gateway {}, TAP {}, MTU {}): start the \
             daemon with the same configuration to take it over, or remove it first with \
             `vswitch cleanup` (with the same --control)",
            path.display(),
            theirs.0,
            theirs.1,
            theirs.2,
            theirs.3,
            ours.0,
            ours.1,
            ours.2,
            ours.3
        );
    }
    Ok(Some(state))
}

/// Opens the TAP with the gateway's address: the one an earlier daemon of this switch left
/// (it carries our mark), or a new one; a device of that name that is not ours is an error.
fn open_tap(
    cfg: &Config,
    nl: &mut Netlink,
    marker: &str,
    gateway_mac: MacAddr,
) -> Result<(Vec<Tap>, u32)> {
    let what = || format!("TAP {}", cfg.tap);
    let ours = (nl.link(&cfg.tap)?).is_some_and(|l| l.alias.as_deref() == Some(marker));
    let taps = match ours {
        true => Tap::attach_queues(&cfg.tap, cfg.workers),
        false => Tap::create_queues(&cfg.tap, cfg.workers),
    }
    .with_context(what)?;
    taps[0].set_persist(true).with_context(what)?;
    let index = (nl.link_index(&cfg.tap)?).with_context(|| format!("{} vanished", what()))?;
    nl.set_alias(index, marker).with_context(what)?;
    nl.set_link(index, true, false, Some(cfg.mtu), Some(gateway_mac.0))
        .with_context(|| format!("configuring {}", what()))?;
    match nl.add_address(index, cfg.gateway, cfg.subnet.prefix) {
        Err(e) if ours && e.errno() == Some(libc::EEXIST) => {}
        result => result.with_context(|| {
            format!(
                "adding {}/{} to {}",
                cfg.gateway, cfg.subnet.prefix, cfg.tap
            )
        })?,
    }
    Ok((taps, index))
}
