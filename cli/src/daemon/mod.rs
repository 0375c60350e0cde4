//! `vswitch run`: startup, the manager thread and shutdown.
//!
//! The manager thread is the only owner of the control-plane state (address book, plugged
//! containers); control connections and the lifecycle timer reach it through crossbeam channels,
//! so plugs and unplugs happen one at a time and never race each other.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crossbeam_channel::{select, tick, Receiver};
use nix::sys::signal::{SigSet, Signal};
use vswitch_switch::{MacAddr, PortId, PortInfo, Switch, VNET_HDR_LEN};

use vswitch_nat::{Nat, NatConfig};

use crate::bpf::fanout::{Spread, SpreadProgram};
use crate::bpf::fastpath::{self, Attachment, FastPath, PortCounts, Station};
use crate::control::{self, Call, FdbView, FlowRow, PortView, Request, Target};
use crate::datapath::{now_ms, Datapath, Fabric, TAP_PORT};
use crate::kernel::netlink::Netlink;
use crate::kernel::netns;
use crate::natd::{self, dns, resolv, NatHook, NatJob, NatMailbox, NatService, PublishSpec};
use crate::ports::packet::PacketSocket;
use crate::ports::tap::Tap;
use crate::ports::{Counters, Port, PortIo};

use ipam::{Ipam, Ipv4Net};

pub mod ipam;

/// Relay listeners for containers' outgoing TCP (see `natd::bind_relays`).
const RELAY_PORTS: usize = 16;
/// How often the manager looks for containers that went away.
const LIFECYCLE_TICK: Duration = Duration::from_millis(250);

pub struct Config {
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    pub tap: String,
    pub mtu: u32,
    pub control: PathBuf,
    pub fdb_age_secs: u64,
    pub fdb_size: usize,
    pub workers: usize,
    /// Upstream resolvers given with `--dns` (else the host's).
    pub dns: Vec<std::net::IpAddr>,
    /// Serve no DNS forwarder on the gateway.
    pub no_dns: bool,
    pub max_flows: usize,
    pub spread: Spread,
    /// How long a datapath worker polls after its last frame before sleeping.
    pub poll: std::time::Duration,
    /// Forward frames between learned containers in the kernel, on which hook (see `fastpath`).
    pub fast_path: fastpath::Mode,
}

/// A plugged container.
struct Container {
    port: PortId,
    target: Target,
    netns_id: (u64, u64),
    host_ifname: String,
    host_index: u32,
    ifname: String,
    ip: Ipv4Addr,
    mac: MacAddr,
    publish: Vec<PublishSpec>,
    /// The `/etc/netns/NAME/resolv.conf` plug wrote, and whether it made the directory.
    netns_conf: Option<(PathBuf, bool)>,
    /// The fast path's program on the host end's ingress (detached when dropped).
    fast_link: Option<Attachment>,
}

struct Manager {
    ipam: Ipam,
    mtu: u32,
    spread: Spread,
    spread_program: Option<Arc<SpreadProgram>>,
    tap_name: String,
    gateway_mac: MacAddr,
    own_netns: (u64, u64),
    nl: Netlink,
    datapath: Datapath,
    containers: Vec<Container>,
    nat: Arc<Nat>,
    nat_jobs: NatMailbox,
    /// The host's resolv.conf, for the containers' search domains.
    host_resolv: String,
    /// When the FDB and the flow table were last swept.
    last_expiry: u64,
    fast_path: Option<FastPath>,
}

pub fn run(cfg: Config) -> Result<()> {
    // Signals are taken synchronously by the main thread (sigwait); block them before any other
    // thread exists so that every thread inherits the mask.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    signals.thread_block().context("blocking signals")?;

    raise_fd_limit();
    let ipam = Ipam::new(cfg.subnet, cfg.gateway)?;
    let listener = control::bind(&cfg.control)
        .with_context(|| format!("control socket {}", cfg.control.display()))?;
    let started = start(&cfg, ipam);
    let manager = match started {
        Ok(m) => m,
        Err(e) => {
            let _ = std::fs::remove_file(&cfg.control);
            return Err(e);
        }
    };
    let (calls_tx, calls_rx) = crossbeam_channel::bounded::<Call>(64);
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(1);
    std::thread::Builder::new()
        .name("vswitch-ctl".into())
        .spawn(move || control::serve(listener, calls_tx))?;
    let manager = std::thread::Builder::new()
        .name("vswitch-mgr".into())
        .spawn(move || manager.run(calls_rx, stop_rx))?;
    println!(
        "vswitch: serving {} on {} (gateway {}/{}), control socket {}",
        cfg.subnet,
        cfg.tap,
        cfg.gateway,
        cfg.subnet.prefix,
        cfg.control.display()
    );

    let signal = signals.wait().context("waiting for signals")?;
    eprintln!("vswitch: {signal}: shutting down");
    let _ = stop_tx.send(());
    let _ = manager.join();
    let _ = std::fs::remove_file(&cfg.control);
    Ok(())
}

