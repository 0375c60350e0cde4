//! The plug's bookkeeping and rollback, against a fake kernel: no root, no namespaces.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vswitch_nat::{Nat, NatConfig};
use vswitch_switch::{MacAddr, PortId, Switch};

use crate::control::{Plug, PublishSpec, Target};
use crate::daemon::error::DaemonError;
use crate::daemon::ipam::{Ipam, Ipv4Net};
use crate::daemon::manager::Manager;
use crate::daemon::plumbing::{Addressing, NetnsConf, NetnsId, Plumbing};
use crate::datapath::{Datapath, Fabric};
use crate::kernel::epoll::EventFd;
use crate::kernel::netlink::{Link, NetlinkError};
use crate::natd::budget::FdBudget;
use crate::natd::NatService;
use crate::ports::{PortIo, RxBatch};

const OWN: NetnsId = (1, 1);
/// Every link of the fake kernel carries the daemon's mark.
const MARKER: &str = "vswitch /test.sock";
const INITIAL: NetnsId = (1, 2);

/// The steps a fake plug can be told to fail at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    CreateVeth,
    PrepareHost,
    Configure,
    OpenQueues,
}

/// What the fake kernel holds: host-side links by name, and which step fails next.
#[derive(Default)]
struct World {
    links: HashMap<String, u32>,
    next_index: u32,
    fail: Option<Step>,
    configured: Vec<(String, Addressing)>,
    /// The identity of the namespace the next plug opens.
    netns: NetnsId,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<World>>);

impl Fake {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }

    fn check(&self, step: Step) -> Result<(), DaemonError> {
        match self.world().fail {
            Some(s) if s == step => Err(DaemonError::io(
                format!("{step:?}"),
                io::Error::other("injected"),
            )),
            _ => Ok(()),
        }
    }
}

/// A port queue with a real descriptor for epoll, and nothing to read.
struct Queue(EventFd);

