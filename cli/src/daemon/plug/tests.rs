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

use crate::control::{Attachment, Plug, PublishSpec, Selector, Target};
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
    /// Every namespace opened, and every resolv.conf written, in order.
    opened: Vec<Target>,
    resolv_written: Vec<Target>,
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
        self.world().opened.push(target.clone());
        match target {
            Target::Pid(0) => Err(DaemonError::NoSuchProcess),
            Target::Netns(path) if path.ends_with("gone") => Err(DaemonError::NoSuchNamespace),
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
            ..Link::default()
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

    fn write_resolv(&mut self, target: &Target, _: &str) -> (String, Option<NetnsConf>) {
        self.world().resolv_written.push(target.clone());
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
        offloads: None,
        last_report: 0,
        budget,
        marker: MARKER.into(),
        state_path: state_path(),
        pins_dir: std::env::temp_dir().join("vsw-plug-test-no-pins"),
        tap_index: 0,
        watchdog: None,
        captures: Vec::new(),
        tally: Default::default(),
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
    Plug::new(Target::Pid(pid))
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

/// A runtime's plug of namespace file `netns` (identity `(0, n)`) as `id`'s `eth0` in `net`.
fn cni_req(netns: &str, id: &str, net: &str) -> Plug {
    Plug {
        container_id: Some(id.parse().unwrap()),
        network: Some(net.parse().unwrap()),
        resolv: false,
        ..Plug::new(Target::Netns(netns.into()))
    }
}

fn attachment(id: &str) -> Attachment {
    Attachment {
        container_id: id.parse().unwrap(),
        ifname: "eth0".parse().unwrap(),
    }
}

#[test]
fn an_attachment_is_named_by_its_key_and_writes_no_resolv_conf() {
    let mut h = harness();
    h.fake.world().netns = (0, 1);
    let view = h
        .manager
        .plug(cni_req("/run/netns/netns-0b6c", "ctr-a", "vswitch"))
        .unwrap();
    let want = crate::daemon::names::attachment_ifname(&attachment("ctr-a"));
    assert_eq!(view.host_ifname, want);
    assert!(h.fake.world().links.contains_key(&want));
    assert_eq!(view.container_id.as_deref(), Some("ctr-a"));
    assert_eq!(view.network.as_deref(), Some("vswitch"));
    assert!(view.resolv.unwrap().contains("runtime"));
    assert!(h.fake.world().resolv_written.is_empty());
    assert_eq!(h.manager.stats().subnet.free, 252);
    // A plug by hand still writes one.
    h.plug(10).unwrap();
    assert_eq!(h.fake.world().resolv_written, vec![Target::Pid(10)]);
    assert_eq!(h.manager.ls()[1].container_id.as_deref(), Some("ctr-a"));
}

#[test]
fn an_attachment_is_plugged_once_and_removed_by_its_key_without_its_namespace() {
    let mut h = harness();
    h.fake.world().netns = (0, 1);
    let ip = (h.manager.plug(cni_req("/run/netns/a", "ctr-a", "n")))
        .unwrap()
        .ip;
    // The same attachment again in the same namespace, even by another path, is refused.
    let err = (h.manager.plug(cni_req("/run/netns/b", "ctr-a", "n"))).unwrap_err();
    assert!(matches!(err, DaemonError::AlreadyPlugged { .. }), "{err}");
    assert_eq!(h.manager.containers.len(), 1);

    // The namespace is gone by the time the runtime removes the attachment: the daemon must not
    // need it.
    h.manager.containers[0].target = Target::Netns("/run/netns/gone".into());
    h.fake.world().opened.clear();
    let view = h.manager.unplug_attachment(&attachment("ctr-a")).unwrap();
    assert_eq!(view.ip, ip);
    assert!(h.fake.world().opened.is_empty(), "the namespace was opened");
    h.assert_clean();
    let err = h
        .manager
        .unplug_attachment(&attachment("ctr-a"))
        .unwrap_err();
    assert!(matches!(err, DaemonError::NotPlugged), "{err}");
}

#[test]
fn an_attachment_added_into_another_namespace_replaces_the_old_port() {
    let mut h = harness();
    h.fake.world().netns = (0, 1);
    h.manager
        .plug(cni_req("/run/netns/a", "ctr-a", "n"))
        .unwrap();
    let by = Selector::Attachment(attachment("ctr-a"));
    assert_eq!(
        h.manager.inspect(&by).unwrap().ip,
        Ipv4Addr::new(10, 1, 1, 2)
    );
    // The container's namespace was replaced without a DEL, and the kernel has not yet
    // destroyed the old one (its veth is still there): the runtime's ADD wins.
    h.fake.world().netns = (0, 2);
    let view = h
        .manager
        .plug(cni_req("/run/netns/b", "ctr-a", "n"))
        .unwrap();
    assert_eq!(
        view.ip,
        Ipv4Addr::new(10, 1, 1, 2),
        "the old address was released"
    );
    assert_eq!(h.manager.containers.len(), 1);
    assert_eq!(
        h.fake.world().links.len(),
        1,
        "the old veth was not deleted"
    );
    // inspect reports a port whose veth is gone as not plugged, and releases it.
    h.fake.world().links.clear();
    let err = h.manager.inspect(&by).unwrap_err();
    assert!(matches!(err, DaemonError::NotPlugged), "{err}");
    h.assert_clean();
}

#[test]
fn an_attachment_is_kept_in_the_state_for_the_next_daemon() {
    let mut h = harness();
    h.fake.world().netns = (0, 1);
    h.manager
        .plug(cni_req("/run/netns/a", "ctr-a", "n"))
        .unwrap();
    h.plug(10).unwrap();
    let saved = crate::daemon::state::load(&h.manager.state_path)
        .unwrap()
        .unwrap();
    let (cni, by_hand) = (&saved.ports[0], &saved.ports[1]);
    assert_eq!(cni.container_id.as_deref(), Some("ctr-a"));
    assert_eq!(cni.network.as_deref(), Some("n"));
    assert_eq!(
        (by_hand.container_id.as_ref(), by_hand.network.as_ref()),
        (None, None)
    );
    // A plug by hand's record has no such fields at all: files without attachments stay as
    // they were.
    let text = std::fs::read_to_string(&h.manager.state_path).unwrap();
    assert_eq!(text.matches("container_id").count(), 1, "{text}");
}

#[test]
fn a_failed_attachment_plug_leaves_nothing_and_can_be_retried() {
    let mut h = harness();
    h.fake.world().netns = (0, 1);
    h.fake.world().fail = Some(Step::Configure);
    let err = h
        .manager
        .plug(cni_req("/run/netns/a", "ctr-a", "n"))
        .unwrap_err();
    assert!(err.to_string().contains("injected"), "{err}");
    h.assert_clean();
    h.fake.world().fail = None;
    h.manager
        .plug(cni_req("/run/netns/a", "ctr-a", "n"))
        .unwrap();
    assert_eq!(h.manager.containers.len(), 1);
}

#[test]
fn gc_removes_only_the_networks_attachments_that_are_not_valid() {
    let mut h = harness();
    for (n, (id, net)) in [("a", "n1"), ("b", "n1"), ("c", "n1"), ("d", "n2")]
        .into_iter()
        .enumerate()
    {
        h.fake.world().netns = (0, n as u64 + 1);
        (h.manager
            .plug(cni_req(&format!("/run/netns/{id}"), id, net)))
        .unwrap();
    }
    h.plug(10).unwrap();
    let removed = h.manager.gc(&"n1".parse().unwrap(), &[attachment("a")]);
    let mut ids: Vec<String> = removed.into_iter().filter_map(|v| v.container_id).collect();
    ids.sort();
    assert_eq!(ids, ["b", "c"]);
    let left: Vec<Option<String>> = h.manager.ls()[1..]
        .iter()
        .map(|v| v.container_id.clone())
        .collect();
    assert_eq!(left, [Some("a".into()), Some("d".into()), None]);
    assert_eq!(h.fake.world().links.len(), 3);
    assert_eq!(h.manager.stats().subnet.free, 250);
    // Nothing valid: every attachment of n2 goes, the plug by hand stays.
    assert_eq!(h.manager.gc(&"n2".parse().unwrap(), &[]).len(), 1);
    assert_eq!(h.manager.containers.len(), 2);
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