/// Every NAT flow and published connection holds host sockets: allow as many descriptors as
/// the hard limit permits rather than the usual soft 1024.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// Creates the TAP with the gateway address and starts the datapath, the NAT service and the
/// DNS forwarder.
fn start(cfg: &Config, ipam: Ipam) -> Result<Manager> {
    let taps = Tap::create_queues(&cfg.tap, cfg.workers)
        .with_context(|| format!("creating TAP {}", cfg.tap))?;
    let mut nl = Netlink::open().context("opening netlink")?;
    let gateway_mac = MacAddr::from_ipv4(cfg.gateway);
    let index = nl
        .link_index(&cfg.tap)?
        .with_context(|| format!("TAP {} vanished", cfg.tap))?;
    nl.set_link(index, true, false, Some(cfg.mtu), Some(gateway_mac.0))
        .with_context(|| format!("configuring TAP {}", cfg.tap))?;
    nl.add_address(index, cfg.gateway, cfg.subnet.prefix)
        .with_context(|| {
            format!(
                "adding {}/{} to {}",
                cfg.gateway, cfg.subnet.prefix, cfg.tap
            )
        })?;

    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    if !cfg.no_dns {
        let fallback = std::fs::read_to_string("/run/systemd/resolve/resolv.conf").ok();
        let upstreams = resolv::upstreams(&cfg.dns, &host_resolv, fallback.as_deref());
        if upstreams.is_empty() {
            eprintln!("vswitch: no upstream DNS resolver known (give --dns): containers' queries will go unanswered");
        }
        dns::start(cfg.gateway, upstreams).with_context(|| {
            format!("DNS forwarder on {}:53 (--no-dns disables it)", cfg.gateway)
        })?;
    }

    let switch = Arc::new(Switch::new(vswitch_switch::Config {
        fdb_capacity: cfg.fdb_size,
        fdb_age_ms: cfg.fdb_age_secs.saturating_mul(1000),
    }));
    switch.add_port(
        TAP_PORT,
        PortInfo {
            mac: gateway_mac,
            ip: Some(cfg.gateway),
        },
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
    let (fast_path, why) = fastpath::start(cfg.fast_path, cfg.fdb_size);
    eprintln!("vswitch: kernel fast path: {why}");
    let fabric = Fabric::new(switch, spread_program.clone());
    let homes = cfg.spread != Spread::Hash;
    let mut datapath =
        Datapath::new(fabric.clone(), cfg.workers, cfg.poll, homes).context("preparing workers")?;
    let relays = natd::bind_relays(cfg.gateway, RELAY_PORTS).context("binding NAT relays")?;
    let nat = Arc::new(Nat::new(NatConfig {
        max_flows: cfg.max_flows,
        ..NatConfig::new(
            cfg.gateway,
            gateway_mac.0,
            cfg.subnet.network,
            cfg.subnet.prefix,
            relays.iter().map(|(_, port)| *port).collect(),
        )
    }));
    let poll = cfg.poll;
    let (service, nat_jobs) =
        NatService::new(nat.clone(), fabric, datapath.relays(), cfg.gateway, relays)
            .context("starting the NAT service")?;
    std::thread::Builder::new()
        .name("vswitch-nat".into())
        .spawn(move || service.run(poll))?;
    let hook = NatHook {
        nat: nat.clone(),
        gateway_mac: gateway_mac.0,
        service: nat_jobs.clone(),
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
    let own = std::fs::File::open("/proc/self/ns/net").context("opening own netns")?;
    Ok(Manager {
        ipam,
        mtu: cfg.mtu,
        spread: cfg.spread,
        spread_program,
        tap_name: cfg.tap.clone(),
        gateway_mac,
        own_netns: netns::netns_id(own.as_fd())?,
        nl,
        datapath,
        containers: Vec::new(),
        nat,
        nat_jobs,
        host_resolv,
        last_expiry: 0,
        fast_path,
    })
}

impl Manager {
    fn run(mut self, calls: Receiver<Call>, stop: Receiver<()>) {
        let ticker = tick(LIFECYCLE_TICK);
        loop {
            select! {
                recv(calls) -> call => {
                    let Ok(call) = call else { break };
                    let answer = self.handle(call.request);
                    let _ = call.reply.send(answer);
                }
                recv(ticker) -> _ => self.tick(),
                recv(stop) -> _ => break,
            }
        }
        self.shutdown();
    }

    fn handle(&mut self, request: Request) -> Result<serde_json::Value, String> {
        match request {
            Request::Plug {
                pid,
                netns,
                ip,
                mac,
                ifname,
                publish,
            } => {
                let target = Target::from_parts(pid, netns)?;
                let view = self.plug(target, ip, mac, ifname, publish)?;
                Ok(json(&view))
            }
            Request::Unplug { pid, netns } => {
                let target = Target::from_parts(pid, netns)?;
                let view = self.unplug(&target)?;
                Ok(json(&view))
            }
            Request::Ls => Ok(self.with_fast_path(json(&self.ls()))),
            Request::Fdb => Ok(json(&self.fdb())),
            Request::Conntrack => Ok(json(&self.conntrack())),
        }
    }

    fn plug(
        &mut self,
        target: Target,
        ip: Option<Ipv4Addr>,
        mac: Option<String>,
        ifname: Option<String>,
        publish: Vec<String>,
    ) -> Result<PortView, String> {
        let what = format!("plug {target}");
        let publish = publish
            .iter()
            .map(|p| p.parse::<PublishSpec>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{what}: {e}"))?;
        let ns = match &target {
            Target::Pid(pid) => netns::open_pid_netns(*pid).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!("{what}: no such process"),
                std::io::ErrorKind::PermissionDenied => {
                    format!("{what}: permission denied opening /proc/{pid}/ns/net")
                }
                _ => format!("{what}: opening its network namespace: {e}"),
            })?,
            Target::Netns(path) => netns::open_netns_path(path).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => format!("{what}: no such namespace file"),
                _ => format!("{what}: {e}"),
            })?,
        };
        let netns_id = netns::netns_id(ns.as_fd()).map_err(|e| format!("{what}: {e}"))?;
        if netns_id == self.own_netns {
            return Err(format!(
                "{what}: it shares the daemon's own (host) network namespace; \
                 start the container with a network namespace of its own"
            ));
        }
        if let Some(c) = self.containers.iter().find(|c| c.netns_id == netns_id) {
            return Err(format!(
                "{what}: already plugged (host port {}, {})",
                c.host_ifname, c.ip
            ));
        }
        let ifname = ifname.unwrap_or_else(|| "eth0".to_string());
        check_ifname(&ifname).map_err(|e| format!("{what}: {e}"))?;
        let mac = match mac {
            None => None,
            Some(text) => {
                let mac: MacAddr = text
                    .parse()
                    .map_err(|_| format!("{what}: invalid MAC address {text:?}"))?;
                if mac.is_multicast() || mac.is_zero() {
                    return Err(format!(
                        "{what}: MAC address {mac} is not a unicast address"
                    ));
                }
                Some(mac)
            }
        };
        let host_ifname = host_ifname(&target);
        match self.nl.link_index(&host_ifname) {
            Ok(None) => {}
            Ok(Some(_)) => {
                return Err(format!(
                    "{what}: host interface {host_ifname} already exists"
                ))
            }
            Err(e) => return Err(format!("{what}: {e}")),
        }
        let ip = self.ipam.reserve(ip).map_err(|e| format!("{what}: {e}"))?;
        let mac = mac.unwrap_or_else(|| MacAddr::from_ipv4(ip));
        if mac == self.gateway_mac || self.containers.iter().any(|c| c.mac == mac) {
            self.ipam.release(ip);
            return Err(format!("{what}: MAC address {mac} is already in use"));
        }

        // Published ports are bound first: a port in use fails the plug before anything exists.
        let mut listeners = Vec::new();
        for spec in &publish {
            match spec.bind() {
                Ok(l) => listeners.push((l, spec.container_port)),
                Err(e) => {
                    self.ipam.release(ip);
                    return Err(format!("{what}: {e}"));
                }
            }
        }

        // From here on, every failure undoes what was made: the veth (deleting the host end
        // deletes both), the listeners (dropped) and the address reservation.
        let mut host_index = None;
        let result = self.build_port(&ns, &host_ifname, &ifname, ip, mac, &mut host_index);
        let (port, fast_link) = match result {
            Ok(built) => built,
            Err(e) => {
                if let Some(index) = host_index {
                    let _ = self.nl.delete_link(index);
                }
                self.ipam.release(ip);
                return Err(format!("{what}: {e}"));
            }
        };
        let id = port.id;
        let container = Container {
            port: id,
            target,
            netns_id,
            host_ifname,
            host_index: host_index.unwrap_or_default(),
            ifname,
            ip,
            mac,
            publish,
            netns_conf: None,
            fast_link,
        };
        if !listeners.is_empty() {
            self.nat_jobs.send(NatJob::Publish {
                container: ip,
                mac: mac.0,
                ports: listeners,
            });
        }
        // Announce the newcomer so that peers (and the host) update stale neighbour entries.
        let mut garp = [0u8; VNET_HDR_LEN + 64];
        if let Some(len) = self
            .datapath
            .switch()
            .gratuitous_arp(id, &mut garp[VNET_HDR_LEN..])
        {
            self.datapath.flood(id, &garp[..VNET_HDR_LEN + len]);
        }
        eprintln!(
            "vswitch: plugged {}: {} {}/{} mac {} (host port {})",
            container.target,
            container.ifname,
            ip,
            self.ipam.net().prefix,
            mac,
            container.host_ifname
        );
        let (resolv, netns_conf) = self.write_resolv(&container.target);
        let container = Container {
            netns_conf,
            ..container
        };
        self.containers.push(container);
        self.sync_fast_path();
        let mut view = self.view(self.containers.last().expect("just pushed"));
        view.resolv = Some(resolv);
        Ok(view)
    }

    /// Creates the veth, configures both ends and attaches the host end to the switch.
    fn build_port(
        &mut self,
        ns: &std::os::fd::OwnedFd,
        host_ifname: &str,
        ifname: &str,
        ip: Ipv4Addr,
        mac: MacAddr,
        host_index: &mut Option<u32>,
    ) -> Result<(Arc<Port>, Option<Attachment>), String> {
        let index = self
            .nl
            .create_veth(host_ifname, ifname, ns.as_fd(), mac.0, self.mtu)
            .map_err(|e| match e.errno() {
                Some(libc::EEXIST) => {
                    format!("the container already has an interface named {ifname}")
                }
                _ => e.to_string(),
            })?;
        *host_index = Some(index);
        // The host end must stay inert: no IPv6, no ARP (see ARCHITECTURE.md).
        netns::disable_ipv6(host_ifname)
            .map_err(|e| format!("disabling IPv6 on {host_ifname}: {e}"))?;
        self.nl
            .set_link(index, true, true, None, None)
            .map_err(|e| e.to_string())?;

        let (prefix, gateway) = (self.ipam.net().prefix, self.ipam.gateway());
        let ifname_owned = ifname.to_string();
        netns::run_in_netns(ns, move || -> Result<(), String> {
            let mut nl = Netlink::open().map_err(|e| e.to_string())?;
            if let Some(lo) = nl.link_index("lo").map_err(|e| e.to_string())? {
                nl.set_link(lo, true, false, None, None)
                    .map_err(|e| e.to_string())?;
            }
            let index = nl
                .link_index(&ifname_owned)
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("{ifname_owned} did not appear in the container"))?;
            nl.add_address(index, ip, prefix)
                .map_err(|e| e.to_string())?;
            nl.set_link(index, true, false, None, None)
                .map_err(|e| e.to_string())?;
            nl.add_default_route(gateway).map_err(|e| match e.errno() {
                Some(libc::EEXIST) => "the container already has a default route".to_string(),
                _ => e.to_string(),
            })
        })
        .map_err(|e| format!("entering the container's namespace: {e}"))??;

        let id = self.free_port_id().ok_or("too many ports")?;
        let fast = self
            .fast_path
            .as_ref()
            .filter(|_| id.0 < fastpath::MAX_PORTS);
        let program = self.spread_program.as_deref();
        let filter = fast.map(|f| f.filter());
        let sockets =
            PacketSocket::open_queues(index, self.datapath.queues(), self.spread, program, filter)
                .map_err(|e| format!("opening packet sockets on {host_ifname}: {e}"))?;
        // Without its program on the port, the port's stations stay out of the fast path's map,
        // so the sockets' filter lets all its frames through: the daemon switches them.
        let fast_link = fast.and_then(|f| {
            f.attach(id, index)
                .map_err(|e| eprintln!("vswitch: no kernel fast path on {host_ifname}: {e}"))
                .ok()
        });
        let port = Arc::new(Port {
            id,
            name: host_ifname.to_string(),
            queues: sockets
                .into_iter()
                .map(|s| Box::new(s) as Box<dyn PortIo>)
                .collect(),
            by_flow: false,
            counters: Counters::default(),
        });
        self.datapath
            .switch()
            .add_port(id, PortInfo { mac, ip: Some(ip) });
        if let Err(e) = self.datapath.add_port(port.clone()) {
            self.datapath.switch().remove_port(id);
            return Err(format!("adding the port to a worker: {e}"));
        }
        Ok((port, fast_link))
    }

    /// Writes the container's resolv.conf where it has one of its own; says what happened.
    fn write_resolv(&self, target: &Target) -> (String, Option<(PathBuf, bool)>) {
        let content = resolv::container_conf(self.ipam.gateway(), &self.host_resolv);
        let written = match target {
            Target::Pid(pid) => resolv::write_for_pid(*pid, &content),
            Target::Netns(path) => resolv::write_for_netns(path, &content),
        };
        match written {
            Ok(w) => {
                let undo = match &w {
                    resolv::Written::NetnsEtc { file, created_dir } => {
                        Some((file.clone(), *created_dir))
                    }
                    _ => None,
                };
                (w.to_string(), undo)
            }
            Err(e) => (format!("resolv.conf not written: {e}"), None),
        }
    }

    fn free_port_id(&self) -> Option<PortId> {
        (1..=u16::MAX)
            .map(PortId)
            .find(|id| self.containers.iter().all(|c| c.port != *id))
    }

    fn unplug(&mut self, target: &Target) -> Result<PortView, String> {
        let what = format!("unplug {target}");
        // By the name it was plugged with, else by namespace: another process of the same
        // container, or another path to the same namespace file, names the same port.
        let pos = self
            .containers
            .iter()
            .position(|c| &c.target == target)
            .or_else(|| {
                let ns = match target {
                    Target::Pid(pid) => netns::open_pid_netns(*pid).ok()?,
                    Target::Netns(path) => netns::open_netns_path(path).ok()?,
                };
                let id = netns::netns_id(ns.as_fd()).ok()?;
                self.containers.iter().position(|c| c.netns_id == id)
            });
        let pos = pos.ok_or_else(|| format!("{what}: not plugged"))?;
        let view = self.view(&self.containers[pos]);
        let c = self.containers.remove(pos);
        if let Err(e) = self.nl.delete_link(c.host_index) {
            if e.errno() != Some(libc::ENODEV) {
                eprintln!("vswitch: deleting {}: {e}", c.host_ifname);
            }
        }
        self.forget(&c);
        eprintln!(
            "vswitch: unplugged {} (host port {})",
            c.target, c.host_ifname
        );
        Ok(view)
    }

    /// Takes a container's port out of the datapath and frees its address.
    fn forget(&mut self, c: &Container) {
        self.datapath.remove_port(c.port);
        self.datapath.switch().remove_port(c.port);
        self.sync_fast_path();
        self.ipam.release(c.ip);
        if !c.publish.is_empty() {
            self.nat_jobs.send(NatJob::Unpublish { container: c.ip });
        }
        let flows = self.nat.forget_container(c.ip);
        if !flows.is_empty() {
            self.nat_jobs.send(NatJob::Forget(flows));
        }
        if let Some((file, created_dir)) = &c.netns_conf {
            resolv::remove_netns_conf(file, *created_dir);
        }
    }

    /// Removes the ports of containers whose namespace is gone (their veth went with it).
    fn tick(&mut self) {
        let gone: Vec<usize> = self
            .containers
            .iter()
            .enumerate()
            .filter(|(_, c)| link_index_by_name(&c.host_ifname) != Some(c.host_index))
            .map(|(i, _)| i)
            .collect();
        for i in gone.into_iter().rev() {
            let c = self.containers.remove(i);
            self.forget(&c);
            eprintln!(
                "vswitch: {} is gone: removed port {} and released {}",
                c.target, c.host_ifname, c.ip
            );
        }
        self.sync_fast_path();
        // Expiry scans whole tables: once a second is plenty.
        let now = now_ms();
        if now < self.last_expiry + 1000 {
            return;
        }
        self.last_expiry = now;
        if let Some(fast) = &self.fast_path {
            for (mac, port) in fast.used() {
                self.datapath.switch().seen(mac, port, now);
            }
        }
        self.datapath.switch().expire(now);
        let flows = self.nat.expire(now);
        if !flows.is_empty() {
            self.nat_jobs.send(NatJob::Forget(flows));
        }
    }

    /// Makes the fast path's stations the plugged containers' own MACs (so that two containers
    /// talk over the fast path from their first frame, with no switch-over to reorder a flow),
    /// overridden by the forwarding table on the ports the fast path serves: a MAC learned
    /// elsewhere is the daemon's, a MAC learned on a served port (a container that changed its
    /// address, or bridges others) is added within a tick, what the switch forgot is removed.
    fn sync_fast_path(&mut self) {
        let Some(fast) = &mut self.fast_path else {
            return;
        };
        let served: HashMap<PortId, u32> = (self.containers.iter())
            .filter(|c| c.fast_link.is_some())
            .map(|c| (c.port, c.host_index))
            .collect();
        let station = |port: PortId| {
            let ifindex = *served.get(&port)?;
            Some(Station { ifindex, port })
        };
        let mut want: HashMap<MacAddr, Station> = (self.containers.iter())
            .filter_map(|c| Some((c.mac, station(c.port)?)))
            .collect();
        for e in self.datapath.switch().fdb_entries(now_ms()) {
            match station(e.port) {
                Some(s) => want.insert(e.mac, s),
                None => want.remove(&e.mac),
            };
        }
        if let Err(e) = fast.sync(&want) {
            eprintln!("vswitch: updating the kernel fast path: {e}");
        }
    }

    fn view(&self, c: &Container) -> PortView {
        let mut view = self.port_view(c.port, "container", c.ip, c.mac, &c.host_ifname);
        match &c.target {
            Target::Pid(pid) => view.pid = Some(*pid),
            Target::Netns(path) => view.netns = Some(path.display().to_string()),
        }
        view.ifname = Some(c.ifname.clone());
        view.publish = c.publish.iter().map(|p| p.to_string()).collect();
        let nat = self.nat.container_stats(c.ip);
        view.nat_flows = nat.flows as u64;
        view.nat_packets_out = nat.packets_out;
        view.nat_packets_in = nat.packets_in;
        view.nat_bytes_out = nat.bytes_out;
        view.nat_bytes_in = nat.bytes_in;
        view
    }

    fn port_view(
        &self,
        id: PortId,
        kind: &str,
        ip: Ipv4Addr,
        mac: MacAddr,
        name: &str,
    ) -> PortView {
        use std::sync::atomic::Ordering::Relaxed;
        let table = self.datapath.ports();
        let counters = table.get(id.0 as usize).and_then(|p| p.as_ref());
        let read = |f: fn(&Counters) -> &std::sync::atomic::AtomicU64| {
            counters.map(|p| f(&p.counters).load(Relaxed)).unwrap_or(0)
        };
        // Frames the kernel fast path carried count as the port's too.
        let fast = (self.fast_path.as_ref()).map_or_else(PortCounts::default, |f| f.counts(id));
        PortView {
            port: id.0,
            kind: kind.to_string(),
            pid: None,
            netns: None,
            host_ifname: name.to_string(),
            ifname: None,
            ip,
            prefix: self.ipam.net().prefix,
            gateway: self.ipam.gateway(),
            mac: mac.to_string(),
            rx_frames: read(|c| &c.rx_frames) + fast.rx_frames,
            rx_bytes: read(|c| &c.rx_bytes) + fast.rx_bytes,
            tx_frames: read(|c| &c.tx_frames) + fast.tx_frames,
            tx_bytes: read(|c| &c.tx_bytes) + fast.tx_bytes,
            drops: read(|c| &c.drops) + counters.map(|p| p.kernel_drops()).unwrap_or(0),
            fast_rx_frames: fast.rx_frames,
            fast_tx_frames: fast.tx_frames,
            publish: Vec::new(),
            nat_flows: 0,
            nat_packets_out: 0,
            nat_packets_in: 0,
            nat_bytes_out: 0,
            nat_bytes_in: 0,
            resolv: None,
        }
    }

    fn ls(&self) -> Vec<PortView> {
        let gateway = self.ipam.gateway();
        let mut list =
            vec![self.port_view(TAP_PORT, "tap", gateway, self.gateway_mac, &self.tap_name)];
        list.extend(self.containers.iter().map(|c| self.view(c)));
        list
    }

    /// `ls`'s ports, each with the hook its fast path is on: `"tcx"`, `"tc"` or `"off"`.
    fn with_fast_path(&self, mut ports: serde_json::Value) -> serde_json::Value {
        for port in ports.as_array_mut().into_iter().flatten() {
            let id = port["port"].as_u64();
            let hook = (self.containers.iter())
                .find(|c| Some(u64::from(c.port.0)) == id)
                .and_then(|c| c.fast_link.as_ref())
                .map_or("off", |link| link.hook().name());
            port["fast_path"] = hook.into();
        }
        ports
    }

    fn fdb(&self) -> Vec<FdbView> {
        let table = self.datapath.ports();
        self.datapath
            .switch()
            .fdb_entries(now_ms())
            .into_iter()
            .map(|e| FdbView {
                mac: e.mac.to_string(),
                port: e.port.0,
                port_name: table
                    .get(e.port.0 as usize)
                    .and_then(|p| p.as_ref())
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                age_ms: e.age_ms,
            })
            .collect()
    }

    fn conntrack(&self) -> Vec<FlowRow> {
        self.nat
            .entries(now_ms())
            .into_iter()
            .map(|f| FlowRow {
                proto: f.proto.as_str().to_string(),
                inside: f.inside.to_string(),
                outside: f.outside.to_string(),
                published: f.published,
                state: f.state.to_string(),
                timeout_s: f.timeout_ms / 1000,
                packets_out: f.packets_out,
                packets_in: f.packets_in,
                bytes_out: f.bytes_out,
                bytes_in: f.bytes_in,
            })
            .collect()
    }

    /// Deletes every veth the daemon made; the TAP goes when its descriptor closes.
    fn shutdown(mut self) {
        for c in std::mem::take(&mut self.containers) {
            let _ = self.nl.delete_link(c.host_index);
            self.forget(&c);
        }
        self.datapath.remove_port(TAP_PORT);
        self.datapath.stop();
    }
}