impl PortIo for Queue {
    fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
    fn recv_batch(&self, _: &mut RxBatch) -> io::Result<usize> {
        Ok(0)
    }
    fn send(&self, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

impl Plumbing for Fake {
    fn open_netns(&self, target: &Target) -> Result<OwnedFd, DaemonError> {
        match target {
            Target::Pid(0) => Err(DaemonError::NoSuchProcess),
            _ => Ok(File::open("/dev/null").unwrap().into()),
        }
    }

    fn netns_id(&self, _: BorrowedFd<'_>) -> io::Result<NetnsId> {
        Ok(self.world().netns)
    }

    fn link(&mut self, name: &str) -> Result<Option<Link>, NetlinkError> {
        Ok(self.world().links.get(name).map(|&index| Link {
            index,
            name: name.to_string(),
            alias: Some(MARKER.to_string()),
        }))
    }

    fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let names: Vec<String> = self.world().links.keys().cloned().collect();
        Ok(names.iter().filter_map(|n| self.link(n).unwrap()).collect())
    }

    fn create_veth(
        &mut self,
        host: &str,
        _peer: &str,
        _ns: BorrowedFd<'_>,
        _mac: MacAddr,
        _mtu: u32,
    ) -> Result<u32, DaemonError> {
        self.check(Step::CreateVeth)?;
        let mut w = self.world();
        w.next_index += 1;
        let index = 100 + w.next_index;
        w.links.insert(host.to_string(), index);
        Ok(index)
    }

    fn prepare_host_end(&mut self, _: &str, _: u32) -> Result<(), DaemonError> {
        self.check(Step::PrepareHost)
    }

    fn configure_container(
        &mut self,
        _: BorrowedFd<'_>,
        ifname: &str,
        addressing: Addressing,
    ) -> Result<(), DaemonError> {
        self.check(Step::Configure)?;
        (self.world().configured).push((ifname.to_string(), addressing));
        Ok(())
    }

    fn delete_link(&mut self, index: u32) -> Result<(), NetlinkError> {
        self.world().links.retain(|_, i| *i != index);
        Ok(())
    }

    fn open_queues(
        &mut self,
        _: u32,
        queues: usize,
        _: Option<RawFd>,
    ) -> io::Result<Vec<Box<dyn PortIo>>> {
        if self.world().fail == Some(Step::OpenQueues) {
            return Err(io::Error::other("injected"));
        }
        (0..queues)
            .map(|_| Ok(Box::new(Queue(EventFd::new()?)) as Box<dyn PortIo>))
            .collect()
    }

    fn write_resolv(&mut self, _: &Target, _: &str) -> (String, Option<NetnsConf>) {
        ("resolv.conf not written: a test".into(), None)
    }
}

struct Harness {
    manager: Manager,
    fake: Fake,
    _service: NatService,
}

fn harness() -> Harness {
    let net: Ipv4Net = "10.1.1.0/24".parse().unwrap();
    let gateway = net.first_host();
    let switch = Arc::new(Switch::new(vswitch_switch::Config::default()));
    let fabric = Fabric::new(switch, None);
    let datapath = Datapath::new(fabric.clone(), 1, Duration::ZERO, false).unwrap();
    let gateway_mac = MacAddr::from_ipv4(gateway);
    let nat = Arc::new(Nat::new(NatConfig::new(
        gateway,
        gateway_mac.0,
        net.network,
        net.prefix,
        vec![],
    )));
    let budget = FdBudget::new(1024);
    let (service, mailbox) = NatService::new(
        nat.clone(),
        fabric,
        budget.clone(),
        datapath.relays(),
        gateway,
        vec![],
    )
    .unwrap();
    let fake = Fake::default();
    let manager = Manager {
        ipam: Ipam::new(net, gateway).unwrap(),
        mtu: 1500,
        tap_name: "vsw0".into(),
        gateway_mac,
        own_netns: OWN,
        initial_netns: Some(INITIAL),
        plumbing: Box::new(fake.clone()),
        datapath,
        containers: Vec::new(),
        nat,
        nat_jobs: mailbox,
        host_resolv: String::new(),
        last_expiry: 0,
        fast_path: None,
        budget,
        marker: MARKER.into(),
        state_path: state_path(),
        pins_dir: std::env::temp_dir().join("vsw-plug-test-no-pins"),
        tap_index: 0,
        watchdog: None,
        isolate: false,
    };
    Harness {
        manager,
        fake,
        _service: service,
    }
}

/// A state file of the test's own.
fn state_path() -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("vsw-plug-{}-{n}.state", std::process::id()))
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.manager.state_path);
    }
}

/// A plug of `pid`, whose namespace has identity `(0, pid)` unless the test says otherwise.
fn plug_req(pid: u32) -> Plug {
    Plug {
        target: Target::Pid(pid),
        ip: None,
        mac: None,
        ifname: None,
        publish: vec![],
        security: Default::default(),
    }
}

impl Harness {
    fn plug_in(&mut self, netns: NetnsId, req: Plug) -> Result<Ipv4Addr, DaemonError> {
        self.fake.world().netns = netns;
        self.manager.plug(req).map(|view| view.ip)
    }

    fn plug(&mut self, pid: u32) -> Result<Ipv4Addr, DaemonError> {
        self.plug_in((0, u64::from(pid)), plug_req(pid))
    }

    /// Nothing of a failed plug is left: no link, no container, no port, and the address free.
    fn assert_clean(&mut self) {
        assert!(self.fake.world().links.is_empty(), "a veth was left behind");
        assert!(self.manager.containers.is_empty());
        assert!(self
            .manager
            .datapath
            .ports()
            .iter()
            .flatten()
            .next()
            .is_none());
        assert_eq!(self.manager.datapath.switch().port_info(PortId(1)), None);
        assert_eq!(
            self.manager.budget.view().reserved,
            0,
            "descriptors still kept"
        );
        let ip = self.manager.ipam.reserve_where(None, |_| true).unwrap();
        assert_eq!(
            ip,
            Ipv4Addr::new(10, 1, 1, 2),
            "the address was not released"
        );
        self.manager.ipam.release(ip);
    }
}

