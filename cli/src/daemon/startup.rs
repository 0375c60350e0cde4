//! Bringing the daemon up: the TAP with the gateway address, the DNS forwarder, the switch,
//! the eBPF programs, the datapath workers and the NAT service.

use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vswitch_nat::{Nat, NatConfig, Shares};
use vswitch_switch::{MacAddr, PortInfo, PortPolicy, Switch};

use crate::bpf::fanout::{Spread, SpreadProgram};
use crate::bpf::fastpath::{self, FastPath, Mode};
use crate::bpf::pins::{self, Pins};
use crate::datapath::wait::Busy;
use crate::datapath::{Datapath, Fabric, TAP_PORT};
use crate::kernel::netlink::{Netlink, TcHook};
use crate::natd::budget::{open_now, FdBudget};
use crate::natd::dns::DnsCounters;
use crate::natd::{
    self, dns, resolv, NatHook, NatMailbox, NatService, Offloads, TcpNat, Translator,
};
use crate::ports::tap::Tap;
use crate::ports::{Counters, Port, PortIo};

use super::config::Config;
use super::counters::{unix_now, Tally};
use super::handover::Handoff;
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
/// DNS forwarder. `control` is the control socket's listener, for a later hand-over.
pub fn start(
    cfg: &Config,
    ipam: Ipam,
    fd_limit: usize,
    control: RawFd,
) -> Result<(Manager, Handoff)> {
    let budget = FdBudget::new(fd_limit);
    let previous = previous_state(cfg)?;
    let mut nl = Netlink::open().context("opening netlink")?;
    let (taps, tap_index) = open_tap(cfg, &mut nl, &marker(&cfg.control))?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let (dns_counters, dns_fds) = start_dns(cfg, &host_resolv, &budget)?.unzip();
    let spread_program = spread_program(cfg);
    steer_tap(&taps[0], spread_program.as_deref());
    let mut fast_path = fast_path(cfg);
    let offloads = offloads(fast_path.as_mut(), tap_index, &mut nl);
    if let Some(offloads) = &offloads {
        // Connections of a daemon that died: no one follows them.
        offloads.clear();
    }
    let (fabric, mut datapath) = new_datapath(cfg, spread_program.clone())?;
    resets(&offloads, &fabric);
    let (nat, nat_jobs, nat_busy) = start_nat(cfg, fd_limit, &fabric, &budget, &datapath)?;
    let translator = translator(cfg, fast_path.as_ref(), &offloads, &budget, tap_index, &nat);
    let hook = nat_hook(cfg, &nat, &nat_jobs, fabric, offloads.clone(), translator);
    datapath.run(Some(hook)).context("starting workers")?;
    let taps = taps.into_iter().map(|t| Box::new(t) as Box<dyn PortIo>);
    datapath.add_port(Arc::new(tap_port(cfg, taps.collect())))?;
    // What the daemon holds open now is its own, plus a slack for control connections and
    // the threads that open a namespace or a file for a moment.
    budget.reserve(open_now() + SLACK + datapath.relays().spare_fds());
    let parts = Parts {
        nl,
        spread_program: spread_program.clone(),
        datapath,
        nat,
        nat_jobs,
        host_resolv,
        fast_path,
        offloads,
        budget,
        tap_index,
        last_expiry: 0,
        watchdog: Watchdog::from_env(),
        dns: dns_counters,
        nat_busy,
    };
    let mut manager = Manager::assemble(cfg, ipam, parts)?;
    manager.settle_in(previous);
    let handoff = Handoff::new(cfg, control, dns_fds, spread_program);
    Ok((manager, handoff))
}

/// The DNS forwarder on the gateway's port 53 (none with `--no-dns`): what it counts, and its
/// sockets, for a later hand-over.
fn start_dns(
    cfg: &Config,
    host_resolv: &str,
    budget: &Arc<FdBudget>,
) -> Result<Option<(Arc<DnsCounters>, [RawFd; 2])>> {
    if cfg.no_dns {
        return Ok(None);
    }
    let counters = Arc::new(DnsCounters::default());
    let upstreams = dns_upstreams(cfg, host_resolv);
    let fds = dns::start(cfg.gateway, upstreams, budget.clone(), counters.clone())
        .with_context(|| format!("DNS forwarder on {}:53 (--no-dns disables it)", cfg.gateway))?;
    Ok(Some((counters, fds)))
}

/// The datapath's workers, not started yet, and what they share: the network's switch and the
/// fan-out program.
pub(super) fn new_datapath(
    cfg: &Config,
    spread_program: Option<Arc<SpreadProgram>>,
) -> Result<(Fabric, Datapath)> {
    let fabric = Fabric::new(new_switch(cfg), spread_program);
    let homes = cfg.spread != Spread::Hash;
    let datapath =
        Datapath::new(fabric.clone(), cfg.workers, cfg.poll, homes).context("preparing workers")?;
    Ok((fabric, datapath))
}

