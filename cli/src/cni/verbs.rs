//! ADD, DEL, STATUS and GC: requests to the daemon over its control socket.

use std::net::Ipv4Addr;
use std::time::Duration;

use crate::control::{
    Attachment, Client, ClientError, ErrorCode, Gc, Plug, Selector, Stats, Target, Unplug,
};
use crate::daemon::ipam::Ipv4Net;

use super::config::NetConf;
use super::env::Params;
use super::error::{CniError, Code};
use super::result::Success;

/// How long the plugin waits for the daemon: a plug takes milliseconds, but a runtime must
/// never hang on a daemon that stopped answering.
const TIMEOUT: Duration = Duration::from_secs(30);

pub fn client(conf: &NetConf) -> Client {
    Client::new(&conf.control).with_timeout(TIMEOUT)
}

pub fn attachment(p: &Params) -> Attachment {
    Attachment {
        container_id: p.container_id.clone(),
        ifname: p.ifname.clone(),
    }
}

/// The daemon's subnet, checked against the configuration's.
fn served_subnet(conf: &NetConf, stats: &Stats) -> Result<Ipv4Net, CniError> {
    let served: Ipv4Net = (stats.subnet.cidr.parse()).map_err(|e| {
        CniError::new(
            Code::Daemon,
            "cannot use the vswitch daemon",
            format!("its subnet: {e}"),
        )
    })?;
    match conf.subnet {
        Some(want) if want != served => Err(CniError::config(format!(
            "the network {} is {want}, but the vswitch daemon at {} serves {served}",
            conf.name,
            conf.control.display()
        ))),
        _ => Ok(served),
    }
}

/// ADD: plugs the namespace as the attachment (container id, ifname); the runtime writes the
/// container's resolv.conf from the result's `dns`.
pub fn add(p: &Params, conf: &NetConf) -> Result<String, CniError> {
    let netns = p.netns.clone().expect("ADD requires CNI_NETNS");
    // Checked before anything is made: a bad prevResult must not leave a port behind.
    let prev = Success::prev(conf)?;
    let client = client(conf);
    let subnet = served_subnet(conf, &client.stats().map_err(CniError::daemon)?)?;
    // The conventions' order: the capability, then `args`, then CNI_ARGS.
    let ip = conf.ip.or(p.args.ip);
    if let Some((ip, Some(prefix))) = ip {
        if prefix != subnet.prefix {
            return Err(CniError::config(format!(
                "the address {ip}/{prefix} asked for does not fit the network's {subnet}"
            )));
        }
    }
    let plug = Plug {
        ip: ip.map(|(ip, _): (Ipv4Addr, _)| ip),
        mac: conf.mac.or(p.args.mac),
        ifname: Some(p.ifname.clone()),
        publish: conf.publish.clone(),
        container_id: Some(p.container_id.clone()),
        network: Some(conf.name.clone()),
        resolv: false,
        ..Plug::new(Target::Netns(netns.clone()))
    };
    let port = client.plug(plug).map_err(CniError::daemon)?;
    let netns = netns.display().to_string();
    Ok(Success::of_plug(conf, prev, &netns, &port).to_json())
}

/// DEL: removes the attachment by its key. Already gone (a second DEL, a daemon restarted
/// since) or a daemon that is not running (its ports went with it) is success: the address is
/// free either way.
pub fn del(p: &Params, conf: &NetConf) -> Result<(), CniError> {
    let unplug = Unplug {
        by: Selector::Attachment(attachment(p)),
    };
    match client(conf).unplug(unplug) {
        Ok(_) => Ok(()),
        Err(ClientError::Daemon(f)) if f.code == ErrorCode::NotFound => Ok(()),
        Err(ClientError::NotRunning { .. }) => Ok(()),
        Err(e) => Err(CniError::daemon(e)),
    }
}

/// STATUS: the daemon is up, serves the network's subnet and has an address left.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let stats = match client(conf).stats() {
        Ok(stats) => stats,
        Err(e @ (ClientError::NotRunning { .. } | ClientError::Io { .. })) => {
            return Err(CniError::new(
                Code::NotAvailableLimited,
                "the vswitch daemon is not running: no container of the network has a network",
                e.to_string(),
            ))
        }
        Err(e) => return Err(CniError::daemon(e)),
    };
    let subnet = served_subnet(conf, &stats)?;
    if stats.subnet.free == 0 {
        return Err(CniError::new(
            Code::NotAvailable,
            "no address left",
            format!("every address of {subnet} is in use"),
        ));
    }
    Ok(())
}

/// GC: removes the network's attachments that the runtime no longer lists.
pub fn gc(conf: &NetConf) -> Result<(), CniError> {
    let valid = (conf.valid_attachments.clone())
        .ok_or_else(|| CniError::config("GC needs cni.dev/valid-attachments"))?;
    let gc = Gc {
        network: conf.name.clone(),
        valid,
    };
    match client(conf).gc(gc) {
        Ok(removed) => {
            for port in removed {
                eprintln!(
                    "vswitch: GC removed container {} {} ({}, host port {})",
                    port.container_id.unwrap_or_default(),
                    port.ifname.unwrap_or_default(),
                    port.ip,
                    port.host_ifname
                );
            }
            Ok(())
        }
        // A daemon that is not running holds no attachment.
        Err(ClientError::NotRunning { .. }) => Ok(()),
        Err(e) => Err(CniError::daemon(e)),
    }
}