#[test]
fn a_plug_makes_a_port_and_an_unplug_removes_it() {
    let mut h = harness();
    assert_eq!(h.plug(10).unwrap(), Ipv4Addr::new(10, 1, 1, 2));
    assert_eq!(h.plug(11).unwrap(), Ipv4Addr::new(10, 1, 1, 3));
    assert_eq!(h.fake.world().links.len(), 2);
    let configured = h.fake.world().configured.clone();
    assert_eq!(configured[0].0, "eth0");
    assert_eq!(configured[0].1.gateway, Ipv4Addr::new(10, 1, 1, 1));
    assert_eq!(configured[0].1.prefix, 24);
    let info = h.manager.datapath.switch().port_info(PortId(1)).unwrap();
    assert_eq!(info.mac, MacAddr([2, 0x76, 10, 1, 1, 2]));

    let view = h.manager.unplug(&Target::Pid(10)).unwrap();
    assert_eq!(view.ip, Ipv4Addr::new(10, 1, 1, 2));
    h.manager.unplug(&Target::Pid(11)).unwrap();
    h.assert_clean();
    let err = h.manager.unplug(&Target::Pid(11)).unwrap_err();
    assert!(matches!(err, DaemonError::NotPlugged), "{err}");
}

#[test]
fn a_plug_that_fails_half_way_leaves_nothing_behind() {
    for step in [
        Step::CreateVeth,
        Step::PrepareHost,
        Step::Configure,
        Step::OpenQueues,
    ] {
        let mut h = harness();
        h.fake.world().fail = Some(step);
        let err = h.plug(10).unwrap_err();
        assert!(err.to_string().contains("injected"), "{step:?}: {err}");
        h.assert_clean();
        // And the next plug works.
        h.fake.world().fail = None;
        assert_eq!(h.plug(10).unwrap(), Ipv4Addr::new(10, 1, 1, 2), "{step:?}");
    }
}

#[test]
fn a_host_port_in_use_fails_the_plug_before_anything_exists() {
    let mut h = harness();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut req = plug_req(10);
    req.publish = vec![format!("127.0.0.1:{port}:80")
        .parse::<PublishSpec>()
        .unwrap()];
    let err = h.plug_in((0, 10), req).unwrap_err();
    assert!(
        matches!(err, DaemonError::HostPortInUse { port: p, .. } if p == port),
        "{err}"
    );
    h.assert_clean();
}

#[test]
fn the_daemons_and_the_hosts_namespaces_are_refused() {
    let mut h = harness();
    let err = h.plug_in(OWN, plug_req(10)).unwrap_err();
    assert!(matches!(err, DaemonError::DaemonNamespace), "{err}");
    let err = h.plug_in(INITIAL, plug_req(1)).unwrap_err();
    assert!(matches!(err, DaemonError::HostNamespace), "{err}");
    assert!(err.to_string().contains("pid 1"), "{err}");
    let err = h.plug_in((0, 0), plug_req(0)).unwrap_err();
    assert!(matches!(err, DaemonError::NoSuchProcess), "{err}");
    h.assert_clean();
}

#[test]
fn a_namespace_is_plugged_once_unless_its_record_is_stale() {
    let mut h = harness();
    h.plug(10).unwrap();
    // Another process of the same container.
    let err = h.plug_in((0, 10), plug_req(12)).unwrap_err();
    assert!(matches!(err, DaemonError::AlreadyPlugged { .. }), "{err}");
    // The container died and the kernel reused its namespace's identity for a new one before
    // the lifecycle tick noticed: the stale record gives way.
    h.fake.world().links.clear();
    assert_eq!(
        h.plug_in((0, 10), plug_req(13)).unwrap(),
        Ipv4Addr::new(10, 1, 1, 2)
    );
    assert_eq!(h.manager.containers.len(), 1);
    assert_eq!(h.manager.containers[0].target, Target::Pid(13));
}

