//! CHECK: the attachment is still what ADD made of it, on both sides: the daemon still has its
//! port with the same address and MAC, and inside the container the interface is up with that
//! MAC and address, and the default route via the gateway is there (if the result lists it: a
//! later plugin in the chain may have changed routes).

use std::net::Ipv4Addr;
use std::path::Path;

use crate::control::{Inspect, PortView, Selector};
use crate::kernel::netlink::{Ipv4Route, Link, Netlink};
use crate::kernel::netns;

use super::config::NetConf;
use super::env::Params;
use super::error::{CniError, Code};
use super::result::{Success, DEFAULT_ROUTE};
use super::verbs::{attachment, client};

/// What CHECK expects, from the previous result.
struct Expected {
    ip: Ipv4Addr,
    prefix: u8,
    mac: Option<String>,
    gateway: Option<Ipv4Addr>,
    /// Whether the result lists the default route via the gateway.
    default_route: bool,
}

pub fn check(p: &Params, conf: &NetConf) -> Result<(), CniError> {
    let netns = p.netns.clone().expect("CHECK requires CNI_NETNS");
    let prev = (conf.prev_result.as_ref())
        .ok_or_else(|| CniError::config("CHECK needs the ADD's result in prevResult"))?;
    let prev = Success::from_prev(prev)?;
    let want = expected(&prev, p, &netns)?;

    let inspect = Inspect {
        by: Selector::Attachment(attachment(p)),
    };
    let port = client(conf).inspect(inspect).map_err(CniError::daemon)?;
    check_port(&prev, &want, &port)?;

    let ns = netns::open_netns_path(&netns).map_err(|e| {
        CniError::new(
            Code::UnknownContainer,
            "no such container",
            format!("{}: {e}", netns.display()),
        )
    })?;
    let ifname = p.ifname.to_string();
    let seen = netns::run_in_netns(&ns, move || -> Result<_, String> {
        let mut nl = Netlink::open().map_err(|e| e.to_string())?;
        let Some(link) = nl.link(&ifname).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let addrs = nl.ipv4_addresses(link.index).map_err(|e| e.to_string())?;
        let routes = nl.ipv4_routes().map_err(|e| e.to_string())?;
        Ok(Some((link, addrs, routes)))
    })
    .map_err(|e| e.to_string())
    .and_then(|r| r)
    .map_err(|e| CniError::check(format!("reading {}: {e}", netns.display())))?;
    let Some((link, addrs, routes)) = seen else {
        return Err(CniError::check(format!(
            "{} is missing in {}",
            p.ifname,
            netns.display()
        )));
    };
    check_container(p, &want, &port, &link, &addrs, &routes)
}

/// Our interface, address and route in the result.
fn expected(prev: &Success, p: &Params, netns: &Path) -> Result<Expected, CniError> {
    let sandbox = netns.display().to_string();
    let (index, iface) = (prev.interfaces.iter().enumerate())
        .find(|(_, i)| i.name == p.ifname.as_str() && i.sandbox.as_deref() == Some(&sandbox))
        .ok_or_else(|| {
            CniError::config(format!(
                "prevResult lists no interface {} in {sandbox}",
                p.ifname
            ))
        })?;
    let ipc = (prev.ips.iter())
        .find(|ip| ip.interface == Some(index))
        .ok_or_else(|| CniError::config(format!("prevResult gives {} no address", p.ifname)))?;
    let bad = || CniError::config(format!("prevResult: address {:?}", ipc.address));
    let (ip, prefix) = ipc.address.split_once('/').ok_or_else(bad)?;
    let gateway = (ipc.gateway.as_deref())
        .map(|g| g.parse::<Ipv4Addr>())
        .transpose()
        .map_err(|_| bad())?;
    let gw = ipc.gateway.as_deref();
    let default_route =
        (prev.routes.iter()).any(|r| r.dst == DEFAULT_ROUTE && r.gw.as_deref() == gw);
    Ok(Expected {
        ip: ip.parse().map_err(|_| bad())?,
        prefix: prefix.parse().map_err(|_| bad())?,
        mac: iface.mac.clone(),
        gateway,
        default_route,
    })
}

/// The daemon's port against the result.
fn check_port(prev: &Success, want: &Expected, port: &PortView) -> Result<(), CniError> {
    if (port.ip, port.prefix) != (want.ip, want.prefix) {
        return Err(CniError::check(format!(
            "the daemon gives the attachment {}/{}, the result {}/{}",
            port.ip, port.prefix, want.ip, want.prefix
        )));
    }
    if want
        .mac
        .as_ref()
        .is_some_and(|m| !m.eq_ignore_ascii_case(&port.mac))
    {
        return Err(CniError::check(format!(
            "the daemon gives the attachment MAC {}, the result {}",
            port.mac,
            want.mac.as_deref().unwrap_or_default()
        )));
    }
    let host_end =
        (prev.interfaces.iter()).any(|i| i.sandbox.is_none() && i.name == port.host_ifname);
    if !host_end {
        return Err(CniError::check(format!(
            "the daemon's host port {} is not in the result",
            port.host_ifname
        )));
    }
    Ok(())
}