/// The NAT with its relay listeners bound, and its service thread started: the NAT, the
/// service's mailbox and its busy time.
fn start_nat(
    cfg: &Config,
    fd_limit: usize,
    fabric: &Fabric,
    budget: &Arc<FdBudget>,
    datapath: &Datapath,
) -> Result<(Arc<Nat>, NatMailbox, Arc<Busy>)> {
    let relays = natd::bind_relays(cfg.gateway, RELAY_PORTS).context("binding NAT relays")?;
    let relay_ports = relays.iter().map(|(_, port)| *port).collect();
    let nat = Arc::new(Nat::new(nat_config(cfg, fd_limit, relay_ports)));
    let (service, nat_jobs) = NatService::new(
        nat.clone(),
        fabric.clone(),
        budget.clone(),
        datapath.relays(),
        cfg.gateway,
        relays,
    )
    .context("starting the NAT service")?;
    let nat_busy = service.busy();
    spawn_nat_service(service, cfg.poll)?;
    Ok((nat, nat_jobs, nat_busy))
}

/// Runs the NAT service on a thread of its own.
pub(super) fn spawn_nat_service(service: NatService, poll: Duration) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("vswitch-nat".into())
        .spawn(move || service.run(poll))?;
    Ok(())
}

/// The switch of the network, with the host's station (the gateway) on the TAP's port.
fn new_switch(cfg: &Config) -> Arc<Switch> {
    let switch = Arc::new(Switch::new(vswitch_switch::Config {
        fdb_capacity: cfg.fdb_size,
        fdb_age_ms: cfg.fdb_age_secs.saturating_mul(1000),
        max_macs_per_port: cfg.max_macs_per_port,
    }));
    let station = PortInfo {
        mac: MacAddr::from_ipv4(cfg.gateway),
        ip: Some(cfg.gateway),
    };
    // The host's port: unchecked (the host routes anything) and reached by isolated ports.
    switch.add_port_with_policy(TAP_PORT, station, PortPolicy::uplink());
    switch
}

/// The host's port: the TAP, whose queues send by flow (see `ports::Port::by_flow`).
pub(super) fn tap_port(cfg: &Config, queues: Vec<Box<dyn PortIo>>) -> Port {
    Port {
        id: TAP_PORT,
        name: cfg.tap.clone(),
        queues,
        by_flow: true,
        counters: Counters::default(),
        mirror: Default::default(),
        coalesce: None,
    }
}

/// What the workers call for frames that may be the NAT's.
pub(super) fn nat_hook(
    cfg: &Config,
    nat: &Arc<Nat>,
    nat_jobs: &NatMailbox,
    fabric: Fabric,
    offloads: Option<Arc<Offloads>>,
    translator: Option<Arc<Translator>>,
) -> Arc<NatHook> {
    Arc::new(NatHook::new(
        nat.clone(),
        MacAddr::from_ipv4(cfg.gateway).0,
        nat_jobs.clone(),
        fabric,
        cfg.workers,
        offloads,
        translator,
    ))
}

/// Where the resets of the translated connections the daemon ends go (see
/// `natd::Offloads::forget`).
pub(super) fn resets(offloads: &Option<Arc<Offloads>>, fabric: &Fabric) {
    let Some(offloads) = offloads else { return };
    match natd::raw_ipv4_socket() {
        Ok(raw) => offloads.reset_with(natd::Resets {
            raw,
            fabric: fabric.clone(),
        }),
        Err(e) => tracing::warn!("no raw socket: translated connections end without a reset ({e})"),
    }
}

/// What translates outgoing TCP connections in the kernel (`run --tcp-nat kernel`), where the
/// fast path can take them; else they are relayed (said why).
pub(super) fn translator(
    cfg: &Config,
    fast_path: Option<&FastPath>,
    offloads: &Option<Arc<Offloads>>,
    budget: &Arc<FdBudget>,
    tap: u32,
    nat: &Arc<Nat>,
) -> Option<Arc<Translator>> {
    if cfg.tcp_nat != TcpNat::Kernel {
        return None;
    }
    let (Some(fast_path), Some(offloads)) = (fast_path, offloads) else {
        tracing::warn!("--tcp-nat kernel needs the kernel fast path: TCP is relayed");
        return None;
    };
    let mac = MacAddr::from_ipv4(cfg.gateway).0;
    let uplinks = fast_path.uplinks();
    let tap_and_mtu = (tap, cfg.mtu);
    let translator = Translator::new(offloads.clone(), uplinks, budget.clone(), mac, tap_and_mtu)
        .and_then(|t| t.watch(nat.clone()).map(|()| t));
    match translator {
        Ok(t) => {
            tracing::info!("outgoing TCP is translated in the kernel where it can be");
            Some(Arc::new(t))
        }
        Err(e) => {
            tracing::warn!("outgoing TCP is relayed: no translation in the kernel ({e})");
            None
        }
    }
}