/// The host end's name: `vsw-<pid>` or `vsw-<netns name>`, within the 15-byte kernel limit. A
/// namespace name too long for that is cut and given a hash of the whole path, so that
/// `ctr-long-name-1` and `ctr-long-name-2` do not collide.
fn host_ifname(target: &Target) -> String {
    match target {
        Target::Pid(pid) => format!("vsw-{pid}"),
        Target::Netns(path) => {
            let name: String = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
                .collect();
            if name.len() <= 11 {
                return format!("vsw-{name}");
            }
            // FNV-1a: stable across runs, which a name should be.
            let hash = path
                .as_os_str()
                .as_encoded_bytes()
                .iter()
                .fold(0x811c9dc5u32, |h, b| {
                    (h ^ u32::from(*b)).wrapping_mul(0x01000193)
                });
            format!("vsw-{}{:05x}", &name[..6], hash & 0xfffff)
        }
    }
}

fn check_ifname(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        bail!("invalid interface name {name:?} (1 to 15 characters, no '/', ':' or spaces)");
    }
    Ok(())
}

fn link_index_by_name(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

fn json<T: serde::Serialize>(value: &T) -> serde_json::Value {
    serde_json::to_value(value).expect("views always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_fit_and_do_not_collide() {
        assert_eq!(host_ifname(&Target::Pid(4242)), "vsw-4242");
        assert_eq!(
            host_ifname(&Target::Netns("/run/netns/web".into())),
            "vsw-web"
        );
        let a = host_ifname(&Target::Netns("/run/netns/vswt26245-c1".into()));
        let b = host_ifname(&Target::Netns("/run/netns/vswt26245-c2".into()));
        assert_ne!(a, b);
        assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
        assert!(a.starts_with("vsw-vswt26"));
    }
}