/// Inside the container, against the daemon's port and the result.
fn check_container(
    p: &Params,
    want: &Expected,
    port: &PortView,
    link: &Link,
    addrs: &[(Ipv4Addr, u8)],
    routes: &[Ipv4Route],
) -> Result<(), CniError> {
    let mac = link.mac.map(|m| vswitch_switch::MacAddr(m).to_string());
    if mac.as_deref() != Some(port.mac.as_str()) {
        return Err(CniError::check(format!(
            "{} has MAC {}, the attachment {}",
            p.ifname,
            mac.unwrap_or_else(|| "none".into()),
            port.mac
        )));
    }
    if !link.up {
        return Err(CniError::check(format!("{} is down", p.ifname)));
    }
    if !addrs.contains(&(want.ip, want.prefix)) {
        return Err(CniError::check(format!(
            "{} does not have {}/{}",
            p.ifname, want.ip, want.prefix
        )));
    }
    if let Some(gw) = want.gateway.filter(|_| want.default_route) {
        let there = routes
            .iter()
            .any(|r| r.prefix_len == 0 && r.gateway == Some(gw) && r.oif == Some(link.index));
        if !there {
            return Err(CniError::check(format!(
                "no default route via {gw} on {}",
                p.ifname
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::env::CniArgs;
    use serde_json::json;

    const NETNS: &str = "/run/netns/x";

    fn params() -> Params {
        Params {
            container_id: "abc".parse().unwrap(),
            netns: Some(NETNS.into()),
            ifname: "eth0".parse().unwrap(),
            args: CniArgs::default(),
        }
    }

    fn prev() -> Success {
        serde_json::from_value(json!({
            "cniVersion": "1.0.0",
            "interfaces": [
                {"name": "vsw0123456789ab"},
                {"name": "eth0", "mac": "02:76:0a:01:01:02", "sandbox": NETNS}
            ],
            "ips": [{"address": "10.1.1.2/24", "gateway": "10.1.1.1", "interface": 1}],
            "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.1.1"}]
        }))
        .unwrap()
    }

    fn port() -> PortView {
        serde_json::from_value(json!({
            "port": 1, "kind": "container", "pid": null, "netns": NETNS,
            "host_ifname": "vsw0123456789ab", "ifname": "eth0", "ip": "10.1.1.2", "prefix": 24,
            "gateway": "10.1.1.1", "mac": "02:76:0a:01:01:02",
            "rx_frames": 0, "rx_bytes": 0, "tx_frames": 0, "tx_bytes": 0, "drops": 0
        }))
        .unwrap()
    }

    fn link() -> Link {
        Link {
            index: 7,
            name: "eth0".into(),
            up: true,
            mac: Some([2, 0x76, 10, 1, 1, 2]),
            mtu: Some(1500),
            ..Link::default()
        }
    }

    fn default_route(oif: u32) -> Ipv4Route {
        Ipv4Route {
            dst: Ipv4Addr::UNSPECIFIED,
            prefix_len: 0,
            gateway: Some(Ipv4Addr::new(10, 1, 1, 1)),
            oif: Some(oif),
        }
    }

    fn container(
        link: Link,
        addrs: &[(Ipv4Addr, u8)],
        routes: &[Ipv4Route],
    ) -> Result<(), CniError> {
        let want = expected(&prev(), &params(), Path::new(NETNS)).unwrap();
        check_container(&params(), &want, &port(), &link, addrs, routes)
    }

    const ADDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 1, 1, 2), 24);

    #[test]
    fn an_intact_attachment_passes() {
        let want = expected(&prev(), &params(), Path::new(NETNS)).unwrap();
        check_port(&prev(), &want, &port()).unwrap();
        container(link(), &[ADDR], &[default_route(7)]).unwrap();
    }

    #[test]
    fn what_is_missing_or_different_fails() {
        let failed = |r: Result<(), CniError>| r.unwrap_err().code;
        assert_eq!(
            failed(container(link(), &[], &[default_route(7)])),
            Code::CheckFailed
        );
        assert_eq!(failed(container(link(), &[ADDR], &[])), Code::CheckFailed);
        assert_eq!(
            failed(container(link(), &[ADDR], &[default_route(8)])),
            Code::CheckFailed
        );
        let down = Link {
            up: false,
            ..link()
        };
        assert_eq!(
            failed(container(down, &[ADDR], &[default_route(7)])),
            Code::CheckFailed
        );
        let other_mac = Link {
            mac: Some([2, 0, 0, 0, 0, 1]),
            ..link()
        };
        assert_eq!(
            failed(container(other_mac, &[ADDR], &[default_route(7)])),
            Code::CheckFailed
        );

        let want = expected(&prev(), &params(), Path::new(NETNS)).unwrap();
        let mut moved = port();
        moved.ip = Ipv4Addr::new(10, 1, 1, 3);
        assert_eq!(
            failed(check_port(&prev(), &want, &moved)),
            Code::CheckFailed
        );
        let mut renamed = port();
        renamed.host_ifname = "vswffffffffffff".into();
        assert_eq!(
            failed(check_port(&prev(), &want, &renamed)),
            Code::CheckFailed
        );
    }

    #[test]
    fn a_route_a_later_plugin_took_out_of_the_result_is_not_checked() {
        let mut prev = prev();
        prev.routes.clear();
        let want = expected(&prev, &params(), Path::new(NETNS)).unwrap();
        check_container(&params(), &want, &port(), &link(), &[ADDR], &[]).unwrap();
    }

    #[test]
    fn a_result_without_the_interface_is_an_invalid_configuration() {
        let err = expected(&prev(), &params(), Path::new("/run/netns/other"))
            .err()
            .unwrap();
        assert_eq!(err.code, Code::InvalidConfig);
        let mut no_ip = prev();
        no_ip.ips.clear();
        let err = expected(&no_ip, &params(), Path::new(NETNS)).err().unwrap();
        assert_eq!(err.code, Code::InvalidConfig);
    }
}
