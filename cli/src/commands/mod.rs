//! The subcommands: `run` starts the daemon, every other one is a request to it over the
//! control socket, printed as a table or as JSON.

use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::control::{Client, Plug, PortView, SecurityOpts, Target, Unplug};
use crate::{daemon, Cli, Command, SecurityArgs, TargetArg};

mod table;

pub fn run(cli: Cli) -> Result<()> {
    let client = Client::new(&cli.control.control);
    match cli.command {
        Command::Run {
            subnet,
            gateway,
            tap,
            mtu,
            fdb_age,
            fdb_size,
            workers,
            dns,
            no_dns,
            max_flows,
            max_flows_per_container,
            max_half_open,
            spread,
            poll_us,
            fast_path,
            no_fast_path,
            security,
        } => daemon::run(daemon::Config {
            subnet,
            gateway: gateway.unwrap_or_else(|| subnet.first_host()),
            tap,
            mtu,
            control: cli.control.control,
            fdb_age_secs: fdb_age,
            fdb_size,
            workers: workers
                .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
            dns,
            no_dns,
            max_flows,
            max_flows_per_container,
            max_half_open,
            spread,
            poll: std::time::Duration::from_micros(poll_us),
            fast_path: if no_fast_path {
                crate::bpf::fastpath::Mode::Off
            } else {
                fast_path
            },
            isolate: security.isolate,
            max_macs_per_port: security.max_macs_per_port,
        }),
        Command::Plug {
            target,
            ip,
            mac,
            ifname,
            publish,
            security,
            json,
        } => {
            let port = client.plug(Plug {
                target: target_of(target)?,
                ip,
                mac,
                ifname,
                publish,
                security: security_of(security)?,
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
        Command::Unplug { target } => {
            let port: PortView = client.unplug(Unplug {
                target: target_of(target)?,
            })?;
            println!(
                "unplugged {} (host port {}, {} released)",
                table::container(&port),
                port.host_ifname,
                port.ip
            );
            Ok(())
        }
        Command::Ls { json } => {
            let ports = client.ls()?;
            if json {
                return print_json(&ports);
            }
            table::ports(&ports);
            Ok(())
        }
        Command::Fdb { json } => {
            let entries = client.fdb()?;
            if json {
                return print_json(&entries);
            }
            table::fdb(&entries);
            Ok(())
        }
        Command::Stop { keep } => {
            client.stop(keep)?;
            Ok(())
        }
        Command::Cleanup => daemon::cleanup(&cli.control.control),
        Command::Stats { json } => {
            let stats = client.stats()?;
            if json {
                return print_json(&stats);
            }
            table::stats(&stats);
            Ok(())
        }
        Command::Conntrack { json } => {
            let flows = client.conntrack()?;
            if json {
                return print_json(&flows);
            }
            table::conntrack(&flows);
            Ok(())
        }
    }
}

fn print_json<T: serde::Serialize>(value: &T) -> Result<()> {
    println!("{}", serde_json::to_string(value)?);
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

fn absolute(path: PathBuf) -> Result<PathBuf> {
    std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))
}
