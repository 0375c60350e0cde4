//! The new process's side of a hand-over (`vswitch run ... --takeover`): ask the running
//! daemon, rebuild everything from what it sends without moving a byte, say `ready`, and serve
//! once it answers `go`.

use std::io::Write;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use nix::sys::signal::SigSet;
use vswitch_nat::Nat;
use vswitch_switch::{FdbEntry, PortId};

use crate::bpf::fanout::SpreadProgram;
use crate::bpf::fastpath::{self, FastPath, MAX_PORTS};
use crate::bpf::pins::{self, Pins};
use crate::control::{
    decode_response, encode_request, HandoverArgs, HandoverOffer, Request, MAX_REQUEST,
};
use crate::datapath::relay::RelayPool;
use crate::datapath::{now_ms, Fabric};
use crate::kernel::fdpass::{FdIn, FdStream};
use crate::kernel::netlink::Netlink;
use crate::natd::budget::{open_now, FdBudget, TCP_RELAY};
use crate::natd::dns::DnsCounters;
use crate::natd::{self, dns, NatHook, NatMailbox, NatService};
use crate::ports::packet::PacketSocket;
use crate::ports::tap::Tap;
use crate::ports::{Port, PortIo};

use super::super::adopt::Recorded;
use super::super::config::Config;
use super::super::error::DaemonError;
use super::super::ipam::Ipam;
use super::super::manager::Manager;
use super::super::startup::{
    dns_upstreams, log_fast_path, nat_config, nat_hook, new_datapath, offloads, resets,
    spawn_nat_service, tap_port, translator, Parts,
};
use super::super::systemd::{self, Watchdog};
use super::{Handoff, Network, PortSnap, Snapshot, FORMAT, MAX_SNAPSHOT, TIMEOUT};

/// Descriptors kept for the daemon beyond those it holds once built (as `startup` keeps).
const SLACK: usize = 64;

/// How long the new process waits for systemd to take in that it is the main process now.
const BARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// Takes over from the daemon serving `cfg.control`, then serves until a signal.
pub fn take_over(
    cfg: Config,
    signals: SigSet,
    fd_limit: usize,
    metrics: Option<std::net::TcpListener>,
) -> Result<()> {
    let conn = UnixStream::connect(&cfg.control).map_err(|e| {
        anyhow!(
            "--takeover: no daemon is running on {} to take over from ({e}): start this one \
             without --takeover",
            cfg.control.display()
        )
    })?;
    // What needs nothing of the old process is made before it pauses, to keep the pause short:
    // the fast path's programs (on the maps it pinned).
    let pins = (cfg.fast_path != fastpath::Mode::Off)
        .then(|| Pins::open(&pins::dir_for(&cfg.control)).ok())
        .flatten();
    let (fast_path, why) = fastpath::start(cfg.fast_path, cfg.fdb_size, pins);
    let nl = Netlink::open().context("opening netlink")?;

    let started = Instant::now();
    let (snapshot, fds, pid) = ask(&cfg, &conn)?;
    let received = started.elapsed();
    log_fast_path(fast_path.as_ref(), &why);
    // From here on a failure must leave everything to the old process, which resumes when it
    // hears no `ready`: exit without running destructors (a dropped fast-path attachment would
    // unpin the link the old process's ports run on).
    let built = match build(&cfg, fd_limit, snapshot, fds, fast_path, nl) {
        Ok(built) => built,
        Err(e) => abandon(&e.context(format!("taking over from pid {pid}"))),
    };
    let go = (|| {
        (&conn).write_all(b"ready\n")?;
        FdStream::new(&conn, Some(Instant::now() + TIMEOUT)).line(64)
    })();
    match go {
        Ok(line) if line == "go" => {}
        Ok(line) => abandon(&anyhow!(
            "taking over from pid {pid}: it answered {line:?} instead of go, and goes on"
        )),
        Err(e) => abandon(&anyhow!(
            "taking over from pid {pid}: no go ({e}): it goes on serving"
        )),
    }
    let (mut manager, listener, handoff) = start_serving(built);
    let serving = started.elapsed();
    manager.sync_fast_path();
    manager.save_state();
    tracing::info!(
        pid,
        ports = manager.containers.len(),
        flows = manager.nat.stats().flows,
        relayed = manager.datapath.relays().len(),
        "took over from pid {pid}: serving {:.1} ms after asking (state received after {:.1} ms)",
        serving.as_secs_f64() * 1e3,
        received.as_secs_f64() * 1e3
    );
    super::super::serve(
        &cfg,
        listener,
        metrics,
        manager,
        handoff,
        signals,
        move || {
            systemd::notify_main(BARRIER_TIMEOUT);
            // The old process may exit now.
            let _ = (&conn).write_all(b"done\n");
        },
    )
}

