//! The subcommands: `run` starts the daemon, every other one is a request to it over the
//! control socket, printed as a table or as JSON.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::control::{
    Client, FlowFilter, Plug, PortRef, PortView, SecurityOpts, Selector, Target, Unplug,
};
use crate::{cni, daemon, observe, Cli, CniCommand, Command, SecurityArgs, TargetArg};

pub mod capture;
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
            takeover,
            metrics,
            log_level,
            security,
        } => {
            observe::log::init(log_level.as_deref())?;
            daemon::run(daemon::Config {
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
                takeover,
                metrics,
                isolate: security.isolate,
                max_macs_per_port: security.max_macs_per_port,
            })
        }
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
        Command::Unplug { target } => {
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
        Command::Ls { json } => {
            let ports = client.ls()?;
            if json {
                return print_json(&ports);
            }
            table::ports(&ports);
            Ok(())
        }
        Command::Fdb { json, flush: None } => {
            let entries = client.fdb()?;
            if json {
                return print_json(&entries);
            }
            table::fdb(&entries);
            Ok(())
        }
        Command::Fdb {
            json,
            flush: Some(port),
        } => {
            let flushed = client.fdb_flush(port.clone())?;
            if json {
                return print_json(&flushed);
            }
            let from = port.map_or_else(String::new, |p| format!(" of {p}"));
            println!("flushed {} learned MAC addresses{from}", flushed.len());
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
        Command::Conntrack {
            json,
            delete,
            flush,
            proto,
            src,
            sport,
            dst,
            dport,
        } => {
            let filter = FlowFilter {
                proto,
                inside: src,
                inside_port: sport,
                outside: dst,
                outside_port: dport,
            };
            if delete && filter.is_empty() {
                bail!(
                    "conntrack -D needs a filter (-p, -s, --sport, -d, --dport); -F deletes \
                     every flow"
                );
            }
            let flows = match delete || flush {
                true => client.conntrack_delete(filter)?,
                false => (client.conntrack()?.into_iter())
                    .filter(|f| table::flow_selected(&filter, f))
                    .collect(),
            };
            if json {
                return print_json(&flows);
            }
            table::conntrack(&flows);
            if delete || flush {
                println!("{} flows deleted", flows.len());
            }
            Ok(())
        }
        Command::Capture {
            ports,
            all,
            pid,
            write,
            count,
            proto,
            host,
            port,
            snaplen,
            format,
        } => {
            let mut ports = ports;
            ports.extend(pid.into_iter().map(PortRef::Pid));
            for p in &mut ports {
                if let PortRef::Netns(path) = p {
                    *path = absolute(path.clone())?;
                }
            }
            capture::run(
                &client,
                capture::Args {
                    ports,
                    all,
                    write,
                    count,
                    proto,
                    host,
                    port,
                    snaplen,
                    format,
                },
            )
        }
        Command::Cni {
            command:
                CniCommand::Install {
                    name,
                    bin_dir,
                    conf_dir,
                },
        } => {
            let done = cni::install::install(&cli.control.control, &name, &bin_dir, &conf_dir)?;
            println!(
                "installed the CNI plugin {} and the network {name} ({}) in {}",
                done.plugin.display(),
                done.subnet,
                done.conflist.display()
            );
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
