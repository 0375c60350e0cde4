//! End-to-end tests of vswitch as a CNI plugin (issue 14), as root: the binary is driven
//! exactly as the specification says (the `CNI_*` variables and the configuration on stdin,
//! see `common::cni`), against a daemon in a sandbox namespace that plays the host, with
//! container namespaces each test creates (`ip netns add`). Every verb, every capability, the
//! error objects, DEL's idempotence, GC, and 50 ADD/DEL cycles that leave nothing behind.

mod common;

use common::cni::{
    assert_nothing_left, conf, conf_for, invoke, invoke_with, ports, stats, with, with_prev, Attach,
};
use common::{
    command, exists, poll, run, unique_name, NetNs, Proc, Sandbox, SandboxOptions, TempDir, GATEWAY,
};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// A container namespace and its attachment (container id unique per test).
fn container(id: &str) -> (NetNs, Attach) {
    let ns = NetNs::new(&unique_name());
    let a = Attach::new(&format!("{id}-{}", ns.name), &ns.path());
    (ns, a)
}

/// `ip -j ARGS` inside `ns`.
fn ip_json(ns: &NetNs, args: &[&str]) -> Value {
    let mut full = vec!["-n", ns.name.as_str(), "-j"];
    full.extend_from_slice(args);
    serde_json::from_str(&run(command("ip", &full)).ok().stdout).unwrap()
}

/// The port of an attachment in `vswitch ls --json`.
fn port_of(sb: &Sandbox, id: &str) -> Option<Value> {
    ports(sb)
        .into_iter()
        .find(|p| p["container_id"].as_str() == Some(id))
}

/// Asserts what ADD made inside the namespace: `ifname` up with `mac` and `ip/24`, and the
/// default route via the gateway on it.
#[track_caller]
fn assert_configured(ns: &NetNs, ifname: &str, ip: &str, mac: &str) {
    let link = &ip_json(ns, &["addr", "show", "dev", ifname])[0];
    assert_eq!(link["address"], mac, "{link}");
    assert!(link["flags"].to_string().contains("\"UP\""), "{link}");
    let addr = (link["addr_info"].as_array().unwrap().iter())
        .find(|a| a["family"] == "inet")
        .unwrap_or_else(|| panic!("no IPv4 address on {ifname}: {link}"));
    assert_eq!(
        (addr["local"].as_str(), addr["prefixlen"].as_u64()),
        (Some(ip), Some(24))
    );
    let routes = ip_json(ns, &["-4", "route", "show", "default"]);
    assert_eq!(routes[0]["gateway"], GATEWAY, "{routes}");
    assert_eq!(routes[0]["dev"], ifname, "{routes}");
}

