//! `vswitch`: a userspace virtual switch for Linux containers.

mod bpf;
mod control;
mod daemon;
mod datapath;
mod kernel;
mod natd;
mod ports;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::control::{FdbView, FlowRow, PortView, Request};
use crate::daemon::ipam::Ipv4Net;

#[derive(Parser)]
#[command(
    name = "vswitch",
    version,
    about = "A userspace virtual switch for Linux containers"
)]
struct Cli {
    #[command(flatten)]
    control: ControlArg,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct ControlArg {
    /// Control socket of the daemon.
    #[arg(
        long,
        env = "VSWITCH_CONTROL",
        default_value = "/run/vswitch/vswitch.sock",
        global = true
    )]
    control: PathBuf,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct TargetArg {
    /// Process whose network namespace is the container's.
    pid: Option<u32>,
    /// A named network namespace file instead of a pid (e.g. /run/netns/NAME).
    #[arg(long)]
    netns: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the switch daemon in the foreground.
    Run {
        /// The containers' subnet, e.g. 10.1.1.0/24.
        #[arg(long)]
        subnet: Ipv4Net,
        /// The gateway address held by the TAP (default: the subnet's first host address).
        #[arg(long)]
        gateway: Option<Ipv4Addr>,
        /// Name of the TAP device, the host's port on the switch.
        #[arg(long, default_value = "vsw0")]
        tap: String,
        /// MTU of the TAP and of every container interface.
        #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(576..=65521))]
        mtu: u32,
        /// Seconds after which an unused learned MAC address is forgotten.
        #[arg(long, default_value_t = 300)]
        fdb_age: u64,
        /// Most MAC addresses the forwarding table holds.
        #[arg(long, default_value_t = 8192)]
        fdb_size: usize,
        /// Datapath worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
        /// Upstream DNS resolver for the containers (repeatable; default: the host's).
        #[arg(long)]
        dns: Vec<std::net::IpAddr>,
        /// Run no DNS forwarder on the gateway address.
        #[arg(long)]
        no_dns: bool,
        /// Most NAT flows tracked at once; new flows are refused past it.
        #[arg(long, default_value_t = vswitch_nat::DEFAULT_MAX_FLOWS)]
        max_flows: usize,
        /// How a port's frames are spread over the workers: bulk frames by flow and the rest by
        /// the CPU that sent them (auto), all by CPU, or all by flow hash.
        #[arg(long, value_enum, default_value_t = bpf::fanout::Spread::Auto)]
        spread: bpf::fanout::Spread,
        /// Microseconds a worker keeps polling for frames after its last one before it sleeps
        /// (0: sleep at once). Cuts request/response latency; costs CPU only while traffic flows.
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=100_000))]
        poll_us: u64,
        /// Where the kernel fast path for frames between learned containers goes on each port:
        /// a tcx link where the kernel has them, else tc (auto); a tcx link (tcx, Linux 6.6); a
        /// clsact qdisc with a cls_bpf filter (tc, Linux 5.10); nowhere, the daemon switching
        /// every frame (off). See ARCHITECTURE.md.
        #[arg(long, value_enum, default_value_t = bpf::fastpath::Mode::Auto)]
        fast_path: bpf::fastpath::Mode,
        /// The same as --fast-path off.
        #[arg(long, conflicts_with = "fast_path")]
        no_fast_path: bool,
    },
    /// Attach a container's network namespace to the switch.
    Plug {
        #[command(flatten)]
        target: TargetArg,
        /// Address to give the container (default: the next free one).
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// MAC address of the container's interface (default: derived from its address).
        #[arg(long)]
        mac: Option<String>,
        /// Name of the interface inside the container.
        #[arg(long)]
        ifname: Option<String>,
        /// Publish a container port on the host: [HOSTIP:]HOSTPORT:CPORT[/tcp|/udp] (repeatable).
        #[arg(long, short = 'p')]
        publish: Vec<String>,
        /// Print the new port as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Detach a container and delete its interface.
    Unplug {
        #[command(flatten)]
        target: TargetArg,
    },
    /// List the switch's ports and their counters.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// List the learned MAC addresses.
    Fdb {
        #[arg(long)]
        json: bool,
    },
    /// List the NAT's connection-tracking table (like `conntrack -L`).
    Conntrack {
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what failed and why.
            eprintln!("vswitch: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
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
            spread,
            poll_us,
            fast_path,
            no_fast_path,
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
            spread,
            poll: std::time::Duration::from_micros(poll_us),
            fast_path: if no_fast_path {
                bpf::fastpath::Mode::Off
            } else {
                fast_path
            },
        }),
        Command::Plug {
            target,
            ip,
            mac,
            ifname,
            publish,
            json,
        } => {
            let request = Request::Plug {
                pid: target.pid,
                netns: target.netns.map(absolute).transpose()?,
                ip,
                mac,
                ifname,
                publish,
            };
            let data = control::call(&cli.control.control, &request)?;
            let port: PortView = serde_json::from_value(data.clone()).context("daemon reply")?;
            if json {
                println!("{data}");
            } else {
                println!(
                    "plugged {}: {} {}/{} mac {} gw {} (host port {})",
                    describe(&port),
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
            }
            Ok(())
        }
        Command::Unplug { target } => {
            let request = Request::Unplug {
                pid: target.pid,
                netns: target.netns.map(absolute).transpose()?,
            };
            let data = control::call(&cli.control.control, &request)?;
            let port: PortView = serde_json::from_value(data).context("daemon reply")?;
            println!(
                "unplugged {} (host port {}, {} released)",
                describe(&port),
                port.host_ifname,
                port.ip
            );
            Ok(())
        }
        Command::Ls { json } => {
            let data = control::call(&cli.control.control, &Request::Ls)?;
            if json {
                println!("{data}");
                return Ok(());
            }
            let ports: Vec<PortView> = serde_json::from_value(data).context("daemon reply")?;
            // "netns /run/netns/NAME" and "pid N" vary in length: size the column to fit.
            let w = ports.iter().map(|p| describe(p).len()).fold(10, usize::max);
            println!(
                "{:<5} {:<w$} {:<15} {:<8} {:<18} {:<18} {:>10} {:>12} {:>10} {:>12} {:>6}",
                "PORT",
                "CONTAINER",
                "HOST-IF",
                "IF",
                "IP",
                "MAC",
                "RX-FRAMES",
                "RX-BYTES",
                "TX-FRAMES",
                "TX-BYTES",
                "DROPS"
            );
            for p in ports {
                println!(
                    "{:<5} {:<w$} {:<15} {:<8} {:<18} {:<18} {:>10} {:>12} {:>10} {:>12} {:>6}",
                    p.port,
                    describe(&p),
                    p.host_ifname,
                    p.ifname.as_deref().unwrap_or("-"),
                    format!("{}/{}", p.ip, p.prefix),
                    p.mac,
                    p.rx_frames,
                    p.rx_bytes,
                    p.tx_frames,
                    p.tx_bytes,
                    p.drops
                );
            }
            Ok(())
        }
        Command::Conntrack { json } => {
            let data = control::call(&cli.control.control, &Request::Conntrack)?;
            if json {
                println!("{data}");
                return Ok(());
            }
            print_conntrack(data)
        }
        Command::Fdb { json } => {
            let data = control::call(&cli.control.control, &Request::Fdb)?;
            if json {
                println!("{data}");
                return Ok(());
            }
            let entries: Vec<FdbView> = serde_json::from_value(data).context("daemon reply")?;
            println!(
                "{:<18} {:<5} {:<15} {:>8}",
                "MAC", "PORT", "PORT-NAME", "AGE(s)"
            );
            for e in entries {
                println!(
                    "{:<18} {:<5} {:<15} {:>8.1}",
                    e.mac,
                    e.port,
                    e.port_name,
                    e.age_ms as f64 / 1000.0
                );
            }
            Ok(())
        }
    }
}