#[test]
fn automatic_addresses_skip_a_mac_taken_by_a_manual_plug() {
    let mut h = harness();
    let mut manual = plug_req(10);
    manual.ip = Some(Ipv4Addr::new(10, 1, 1, 5));
    // The MAC 10.1.1.6 would get.
    manual.mac = Some(MacAddr([2, 0x76, 10, 1, 1, 6]));
    h.plug_in((0, 10), manual).unwrap();
    let got: Vec<Ipv4Addr> = (11..=15).map(|pid| h.plug(pid).unwrap()).collect();
    let want: Vec<Ipv4Addr> = [2, 3, 4, 7, 8]
        .into_iter()
        .map(|d| Ipv4Addr::new(10, 1, 1, d))
        .collect();
    assert_eq!(got, want);
    // An explicit address whose derived MAC is taken is refused, and released.
    let mut clash = plug_req(16);
    clash.ip = Some(Ipv4Addr::new(10, 1, 1, 6));
    let err = h.plug_in((0, 16), clash).unwrap_err();
    assert!(matches!(err, DaemonError::MacInUse(_)), "{err}");
    assert!(!h.fake.world().links.contains_key("vsw-16"));
    assert_eq!(h.plug(17).unwrap(), Ipv4Addr::new(10, 1, 1, 9));
}

#[test]
fn a_plug_gives_the_port_its_security_and_the_state_keeps_it() {
    use crate::control::SecurityOpts;
    use vswitch_switch::PortPolicy;
    let mut h = harness();
    h.plug(10).unwrap();
    let mut req = plug_req(11);
    req.security = SecurityOpts {
        isolated: true,
        allow_ips: vec!["192.168.9.0/24".parse().unwrap()],
        allow_ethertypes: vec![0x86dd],
        ..SecurityOpts::default()
    };
    h.plug_in((0, 11), req).unwrap();
    let mut trusted = plug_req(12);
    trusted.security.trusted = true;
    h.plug_in((0, 12), trusted).unwrap();
    let switch = h.manager.datapath.switch();
    assert_eq!(switch.port_policy(PortId(1)), Some(PortPolicy::default()));
    let widened = switch.port_policy(PortId(2)).unwrap();
    assert!(widened.isolated && widened.allow_ethertypes == [0x86dd]);
    assert!(switch.port_policy(PortId(3)).unwrap().trusted);
    // IPv6 stays on only where the switch lets it through.
    let ipv6: Vec<bool> = (h.fake.world().configured.iter())
        .map(|(_, a)| a.ipv6)
        .collect();
    assert_eq!(ipv6, [false, true, true]);
    // `ls` shows it; the state file keeps it (and only where it is not the default).
    let views = h.manager.ls();
    assert_eq!(views[2].security.short(), "on+allow,isolated");
    assert_eq!(views[2].security.allow_ip, ["192.168.9.0/24"]);
    assert_eq!(views[3].security.max_macs, 256);
    let state = h.manager.state();
    assert!(state.ports[0].security.is_default());
    assert!(state.ports[1].security.isolated);
    assert_eq!(state.ports[1].security.allow_ethertype, ["0x86dd"]);
    assert!(state.ports[2].security.trusted);
}

#[test]
fn run_isolate_isolates_every_container() {
    let mut h = harness();
    h.manager.isolate = true;
    h.plug(10).unwrap();
    let policy = h.manager.datapath.switch().port_policy(PortId(1)).unwrap();
    assert!(policy.isolated && !policy.trusted);
    assert!(h.manager.state().ports[0].security.isolated);
}