#[test]
fn version_reports_every_supported_version() {
    common::require_root();
    for asked in ["0.4.0", "1.0.0", "1.1.0", "1.2.0"] {
        let out = invoke(
            &[("CNI_COMMAND", "VERSION")],
            &json!({ "cniVersion": asked }).to_string(),
        );
        assert_eq!(
            out.ok(),
            json!({"cniVersion": asked, "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]})
        );
    }
}

#[test]
fn add_check_del_in_every_version() {
    let sb = Sandbox::start();
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let (ns, a) = container("every");
        let conf = conf(&sb, version);
        let result = a.add(&conf).ok();

        // The result, in this version's terms.
        assert_eq!(result["cniVersion"], version);
        let ifaces = result["interfaces"].as_array().unwrap();
        assert_eq!(ifaces.len(), 2, "{result}");
        let host = ifaces[0]["name"].as_str().unwrap().to_string();
        assert!(host.starts_with("vsw") && host.len() == 15, "{host}");
        assert!(ifaces[0].get("sandbox").is_none(), "{result}");
        assert_eq!(ifaces[1]["name"], "eth0");
        assert_eq!(ifaces[1]["mac"], "02:76:0a:01:01:02");
        assert_eq!(ifaces[1]["sandbox"], ns.path());
        assert_eq!(
            ifaces[1].get("mtu").cloned(),
            (version == "1.1.0").then(|| json!(1500)),
            "{result}"
        );
        let ip = &result["ips"][0];
        assert_eq!(ip["address"], "10.1.1.2/24");
        assert_eq!(ip["gateway"], GATEWAY);
        assert_eq!(ip["interface"], 1);
        assert_eq!(
            ip.get("version").cloned(),
            (version == "0.4.0").then(|| json!("4")),
            "{result}"
        );
        assert_eq!(
            result["routes"],
            json!([{"dst": "0.0.0.0/0", "gw": GATEWAY}])
        );
        assert_eq!(result["dns"], json!({"nameservers": [GATEWAY]}));

        // What it made: the interface in the namespace, the port in the daemon.
        assert_configured(&ns, "eth0", "10.1.1.2", "02:76:0a:01:01:02");
        assert!(
            ns.ping(GATEWAY),
            "{version}: the container cannot ping the gateway"
        );
        assert!(sb.host_links().contains(&host), "{:?}", sb.host_links());
        let port = port_of(&sb, &a.id).expect("the attachment's port in ls");
        assert_eq!(port["network"], "vswitch");
        assert_eq!(port["host_ifname"], host.as_str());
        assert_eq!(port["netns"], ns.path());
        let table = sb.vswitch(&["ls"]).ok().stdout;
        assert!(table.contains(&format!("id {}", &a.id[..12])), "{table}");
        // The runtime writes resolv.conf, not the plugin.
        assert!(!exists(&Path::new("/etc/netns").join(&ns.name)));

        a.check(&conf, &result).ok_silent();
        a.del(&conf, &result).ok_silent();
        assert_nothing_left(&sb);
        assert_eq!(ns.links(), ["lo"], "the container end outlived DEL");
        // DEL again, with and without prevResult and CNI_NETNS.
        a.del(&conf, &result).ok_silent();
        let mut bare = a.clone();
        bare.netns = String::new();
        bare.del(&conf, &Value::Null).ok_silent();
    }
}

#[test]
fn capabilities_ips_mac_dns_and_port_mappings() {
    let sb = Sandbox::start();
    let (ns, a) = container("caps");
    let conf = with(
        conf(&sb, "1.0.0"),
        json!({
            "capabilities": {"portMappings": true, "ips": true, "mac": true, "dns": true},
            "dns": {"search": ["conf.test"], "options": ["ndots:3"], "domain": "conf.test"},
            "runtimeConfig": {
                "ips": ["10.1.1.50/24"],
                "mac": "02:00:00:aa:bb:cc",
                "dns": {"servers": ["10.1.1.1"], "searches": ["svc.test"], "options": ["ndots:5"]},
                "portMappings": [
                    {"hostPort": 18080, "containerPort": 8000, "protocol": "tcp", "hostIP": ""},
                    {"hostPort": 15353, "containerPort": 5353, "protocol": "udp"}
                ]
            }
        }),
    );
    let result = a.add(&conf).ok();
    assert_eq!(result["ips"][0]["address"], "10.1.1.50/24");
    assert_eq!(result["interfaces"][1]["mac"], "02:00:00:aa:bb:cc");
    assert_eq!(
        result["dns"],
        json!({"nameservers": ["10.1.1.1"], "domain": "conf.test",
               "search": ["svc.test"], "options": ["ndots:5"]})
    );
    assert_configured(&ns, "eth0", "10.1.1.50", "02:00:00:aa:bb:cc");
    let port = port_of(&sb, &a.id).unwrap();
    assert_eq!(port["publish"], json!(["18080:8000/tcp", "15353:5353/udp"]));

    // The published ports, from the host's loopback into the container.
    let server = Proc::spawn_ready(ns.cmd("python3", &["-c", ECHO_SERVER, "8000", "5353"]));
    let reply = run(sb.host_cmd("python3", &["-c", ECHO_CLIENT, "18080", "15353"])).ok();
    assert_eq!(
        reply.stdout.trim(),
        "tcp:hello udp:hello",
        "{}",
        reply.describe()
    );
    drop(server);

    a.del(&conf, &result).ok_silent();
    assert_nothing_left(&sb);
    // The host ports are free again (the NAT service closes them a moment after the unplug).
    let free = poll(Duration::from_secs(3), || {
        run(sb.host_cmd("python3", &["-c", BIND_BOTH, "18080", "15353"]))
            .success()
            .then_some(())
    });
    assert!(free.is_some(), "the published ports outlived DEL");

    // Without the capabilities: args.cni.ips, then CNI_ARGS IP and MAC.
    let plain = common::cni::conf(&sb, "1.0.0");
    let args_conf = with(
        plain.clone(),
        json!({"args": {"cni": {"ips": ["10.1.1.60"]}}}),
    );
    let result = a.add(&args_conf).ok();
    assert_eq!(result["ips"][0]["address"], "10.1.1.60/24");
    a.del(&args_conf, &result).ok_silent();
    let mut env = a.env("ADD");
    env.retain(|(k, _)| *k != "CNI_ARGS");
    env.push((
        "CNI_ARGS",
        "IgnoreUnknown=1;IP=10.1.1.70/24;MAC=02:00:00:00:00:70",
    ));
    let result = invoke(&env, &plain.to_string()).ok();
    assert_eq!(result["ips"][0]["address"], "10.1.1.70/24");
    assert_eq!(result["interfaces"][1]["mac"], "02:00:00:00:00:70");
    a.del(&plain, &result).ok_silent();
    assert_nothing_left(&sb);
}

/// Echo servers on TCP argv[1] and UDP argv[2]; prints `ready`.
const ECHO_SERVER: &str = r#"
import socket, sys, threading
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", int(sys.argv[1]))); t.listen(8)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", int(sys.argv[2])))
def udp():
    while True:
        data, peer = u.recvfrom(2048); u.sendto(data, peer)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, _ = t.accept(); c.sendall(c.recv(2048)); c.close()