fn print_conntrack(data: serde_json::Value) -> Result<()> {
    let flows: Vec<FlowRow> = serde_json::from_value(data).context("daemon reply")?;
    println!(
        "{:<5} {:<22} {:<22} {:<12} {:>8} {:>9} {:>12} {:>9} {:>12}",
        "PROTO",
        "INSIDE",
        "OUTSIDE",
        "STATE",
        "TIMEOUT",
        "PKTS-OUT",
        "BYTES-OUT",
        "PKTS-IN",
        "BYTES-IN"
    );
    for f in flows {
        let outside = if f.published {
            format!("{} (in)", f.outside)
        } else {
            f.outside
        };
        println!(
            "{:<5} {:<22} {:<22} {:<12} {:>8} {:>9} {:>12} {:>9} {:>12}",
            f.proto,
            f.inside,
            outside,
            f.state,
            f.timeout_s,
            f.packets_out,
            f.bytes_out,
            f.packets_in,
            f.bytes_in
        );
    }
    Ok(())
}

/// How a port's container is named to the user: `pid 4242`, `netns /run/netns/x`, or `host`.
fn describe(p: &PortView) -> String {
    match (&p.pid, &p.netns) {
        (Some(pid), _) => format!("pid {pid}"),
        (None, Some(ns)) => format!("netns {ns}"),
        _ => "host".to_string(),
    }
}

/// The daemon may run with another working directory: send it absolute paths.
fn absolute(path: PathBuf) -> Result<PathBuf> {
    std::path::absolute(&path).with_context(|| format!("resolving {}", path.display()))
}