/// The kernel's share of relayed TCP: the fast path's program on TAP `tap`'s egress, and what
/// hands it connections. None without a fast path (then a filter a killed daemon left on the
/// TAP goes: its maps name connections that died with it), or if the TAP takes no program
/// (said why).
pub(super) fn offloads(
    fast_path: Option<&mut FastPath>,
    tap: u32,
    nl: &mut Netlink,
) -> Option<Arc<Offloads>> {
    let Some(fast_path) = fast_path else {
        fastpath::remove_left_filter(nl, tap, TcHook::Egress);
        return None;
    };
    match fast_path.relay(tap) {
        Ok(maps) => {
            tracing::info!("relayed TCP: established connections go through the kernel");
            Some(Arc::new(Offloads::new(maps)))
        }
        Err(e) => {
            tracing::warn!("relayed TCP stays in the daemon: the TAP takes no program ({e})");
            None
        }
    }
}

/// The eBPF fan-out program, where it serves (several workers, `--spread auto`) and loads.
fn spread_program(cfg: &Config) -> Option<Arc<SpreadProgram>> {
    if cfg.spread != Spread::Auto || cfg.workers < 2 {
        return None;
    }
    match SpreadProgram::load((cfg.workers / 2) as u32) {
        Ok(program) => Some(Arc::new(program)),
        Err(e) => {
            tracing::warn!("no eBPF fanout program ({e}): small frames stay spread by CPU");
            None
        }
    }
}

/// Spreads the frames the host sends over the TAP's queues as the fan-out program spreads a
/// container's over its port's (small ones by CPU, bulk ones by flow), or by the kernel's flow
/// hash without the program (taking back one an earlier daemon left). Best effort: either way
/// every frame gets through.
fn steer_tap(tap: &Tap, program: Option<&SpreadProgram>) {
    match (tap.set_steering(program.map(SpreadProgram::fd)), program) {
        (Err(e), Some(_)) => tracing::warn!("TAP queues stay chosen by flow hash ({e})"),
        (Err(e), None) => tracing::debug!("no steering program to take off the TAP ({e})"),
        (Ok(()), _) => {}
    }
}

/// The kernel fast path, pinned so that it keeps forwarding between containers while no daemon
/// runs; `None` when it is off or the kernel refuses it (the daemon says why).
pub(super) fn fast_path(cfg: &Config) -> Option<FastPath> {
    let pins = (cfg.fast_path != Mode::Off)
        .then(|| match Pins::open(&pins::dir_for(&cfg.control)) {
            Ok(pins) => Some(pins),
            Err(e) => {
                tracing::warn!("no pins for the fast path ({e}): it will stop with the daemon");
                None
            }
        })
        .flatten();
    let (fast_path, why) = fastpath::start(cfg.fast_path, cfg.fdb_size, pins);
    log_fast_path(fast_path.as_ref(), &why);
    fast_path
}

/// Says which hook the kernel fast path is on and why, or why there is none.
pub(super) fn log_fast_path(fast_path: Option<&FastPath>, why: &str) {
    let hook = fast_path.map_or("off", |_| why.split(' ').next().unwrap_or("?"));
    tracing::info!(hook = %hook, "kernel fast path: {why}");
}

/// What a manager is made of that depends on how the daemon came up (afresh, or taking over).
pub(super) struct Parts {
    pub nl: Netlink,
    pub spread_program: Option<Arc<SpreadProgram>>,
    pub datapath: Datapath,
    pub nat: Arc<Nat>,
    pub nat_jobs: NatMailbox,
    pub host_resolv: String,
    pub fast_path: Option<FastPath>,
    pub offloads: Option<Arc<Offloads>>,
    pub budget: Arc<FdBudget>,
    pub tap_index: u32,
    pub last_expiry: u64,
    pub watchdog: Option<Watchdog>,
    /// What the DNS forwarder counts (none with `--no-dns`), and the NAT service's busy time.
    pub dns: Option<Arc<DnsCounters>>,
    pub nat_busy: Arc<Busy>,
}