"#;

/// Sends `hello` to 127.0.0.1 over TCP argv[1] and UDP argv[2]; prints both answers.
const ECHO_CLIENT: &str = r#"
import socket, sys
t = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
t.sendall(b"hello"); a = t.recv(100).decode()
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(10)
u.sendto(b"hello", ("127.0.0.1", int(sys.argv[2]))); b = u.recv(100).decode()
print("tcp:%s udp:%s" % (a, b))
"#;

/// Listens on TCP argv[1] and binds UDP argv[2] on all addresses (fails if either is taken;
/// the echo's connection in TIME_WAIT on the TCP port does not count, as for any server).
const BIND_BOTH: &str = r#"
import socket, sys
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", int(sys.argv[1]))); t.listen(1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", int(sys.argv[2])))
"#;

#[test]
fn chained_after_another_plugin_it_extends_the_previous_result() {
    let sb = Sandbox::start();
    let (ns, a) = container("chain");
    let prev = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "dummy0", "sandbox": ns.path()}],
        "ips": [{"address": "192.0.2.7/32", "interface": 0}],
        "dns": {"nameservers": ["192.0.2.53"], "search": ["first.test"]},
        "x-first-plugin": {"kept": true}
    });
    let conf = conf(&sb, "1.1.0");
    let result = a.run("ADD", &with_prev(&conf, &prev)).ok();
    assert_eq!(result["interfaces"][0], prev["interfaces"][0]);
    assert_eq!(result["interfaces"][2]["name"], "eth0");
    assert_eq!(result["ips"][0], prev["ips"][0]);
    assert_eq!(result["ips"][1]["address"], "10.1.1.2/24");
    assert_eq!(result["ips"][1]["interface"], 2);
    assert_eq!(result["dns"]["nameservers"], json!(["192.0.2.53", GATEWAY]));
    assert_eq!(result["dns"]["search"], json!(["first.test"]));
    assert_eq!(result["x-first-plugin"], json!({"kept": true}));
    // CHECK and DEL take the whole chain's result.
    a.check(&conf, &result).ok_silent();
    a.del(&conf, &result).ok_silent();
    assert_nothing_left(&sb);
}