/// Starts what was built: the workers, the NAT service, the relayed connections, the DNS
/// forwarder. The old process is committed by now: a failure here is a crash (the next
/// `vswitch run` takes over from the state file).
fn start_serving(built: Built) -> (Manager, UnixListener, Handoff) {
    let Built {
        mut manager,
        handoff,
        listener,
        datapath_hook,
        service,
        dns: dns_sockets,
        upstreams,
        pool,
        poll,
    } = built;
    manager
        .datapath
        .run(Some(datapath_hook))
        .unwrap_or_else(|e| abandon(&anyhow!("starting workers: {e}")));
    spawn_nat_service(service, poll)
        .unwrap_or_else(|e| abandon(&anyhow!("starting the NAT service: {e}")));
    pool.kick();
    if let (Some((udp, tcp)), Some(counters)) = (dns_sockets, manager.tally.dns.clone()) {
        if let Err(e) = dns::serve(udp, tcp, upstreams, manager.budget.clone(), counters) {
            tracing::error!("DNS forwarder: {e}");
        }
    }
    (manager, listener, handoff)
}

/// Reports why the hand-over is abandoned and exits at once, leaving everything to the old
/// process.
fn abandon(e: &anyhow::Error) -> ! {
    tracing::error!("{e:#}");
    std::process::exit(1)
}

/// Sends the request; returns the old process's snapshot, its descriptors and its pid.
fn ask(cfg: &Config, conn: &UnixStream) -> Result<(Snapshot, FdIn, u32)> {
    let network = Network::of(cfg);
    let request = Request::Handover(HandoverArgs {
        format: FORMAT,
        network: serde_json::to_value(&network)?,
    });
    let mut line = encode_request(&request);
    line.push(b'\n');
    conn.set_write_timeout(Some(TIMEOUT))?;
    let mut w = conn;
    w.write_all(&line).context("asking the running daemon")?;
    let mut stream = FdStream::new(conn, Some(Instant::now() + TIMEOUT));
    let answer = (stream.line(MAX_REQUEST)).context("waiting for the running daemon's answer")?;
    let offer: HandoverOffer = match decode_response(&answer) {
        Ok(Ok(data)) => serde_json::from_value(data)
            .map_err(|e| anyhow!("the running daemon's answer is not a hand-over: {e}"))?,
        Ok(Err(f)) if f.message.contains("unknown variant `handover`") => bail!(
            "the running daemon cannot hand over (it predates `--takeover`): stop it with \
             `vswitch stop --keep` and start this one without --takeover"
        ),
        Ok(Err(f)) => bail!("the running daemon refused the hand-over: {f}"),
        Err(e) => bail!("the running daemon's answer is malformed: {e}"),
    };
    if offer.format != FORMAT {
        bail!(
            "hand-over format mismatch: the running daemon (pid {}) hands over in format {}, \
             this binary reads format {FORMAT}",
            offer.pid,
            offer.format
        );
    }
    let what = || format!("receiving the state of pid {}", offer.pid);
    let len = u64::from_be_bytes(stream.bytes(8).with_context(what)?.try_into().expect("8"));
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len != offer.bytes || len > MAX_SNAPSHOT {
        bail!(
            "the running daemon announced {} bytes of state and sent {len}",
            offer.bytes
        );
    }
    let json = stream.bytes(len).with_context(what)?;
    let fds = stream.fds(offer.fds).with_context(what)?;
    let snapshot: Snapshot = serde_json::from_slice(&json)
        .map_err(|e| anyhow!("the running daemon's state is malformed: {e}"))?;
    if snapshot.format != FORMAT || snapshot.network != network {
        bail!(
            "the running daemon's state is for another network ({}) than this process's ({})",
            snapshot.network.describe(),
            network.describe()
        );
    }
    Ok((snapshot, fds, offer.pid))
}

/// Everything built from a snapshot, nothing started.
struct Built {
    manager: Manager,
    handoff: Handoff,
    listener: UnixListener,
    datapath_hook: Arc<NatHook>,
    service: NatService,
    dns: Option<(UdpSocket, TcpListener)>,
    upstreams: Vec<std::net::SocketAddr>,
    pool: crate::datapath::relay::RelayPool,
    poll: Duration,
}