impl Manager {
    /// Takes over the ports a previous daemon left (if it left a state), removes the links it
    /// left that no port explains and the fast path's links of ports gone, and writes the state.
    fn settle_in(&mut self, previous: Option<State>) {
        if let Some(previous) = previous {
            self.adopt(previous);
        }
        self.clear_unexplained_links();
        if let Some(fast) = &self.fast_path {
            let ports: Vec<u32> = self.containers.iter().map(|c| c.host_index).collect();
            fast.prune_links(&ports);
        }
        self.save_state();
    }

    /// A manager of the network `cfg` describes, with no containers yet.
    pub(super) fn assemble(cfg: &Config, ipam: Ipam, p: Parts) -> Result<Manager> {
        let marker = marker(&cfg.control);
        let plumbing = Kernel {
            nl: p.nl,
            marker: marker.clone(),
            spread: cfg.spread,
            spread_program: p.spread_program,
        };
        Ok(Manager {
            ipam,
            mtu: cfg.mtu,
            tap_name: cfg.tap.clone(),
            gateway_mac: MacAddr::from_ipv4(cfg.gateway),
            own_netns: own_netns().context("identifying the daemon's own network namespace")?,
            initial_netns: initial_netns(),
            plumbing: Box::new(plumbing),
            datapath: p.datapath,
            containers: Vec::new(),
            nat: p.nat,
            nat_jobs: p.nat_jobs,
            host_resolv: p.host_resolv,
            last_expiry: p.last_expiry,
            fast_path: p.fast_path,
            offloads: p.offloads,
            last_report: 0,
            budget: p.budget,
            marker,
            state_path: state::path_for(&cfg.control),
            pins_dir: pins::dir_for(&cfg.control),
            tap_index: p.tap_index,
            watchdog: p.watchdog,
            captures: Vec::new(),
            isolate: cfg.isolate,
            tally: Tally {
                dns: p.dns,
                nat_busy: p.nat_busy,
                fdb_capacity: cfg.fdb_size,
                start_time: unix_now(),
                ..Tally::default()
            },
        })
    }
}

/// The NAT's configuration: the network's, with the bounds given or what the descriptors can
/// carry.
pub(super) fn nat_config(cfg: &Config, fd_limit: usize, relay_ports: Vec<u16>) -> NatConfig {
    let max_flows = cfg.max_flows.unwrap_or_else(|| default_max_flows(fd_limit));
    let default_shares = Shares::for_table(max_flows);
    tracing::info!(max_flows, fd_limit, "NAT flow table");
    NatConfig {
        max_flows,
        shares: Shares {
            flows: cfg.max_flows_per_container.unwrap_or(default_shares.flows),
            half_open: (cfg.max_half_open)
                .unwrap_or_else(|| default_half_open(default_shares.half_open, fd_limit)),
        },
        ..NatConfig::new(
            cfg.gateway,
            MacAddr::from_ipv4(cfg.gateway).0,
            cfg.subnet.network,
            cfg.subnet.prefix,
            relay_ports,
        )
    }
}

/// Most TCP connections of one container still connecting, by default: the table's share,
/// but no more than half of what the container's share of the descriptors pays for. The
/// workers lease a connection's descriptors the moment its SYN arrives, so under a SYN flood
/// this limit, which the NAT counts (`half_open`), binds before the descriptor share does, and
/// the container keeps descriptors for its established connections.
fn default_half_open(table_share: usize, fd_limit: usize) -> usize {
    let payable = fd_limit / natd::budget::SHARE_DIVISOR / natd::budget::TCP_RELAY;
    table_share.min(payable / 2).max(1)
}

/// The resolvers the DNS forwarder asks: `--dns`, else the host's.
pub(super) fn dns_upstreams(cfg: &Config, host_resolv: &str) -> Vec<std::net::SocketAddr> {
    let fallback = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
    let upstreams = resolv::upstreams(&cfg.dns, host_resolv, fallback.as_deref());
    if upstreams.is_empty() {
        tracing::warn!(
            "no upstream DNS resolver known (give --dns): containers' queries will go unanswered"
        );
    }
    upstreams
}

/// The state a previous daemon of this switch left; a daemon started for another network is
/// refused before it touches anything, and an unreadable state is put aside.
fn previous_state(cfg: &Config) -> Result<Option<State>> {
    let path = state::path_for(&cfg.control);
    let state = match state::load(&path) {
        Ok(state) => state,
        Err(StateError::Corrupt { why, .. }) => {
            let aside = state::set_aside(&path).context("putting the unreadable state aside")?;
            tracing::warn!(
                file = %path.display(),
                kept_as = %aside.display(),
                "the state file is unreadable ({why}): starting without it"
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
fn open_tap(cfg: &Config, nl: &mut Netlink, marker: &str) -> Result<(Vec<Tap>, u32)> {
    let gateway_mac = MacAddr::from_ipv4(cfg.gateway);
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
