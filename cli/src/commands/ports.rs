//! `vswitch plug`, `unplug` and `ls`: containers onto the switch and off it, and the ports.

use anyhow::Result;

use crate::control::{Client, Plug, PortView, SecurityOpts, Selector, Target, Unplug};
use crate::{PlugArgs, SecurityArgs, TargetArg};

use super::{absolute, print_json, table};

pub fn plug(client: &Client, args: PlugArgs) -> Result<()> {
    let PlugArgs {
        target,
        ip,
        mac,
        ifname,
        publish,
        security,
        json,
    } = args;
    let port = client.plug(Plug {
        ip,
        mac,
        ifname,
        publish,
        security: security_of(security)?,
        ..Plug::new(target_of(target)?)
    })?;
    if json {
        return print_json(&port);
    }
    println!(
        "plugged {}: {} {}/{} mac {} gw {} (host port {})",
        table::container(&port),
        port.ifname.as_deref().unwrap_or("?"),
        port.ip,
        port.prefix,
        port.mac,
        port.gateway,
        port.host_ifname
    );
    if !port.publish.is_empty() {
        println!("published: {}", port.publish.join(", "));
    }
    if let Some(resolv) = &port.resolv {
        println!("{resolv}");
    }
    println!("port security: {}", table::security(&port.security));
    Ok(())
}

pub fn unplug(client: &Client, target: TargetArg) -> Result<()> {
    let port: PortView = client.unplug(Unplug {
        by: Selector::Target(target_of(target)?),
    })?;
    println!(
        "unplugged {} (host port {}, {} released)",
        table::container(&port),
        port.host_ifname,
        port.ip
    );
    Ok(())
}

pub fn ls(client: &Client, json: bool) -> Result<()> {
    let ports = client.ls()?;
    if json {
        return print_json(&ports);
    }
    table::ports(&ports);
    Ok(())
}

/// The container a command names; a namespace path is made absolute, since the daemon may run
/// in another working directory.
fn target_of(arg: TargetArg) -> Result<Target> {
    match (arg.pid, arg.netns) {
        (Some(pid), _) => Ok(Target::Pid(pid)),
        (None, Some(path)) => Ok(Target::Netns(absolute(path)?)),
        (None, None) => unreachable!("clap requires one of pid and --netns"),
    }
}

/// `plug`'s port-security options, checked as the daemon checks them.
fn security_of(args: SecurityArgs) -> Result<SecurityOpts> {
    let opts = SecurityOpts {
        trusted: args.trusted,
        isolated: args.isolated,
        allow_macs: args.allow_mac,
        allow_ips: args.allow_ip,
        allow_ethertypes: args.allow_ethertype,
        max_macs: args.max_macs,
    };
    Ok(opts.validate()?)
}