#[test]
fn check_finds_what_is_missing() {
    let sb = Sandbox::start();
    let (ns, a) = container("check");
    let conf = conf(&sb, "1.0.0");
    let result = a.add(&conf).ok();
    a.check(&conf, &result).ok_silent();

    // No prevResult: CHECK cannot know what to expect.
    assert_eq!(a.run("CHECK", &conf).error_code(), 7);
    // A result that is not this attachment's.
    let mut other = result.clone();
    other["ips"][0]["address"] = json!("10.1.1.9/24");
    let out = a.check(&conf, &other);
    assert_eq!(out.error_code(), 110, "{}", out.describe());

    // The route, then the address, taken away inside the container.
    let ipn = |args: &[&str]| {
        let mut full = vec!["-n", ns.name.as_str()];
        full.extend_from_slice(args);
        run(command("ip", &full)).ok();
    };
    ipn(&["route", "del", "default"]);
    let out = a.check(&conf, &result);
    assert_eq!(out.error_code(), 110);
    assert!(
        out.error()["details"].to_string().contains("route"),
        "{}",
        out.describe()
    );
    ipn(&["route", "add", "default", "via", GATEWAY]);
    a.check(&conf, &result).ok_silent();
    ipn(&["addr", "del", "10.1.1.2/24", "dev", "eth0"]);
    let out = a.check(&conf, &result);
    assert_eq!(out.error_code(), 110);
    assert!(
        out.error()["details"].to_string().contains("10.1.1.2"),
        "{}",
        out.describe()
    );

    // The daemon's port removed behind the runtime's back: the container is unknown.
    sb.vswitch(&["unplug", "--netns", &ns.path()]).ok();
    assert_eq!(a.check(&conf, &result).error_code(), 3);
    a.del(&conf, &result).ok_silent();
    assert_nothing_left(&sb);
}