/// Builds everything from the old process's snapshot and descriptors, starting nothing: the
/// old process is still serving, and resumes if this fails.
fn build(
    cfg: &Config,
    fd_limit: usize,
    snap: Snapshot,
    mut fds: FdIn,
    mut fast_path: Option<FastPath>,
    mut nl: Netlink,
) -> Result<Built> {
    let budget = FdBudget::new(fd_limit);
    // The fast path carries the host's own frames to containers; the NAT's must be marked.
    natd::mark_gateway_sockets(fds.raw(), cfg.gateway);
    let listener = UnixListener::from(fds.take(snap.control)?);
    let spread_program = take_spread(&snap, &mut fds)?;
    let (fabric, mut datapath) = new_datapath(cfg, spread_program.clone())?;
    let pool = datapath.relays();
    let (nat, service, nat_jobs) =
        restore_nat(cfg, fd_limit, &snap, &mut fds, &fabric, &budget, &pool)?;
    let offloads = offloads(fast_path.as_mut(), snap.tap_index, &mut nl);
    resets(&offloads, &fabric);
    let orphans = match (&offloads, &snap.kernel, &fast_path) {
        (Some(offloads), Some(kernel), Some(fast)) => {
            offloads.adopt(kernel, &nat, &mut fds, &budget, &fast.uplinks())
        }
        (Some(offloads), _, _) => {
            offloads.clear();
            Vec::new()
        }
        _ => Vec::new(),
    };
    let translator = translator(
        cfg,
        fast_path.as_ref(),
        &offloads,
        &budget,
        snap.tap_index,
        &nat,
    );
    match (&translator, &offloads) {
        (Some(t), _) => t.adopt_opened(&nat, &orphans),
        (None, Some(offloads)) => orphans.iter().for_each(|t| offloads.refuse(t, &[])),
        _ => {}
    }
    let hook = nat_hook(cfg, &nat, &nat_jobs, fabric, offloads.clone(), translator);
    datapath.add_port(Arc::new(take_tap(cfg, &snap, &mut fds)?))?;
    let dns = take_dns(&snap, &mut fds)?;
    let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstreams = match dns {
        Some(_) => dns_upstreams(cfg, &host_resolv),
        None => Vec::new(),
    };
    if let Some(path) = &snap.notify_socket {
        systemd::set_socket(path.into());
    }
    let parts = Parts {
        nl,
        spread_program: spread_program.clone(),
        datapath,
        nat,
        nat_jobs,
        host_resolv,
        fast_path,
        offloads,
        budget: budget.clone(),
        tap_index: snap.tap_index,
        last_expiry: snap.last_expiry,
        watchdog: Watchdog::from_env().or(snap.watchdog_usec.map(Watchdog::every)),
        dns: dns.as_ref().map(|_| Arc::new(DnsCounters::default())),
        nat_busy: service.busy(),
    };
    let mut manager = Manager::assemble(cfg, Ipam::new(cfg.subnet, cfg.gateway)?, parts)?;
    take_ports(&mut manager, &snap, &mut fds)?;
    take_pairs(&snap, &mut fds, &budget, &pool)?;
    if fds.unused() > 0 {
        bail!(
            "{} descriptors came that the state does not name",
            fds.unused()
        );
    }
    reserve_own(&budget, &snap, pool.spare_fds());
    let dns_fds = dns.as_ref().map(|(u, t)| [u.as_raw_fd(), t.as_raw_fd()]);
    let handoff = Handoff::new(cfg, listener.as_raw_fd(), dns_fds, spread_program);
    Ok(Built {
        manager,
        handoff,
        listener,
        datapath_hook: hook,
        service,
        dns,
        upstreams,
        pool,
        poll: cfg.poll,
    })
}

/// The old process's fan-out program, if it had one.
fn take_spread(snap: &Snapshot, fds: &mut FdIn) -> Result<Option<Arc<SpreadProgram>>> {
    Ok(match snap.spread {
        Some([prog, mode]) => Some(Arc::new(SpreadProgram::from_fds(
            fds.take(prog)?,
            fds.take(mode)?,
        ))),
        None => None,
    })
}

/// The host's port with the old process's TAP queues and counters.
fn take_tap(cfg: &Config, snap: &Snapshot, fds: &mut FdIn) -> Result<Port> {
    let taps = (snap.tap.iter())
        .map(|&i| Ok(Box::new(Tap::from_fd(fds.take(i)?)) as Box<dyn PortIo>))
        .collect::<std::io::Result<Vec<_>>>()?;
    let tap = tap_port(cfg, taps);
    snap.tap_counters.store(&tap.counters);
    Ok(tap)
}

