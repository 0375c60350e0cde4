//! Checks of the test harness itself (no daemon needed): the JSON helpers, the root check,
//! and that namespaces and container processes are cleaned up, also when a test panics.

mod common;

use common::{command, run, Container, JsonExt, NetNs};
use std::path::Path;

fn netns_exists(name: &str) -> bool {
    run(command("ip", &["netns", "list"]))
        .ok()
        .stdout
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

fn process_alive(pid: u32) -> bool {
    // A reaped process has no /proc entry; a zombie would still have one but Drop reaps.
    Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn json_fields_that_must_be_present_panic_with_the_object() {
    let v = common::json_array(
        r#" [{"port": 1, "kind": "container", "pid": 42, "netns": null, "rx_bytes": 52428800}] "#,
        "ls --json",
    );
    assert_eq!(v[0].num("port"), 1);
    assert_eq!(v[0].str("kind"), "container");
    assert_eq!(v[0].num("rx_bytes"), 52_428_800);
    assert!(v[0]["netns"].is_null() && v[0]["missing"].is_null());
    for bad in [
        &(|| {
            v[0].num("kind");
        }) as &(dyn Fn() + std::panic::RefUnwindSafe),
        &|| {
            v[0].str("pid");
        },
        &|| {
            v[0].num("missing");
        },
    ] {
        let err = std::panic::catch_unwind(bad).expect_err("a wrong field must panic");
        let msg = err.downcast_ref::<String>().expect("a formatted message");
        assert!(msg.contains(r#""kind":"container""#), "{msg}");
    }
    assert!(std::panic::catch_unwind(|| common::json_array("{\"a\":1}", "x")).is_err());
    assert!(common::parse_json("{\"a\":1} x").is_err());
}

#[test]
fn default_mac_is_02_76_and_the_address() {
    assert_eq!(common::default_mac("10.1.1.2"), "02:76:0a:01:01:02");
    assert_eq!(common::default_mac("192.168.255.254"), "02:76:c0:a8:ff:fe");
}

#[test]
fn runs_as_root() {
    // Fails (does not skip) when not root: the e2e suite needs root.
    common::require_root();
}

#[test]
fn namespaces_and_containers_are_created_and_removed() {
    let name = common::unique_name();
    let ns = NetNs::new(&name);
    assert!(netns_exists(&name));
    assert_eq!(ns.links(), vec!["lo".to_string()]);

    let plain = Container::plain();
    let runtime = Container::runtime_like();
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    for c in [&plain, &runtime] {
        assert_ne!(std::fs::read_link(c.netns_path()).unwrap(), own);
        assert_eq!(c.links(), vec!["lo".to_string()]);
    }
    // The runtime-like container's process lives in its own pid namespace.
    let own_pid_ns = std::fs::read_link("/proc/self/ns/pid").unwrap();
    let inner = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", runtime.pid))
        .unwrap()
        .trim()
        .to_string();
    assert_ne!(
        std::fs::read_link(format!("/proc/{inner}/ns/pid")).unwrap(),
        own_pid_ns
    );

    let pids = [plain.pid, runtime.pid, inner.parse().unwrap()];
    drop(plain);
    drop(runtime);
    drop(ns);
    assert!(!netns_exists(&name), "namespace {name} left behind");
    // The runtime-like container's inner process dies with it (--kill-child).
    let gone = common::poll(common::DEADLINE, || {
        pids.iter().all(|&p| !process_alive(p)).then_some(())
    });
    assert!(gone.is_some(), "container processes left behind: {pids:?}");
}

#[test]
fn cleanup_also_happens_when_a_test_panics() {
    let name = common::unique_name();
    let mut pid = 0;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ns = NetNs::new(&name);
        let c = Container::plain();
        pid = c.pid;
        panic!("a failing test");
    }));
    assert!(result.is_err());
    assert!(!netns_exists(&name), "namespace {name} left behind");
    assert!(!process_alive(pid), "container {pid} left behind");
}

#[test]
fn the_wan_is_linked_to_the_host_and_removed_with_its_servers() {
    use common::wan::{Wan, HOST_WAN_IP, UDP_SERVER, WAN_IP};
    let host = NetNs::new(&common::unique_name());
    let wan = Wan::new();
    wan.link(&host, &["198.51.100.3"]);
    assert!(
        host.links().contains(&"wan0".to_string()),
        "{:?}",
        host.links()
    );
    for ip in [WAN_IP, "198.51.100.3"] {
        assert!(host.ping(ip), "the host cannot ping the wan's {ip}");
    }
    assert!(wan.ns.ping(HOST_WAN_IP), "the wan cannot ping the host");

    // A server started in the wan runs in its own process group, killed with its children.
    let server = wan.python(UDP_SERVER, &["7007", "echo"]);
    let pid = server.pid();
    assert!(process_alive(pid));
    let name = wan.ns.name.clone();
    drop(server);
    assert!(!process_alive(pid), "wan server {pid} left behind");
    drop(wan);
    assert!(!netns_exists(&name), "wan namespace {name} left behind");
    assert_eq!(
        host.links(),
        vec!["lo".to_string()],
        "the veth outlived the wan"
    );
}