#[test]
fn bad_configurations_and_environments_get_error_objects() {
    let sb = Sandbox::start();
    let (ns, a) = container("errors");
    let good = conf(&sb, "1.0.0");
    let remove = |key: &str| {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(key);
        c.to_string()
    };
    let add = |conf: String| a.run_raw("ADD", &conf);
    let cases: Vec<(&str, u64, String)> = vec![
        ("not JSON", 6, "{\"cniVersion\": ".to_string()),
        ("no name", 7, remove("name")),
        ("no type", 7, remove("type")),
        ("no cniVersion", 1, remove("cniVersion")),
        (
            "an old version",
            1,
            with(good.clone(), json!({"cniVersion": "0.3.1"})).to_string(),
        ),
        (
            "a future version",
            1,
            with(good.clone(), json!({"cniVersion": "2.0.0"})).to_string(),
        ),
        (
            "a bad name",
            7,
            with(good.clone(), json!({"name": "no spaces"})).to_string(),
        ),
        (
            "a subnet the daemon does not serve",
            7,
            with(good.clone(), json!({"subnet": "10.99.0.0/24"})).to_string(),
        ),
        (
            "an address outside the subnet",
            7,
            with(
                good.clone(),
                json!({"runtimeConfig": {"ips": ["10.2.2.2/24"]}}),
            )
            .to_string(),
        ),
        (
            "an IPv6 address",
            2,
            with(
                good.clone(),
                json!({"runtimeConfig": {"ips": ["2001:db8::2/64"]}}),
            )
            .to_string(),
        ),
        (
            "an SCTP port",
            2,
            with(
                good.clone(),
                json!({"runtimeConfig": {"portMappings": [
                    {"hostPort": 9, "containerPort": 9, "protocol": "sctp"}
                ]}}),
            )
            .to_string(),
        ),
        (
            "the gateway's address",
            101,
            with(
                good.clone(),
                json!({"runtimeConfig": {"ips": ["10.1.1.1/24"]}}),
            )
            .to_string(),
        ),
    ];
    for (what, code, stdin) in cases {
        let out = add(stdin);
        assert_eq!(out.error_code(), code, "{what}: {}", out.describe());
        assert_nothing_left(&sb);
    }

    // The environment.
    let good_text = good.to_string();
    for (what, drop, value) in [
        ("no CNI_CONTAINERID", "CNI_CONTAINERID", None),
        ("no CNI_NETNS", "CNI_NETNS", None),
        ("no CNI_IFNAME", "CNI_IFNAME", None),
        (
            "a bad CNI_IFNAME",
            "CNI_IFNAME",
            Some("way-too-long-ifname"),
        ),
        ("a relative CNI_NETNS", "CNI_NETNS", Some("netns/x")),
        ("an unknown CNI_COMMAND", "CNI_COMMAND", Some("FROB")),
        ("a malformed CNI_ARGS", "CNI_ARGS", Some("IP")),
    ] {
        let mut env: Vec<(&str, &str)> = a
            .env("ADD")
            .into_iter()
            .filter(|(k, _)| *k != drop)
            .collect();
        env.extend(value.map(|v| (drop, v)));
        let out = invoke(&env, &good_text);
        assert_eq!(out.error_code(), 4, "{what}: {}", out.describe());
        let details = out.error()["details"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            details.contains(drop),
            "{what}: the variable is not named: {details}"
        );
    }
    // Unknown CNI_ARGS keys without IgnoreUnknown.
    let mut env = a.env("ADD");
    env.retain(|(k, _)| *k != "CNI_ARGS");
    env.push(("CNI_ARGS", "K8S_POD_NAME=web"));
    assert_eq!(invoke(&env, &good_text).error_code(), 2);
    // A namespace that does not exist.
    let gone = Attach::new(&a.id, "/run/netns/vswitch-test-no-such-namespace");
    assert_eq!(gone.add(&good).error_code(), 3);
    // The errors are in the configuration's version.
    let old = with(
        good.clone(),
        json!({"cniVersion": "0.4.0", "subnet": "10.99.0.0/24"}),
    );
    assert_eq!(a.add(&old).error()["cniVersion"], "0.4.0");
    assert_nothing_left(&sb);

    // The daemon not running: ADD and CHECK are to be retried, STATUS says the network is
    // down, DEL and GC have nothing to release.
    let dir = TempDir::new(&unique_name());
    let nowhere = conf_for(&dir.path.join("no-daemon.sock"), "1.1.0");
    let out = a.add(&nowhere);
    assert_eq!(out.error_code(), 11, "{}", out.describe());
    assert!(out.error()["details"]
        .to_string()
        .contains("no-daemon.sock"));
    assert_eq!(a.check(&nowhere, &json!({"cniVersion": "1.1.0", "interfaces": [
        {"name": "eth0", "sandbox": ns.path()}], "ips": [{"address": "10.1.1.2/24", "interface": 0}]})).error_code(), 11);
    assert_eq!(
        invoke(&[("CNI_COMMAND", "STATUS")], &nowhere.to_string()).error_code(),
        51
    );
    a.del(&nowhere, &Value::Null).ok_silent();
    let gc = with(nowhere, json!({"cni.dev/valid-attachments": []}));
    invoke(
        &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
        &gc.to_string(),
    )
    .ok_silent();
    assert_eq!(ns.links(), ["lo"]);
}