/// The old process's DNS forwarder sockets, if it ran one.
fn take_dns(snap: &Snapshot, fds: &mut FdIn) -> Result<Option<(UdpSocket, TcpListener)>> {
    Ok(match snap.dns {
        Some([udp, tcp]) => Some((
            UdpSocket::from(fds.take(udp)?),
            TcpListener::from(fds.take(tcp)?),
        )),
        None => None,
    })
}

/// The old process's relayed connections, each with its descriptors leased again.
fn take_pairs(
    snap: &Snapshot,
    fds: &mut FdIn,
    budget: &Arc<FdBudget>,
    pool: &RelayPool,
) -> Result<()> {
    for pair in &snap.pairs {
        let lease = budget.lease_held(TCP_RELAY, Some(pair.owner));
        pool.adopt(pair, fds, move || drop(lease))
            .context("taking over a relayed connection")?;
    }
    Ok(())
}

/// Reserves what the daemon holds open now for itself: all it holds, less what flows and pairs
/// leased and what the ports reserved.
fn reserve_own(budget: &FdBudget, snap: &Snapshot, spare_pipes: usize) {
    let ports: usize = snap.ports.iter().map(|p| p.queues.len() + 1).sum();
    let leased = budget.view().leased;
    budget.reserve(open_now().saturating_sub(leased + ports) + SLACK + spare_pipes);
    tracing::info!(
        old = snap.leased,
        new = budget.view().leased,
        "descriptors leased to traffic by the old process and by this one"
    );
}

/// The NAT's table as the old process left it, and its service with the old sockets.
fn restore_nat(
    cfg: &Config,
    fd_limit: usize,
    snap: &Snapshot,
    fds: &mut FdIn,
    fabric: &Fabric,
    budget: &Arc<FdBudget>,
    pool: &RelayPool,
) -> Result<(Arc<Nat>, NatService, NatMailbox)> {
    let relay_ports = snap.service.relays.iter().map(|(_, port)| *port).collect();
    let nat = Nat::restore(nat_config(cfg, fd_limit, relay_ports), &snap.nat)
        .context("restoring the NAT's table")?;
    let nat = Arc::new(nat);
    let icmp = snap.icmp.map(|i| fds.take(i)).transpose()?;
    let (service, nat_jobs) = NatService::restore(
        nat.clone(),
        fabric.clone(),
        budget.clone(),
        pool.clone(),
        cfg.gateway,
        &snap.service,
        icmp,
        fds,
    )
    .context("restoring the NAT service")?;
    Ok((nat, service, nat_jobs))
}

/// The old process's ports, with their packet sockets, and its forwarding table.
fn take_ports(manager: &mut Manager, snap: &Snapshot, fds: &mut FdIn) -> Result<()> {
    for p in &snap.ports {
        let filter = (manager.fast_path.as_ref())
            .filter(|_| p.record.port < MAX_PORTS)
            .map(|f| f.filter());
        let queues = (p.queues.iter())
            .map(|&i| {
                let socket = PacketSocket::from_fd(fds.take(i)?, filter)?;
                Ok(Box::new(socket) as Box<dyn PortIo>)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        manager
            .take_port(p, queues)
            .with_context(|| format!("taking over port {}", p.record.host_ifname))?;
    }
    let fdb: Vec<FdbEntry> = (snap.fdb.iter())
        .filter_map(|e| {
            Some(FdbEntry {
                mac: e.mac.parse().ok()?,
                port: PortId(e.port),
                age_ms: e.age_ms,
            })
        })
        .collect();
    manager.datapath.switch().restore_fdb(&fdb, now_ms());
    Ok(())
}

impl Manager {
    /// A port the old process served, with its sockets: the same number, address, MAC and
    /// published ports (whose sockets the NAT service took over), its fast-path program
    /// swapped for this process's on the same link.
    fn take_port(&mut self, p: &PortSnap, queues: Vec<Box<dyn PortIo>>) -> Result<(), DaemonError> {
        let r = &p.record;
        let bad = |what: &str| DaemonError::io(what, std::io::Error::other("unreadable"));
        let rec = Recorded::read(r)?.ok_or_else(|| bad("its container"))?;
        let id = rec.id;
        if self.containers.iter().any(|c| c.port == id) {
            return Err(bad("its port number"));
        }
        let undo = self.reserve_recorded(r.ip)?;
        let port = rec.port(r);
        let fast_link = self.undo_on_error(undo, |m, undo| m.install_port(&port, queues, undo))?;
        let table = self.datapath.ports();
        if let Some(Some(installed)) = table.get(usize::from(id.0)) {
            p.counters.store(&installed.counters);
        }
        self.containers.push(rec.container(r, fast_link));
        Ok(())
    }
}