#[test]
fn del_succeeds_after_the_namespace_is_gone_and_after_a_daemon_restart() {
    let mut sb = Sandbox::start();
    let conf = conf(&sb, "1.0.0");

    // The namespace goes first (a crashed container); DEL still releases the address.
    let (ns, a) = container("gone");
    let result = a.add(&conf).ok();
    drop(ns);
    a.del(&conf, &result).ok_silent();
    assert_nothing_left(&sb);
    a.del(&conf, &result).ok_silent();
    let (_ns2, b) = container("gone");
    assert_eq!(b.add(&conf).ok()["ips"][0]["address"], "10.1.1.2/24");

    // The daemon restarts (its ports went with it): DEL of what the old one had succeeds.
    sb.stop_daemon("TERM");
    let again = Sandbox::start_with(SandboxOptions {
        control: Some(sb.control.clone()),
        ..SandboxOptions::default()
    });
    b.del(&conf, &Value::Null).ok_silent();
    assert_nothing_left(&again);
}

#[test]
fn status_reports_the_daemon_and_free_addresses() {
    let mut sb = Sandbox::start_subnet("10.9.9.0/30");
    let conf = with(conf(&sb, "1.1.0"), json!({"subnet": "10.9.9.0/30"}));
    let status = || {
        invoke(
            &[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")],
            &conf.to_string(),
        )
    };
    status().ok_silent();
    // Another network's subnet is a configuration error.
    let wrong = with(conf.clone(), json!({"subnet": "10.1.1.0/24"}));
    assert_eq!(
        invoke(&[("CNI_COMMAND", "STATUS")], &wrong.to_string()).error_code(),
        7
    );
    // A /30 has one address for a container.
    let (_ns, a) = container("status");
    let result = a.add(&conf).ok();
    assert_eq!(result["ips"][0]["address"], "10.9.9.2/30");
    assert_eq!(status().error_code(), 50);
    let (_ns2, b) = container("status");
    assert_eq!(b.add(&conf).error_code(), 102);
    a.del(&conf, &result).ok_silent();
    status().ok_silent();
    sb.stop_daemon("TERM");
    assert_eq!(status().error_code(), 51);
}

#[test]
fn gc_removes_the_attachments_not_listed_and_nothing_else() {
    let sb = Sandbox::start();
    let conf = conf(&sb, "1.1.0");
    let made: Vec<(NetNs, Attach)> = (0..3).map(|_| container("gc")).collect();
    for (_, a) in &made {
        a.add(&conf).ok();
    }
    let by_hand = sb.plug_plain();
    // Another network on the same daemon.
    let other = with(conf.clone(), json!({"name": "other-net"}));
    let (_ns_o, o) = container("gc-other");
    o.add(&other).ok();
    assert_eq!(ports(&sb).len(), 6);

    let gc = |conf: &Value, valid: &[&Attach]| {
        let list: Vec<Value> = (valid.iter())
            .map(|a| json!({"containerID": a.id, "ifname": a.ifname}))
            .collect();
        let conf = with(conf.clone(), json!({ "cni.dev/valid-attachments": list }));
        invoke(
            &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")],
            &conf.to_string(),
        )
    };
    gc(&conf, &[&made[0].1]).ok_silent();
    let left: Vec<String> = (ports(&sb).iter())
        .map(|p| p["container_id"].as_str().unwrap_or("-").to_string())
        .collect();
    assert_eq!(
        left,
        ["-", made[0].1.id.as_str(), "-", o.id.as_str()],
        "{left:?}"
    );
    assert!(
        sb.port_of(by_hand.pid).is_some(),
        "GC took a port plugged by hand"
    );
    for (ns, _) in &made[1..] {
        assert_eq!(ns.links(), ["lo"], "GC left the interface of {}", ns.name);
    }
    assert_eq!(stats(&sb)["subnet"]["free"], 250);
    // Without the list GC cannot know what is valid: nothing is removed.
    let no_list = invoke(&[("CNI_COMMAND", "GC")], &conf.to_string());
    assert_eq!(no_list.error_code(), 7);
    assert_eq!(ports(&sb).len(), 4);
    // An empty list collects the rest of the network.
    gc(&conf, &[]).ok_silent();
    gc(&other, &[]).ok_silent();
    assert_eq!(ports(&sb).len(), 2);
    sb.vswitch(&["unplug", &by_hand.pid.to_string()]).ok();
    assert_nothing_left(&sb);
}

#[test]
fn fifty_add_del_cycles_leave_no_link_address_or_state_behind() {
    let sb = Sandbox::start();
    let conf = conf(&sb, "1.0.0");
    let namespaces: Vec<NetNs> = (0..5).map(|_| NetNs::new(&unique_name())).collect();
    for i in 0..50 {
        let ns = &namespaces[i % namespaces.len()];
        let a = Attach::new(&format!("cycle{i}-{}", ns.name), &ns.path());
        let result = a.add(&conf).ok();
        assert_eq!(result["ips"][0]["address"], "10.1.1.2/24", "cycle {i}");
        let host = result["interfaces"][0]["name"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(sb.host_links().contains(&host), "cycle {i}");
        assert_eq!(ns.links().len(), 2, "cycle {i}");
        a.del(&conf, &result).ok_silent();
        assert_eq!(ns.links(), ["lo"], "cycle {i}");
    }
    assert_nothing_left(&sb);
    for ns in &namespaces {
        let addrs = ip_json(ns, &["-4", "addr", "show"]);
        let all: Vec<&Value> = (addrs.as_array().unwrap().iter())
            .flat_map(|l| l["addr_info"].as_array().unwrap())
            .collect();
        assert_eq!(all.len(), 1, "an address left in {}: {addrs}", ns.name);
        assert_eq!(
            ip_json(ns, &["-4", "route", "show"]),
            json!([]),
            "{}",
            ns.name
        );
    }
    let log = sb.daemon_log();
    let events = |what: &str| {
        (log.lines())
            .filter(|l| l.trim_start().starts_with(&format!("INFO {what} ")))
            .count()
    };
    assert_eq!(events("plugged"), 50, "{log}");
    assert_eq!(events("unplugged"), 50, "{log}");
}

#[test]
fn install_writes_the_plugin_and_a_conflist_for_the_daemons_subnet() {
    let sb = Sandbox::start_subnet("10.7.0.0/16");
    let dir = TempDir::new(&unique_name());
    let (bin, etc) = (dir.path.join("bin"), dir.path.join("net.d"));
    let install = |sb: &Sandbox| {
        let args = [
            "--name",
            "vsw-test",
            "--bin-dir",
            bin.to_str().unwrap(),
            "--conf-dir",
        ];
        let mut cmd = sb.vswitch_cmd("cni", &["install"]);
        cmd.args(args).arg(&etc);
        run(cmd)
    };
    let out = install(&sb).ok();
    let plugin = bin.join("vswitch");
    let file = etc.join("10-vsw-test.conflist");
    assert!(out.stdout.contains("10.7.0.0/16"), "{}", out.describe());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&plugin).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o755);
    let list: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(list["name"], "vsw-test");
    assert_eq!(list["cniVersion"], "1.0.0");
    let plugin_conf = &list["plugins"][0];
    assert_eq!(plugin_conf["type"], "vswitch");
    assert_eq!(plugin_conf["subnet"], "10.7.0.0/16");
    assert_eq!(plugin_conf["control"], sb.control.to_str().unwrap());
    for cap in ["portMappings", "ips", "mac", "dns"] {
        assert_eq!(plugin_conf["capabilities"][cap], true, "{cap}");
    }
    // A second install replaces both, leaving nothing else in the directories.
    install(&sb).ok();
    assert_eq!(std::fs::read_dir(&bin).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(&etc).unwrap().count(), 1);

    // The installed plugin, run as a runtime runs it with the configuration it derives from
    // the list (capabilities out, runtimeConfig in).
    let mut derived = plugin_conf.clone();
    let map = derived.as_object_mut().unwrap();
    map.remove("capabilities");
    map.insert("name".into(), list["name"].clone());
    map.insert("cniVersion".into(), list["cniVersion"].clone());
    let (ns, a) = container("install");
    let result = invoke_with(&plugin, &a.env("ADD"), &derived.to_string()).ok();
    assert_eq!(result["ips"][0]["address"], "10.7.0.2/16");
    assert_eq!(ns.links().len(), 2);
    invoke_with(&plugin, &a.env("DEL"), &derived.to_string()).ok_silent();
    assert_eq!(ns.links(), ["lo"]);

    // Without a daemon there is no subnet to write: a clear error, and no file.
    let other = TempDir::new(&unique_name());
    let mut cmd = command(common::VSWITCH, &["cni", "install", "--control"]);
    cmd.arg(other.path.join("none.sock"))
        .args(["--bin-dir", other.path.join("bin").to_str().unwrap()])
        .args(["--conf-dir", other.path.join("etc").to_str().unwrap()]);
    let out = run(cmd);
    let line = out.vswitch_error();
    common::assert_mentions(&line, &["not running", "cannot reach"]);
    assert!(!exists(&other.path.join("etc")) && !exists(&other.path.join("bin")));
}

/// A container whose namespace was replaced without a DEL (the kernel may still be destroying
/// the old one, veth included): the ADD of the same attachment into the new namespace wins.
#[test]
fn an_attachment_whose_namespace_went_can_be_added_again() {
    let sb = Sandbox::start();
    let conf = conf(&sb, "1.0.0");
    let (ns, a) = container("readd");
    a.add(&conf).ok();
    drop(ns);
    let ns = NetNs::new(&unique_name());
    let again = Attach {
        netns: ns.path(),
        ..a.clone()
    };
    let result = again.add(&conf).ok();
    assert_eq!(result["ips"][0]["address"], "10.1.1.2/24");
    assert_eq!(ports(&sb).len(), 2);
    again.del(&conf, &result).ok_silent();
    assert_nothing_left(&sb);
}

/// A daemon that stops keeping the network (SIGUSR2) and the next one that takes it over: the
/// attachment comes back with its key, so CHECK and DEL by container id still find it.
#[test]
fn an_attachment_outlives_a_daemon_restart_that_keeps_the_network() {
    let mut sb = Sandbox::start();
    let conf = conf(&sb, "1.0.0");
    let (ns, a) = container("keep");
    let result = a.add(&conf).ok();
    sb.stop_daemon("USR2");
    assert_eq!(
        ns.links().len(),
        2,
        "the container lost its interface with the daemon"
    );

    let log = sb.dir.path.join("next-daemon.log");
    let mut cmd = sb.host_cmd(common::VSWITCH, &["run", "--subnet", common::SUBNET]);
    cmd.arg("--control").arg(&sb.control);
    let mut next = Daemon(
        cmd.stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the next daemon"),
    );
    let ready = poll(Duration::from_secs(10), || {
        sb.vswitch(&["ls"]).success().then_some(())
    });
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        ready.is_some(),
        "the next daemon did not start: {}",
        log_text()
    );
    let port = port_of(&sb, &a.id).expect("the attachment was not taken over");
    assert_eq!(port["network"], "vswitch");
    assert_eq!(port["host_ifname"], result["interfaces"][0]["name"]);
    a.check(&conf, &result).ok_silent();
    a.del(&conf, &result).ok_silent();
    assert_nothing_left(&sb);
    assert_eq!(ns.links(), ["lo"]);

    let status = next.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}: {}",
        log_text()
    );
}

/// A daemon started by hand, stopped with SIGTERM (which removes its network and pins) also
/// when the test fails.
struct Daemon(std::process::Child);

impl Daemon {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        common::signal(self.0.id(), "TERM");
        let status = common::wait_timeout(&mut self.0, Duration::from_secs(10));
        if status.is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        status
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.stop();
        }
    }
}
