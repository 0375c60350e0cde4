//! `vswitch`: a userspace virtual switch for Linux containers.

mod bpf;
mod commands;
mod control;
mod daemon;
mod datapath;
mod kernel;
mod natd;
mod ports;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::control::{IfName, PublishSpec};
use crate::daemon::ipam::Ipv4Net;

#[derive(Parser)]
#[command(
    name = "vswitch",
    version,
    about = "A userspace virtual switch for Linux containers"
)]
pub struct Cli {
    #[command(flatten)]
    pub control: ControlArg,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Clone)]
pub struct ControlArg {
    /// Control socket of the daemon.
    #[arg(
        long,
        env = "VSWITCH_CONTROL",
        default_value = "/run/vswitch/vswitch.sock",
        global = true
    )]
    pub control: PathBuf,
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct TargetArg {
    /// Process whose network namespace is the container's.
    pub pid: Option<u32>,
    /// A named network namespace file instead of a pid (e.g. /run/netns/NAME).
    #[arg(long)]
    pub netns: Option<PathBuf>,
}

/// Port security of a plugged container (README.md, "Security"). By default the switch drops
/// (and counts) every frame from the container whose source MAC, IPv4 source or ARP sender is
/// not the container's own, and any EtherType but IPv4 and ARP.
#[derive(Args)]
pub struct SecurityArgs {
    /// No source checks at all: for a container that routes or bridges other hosts.
    #[arg(long)]
    pub trusted: bool,
    /// The container reaches the gateway, the host and the outside, but no other container,
    /// and is reached by none.
    #[arg(long)]
    pub isolated: bool,
    /// Let the container also send from this MAC (repeatable).
    #[arg(long, value_name = "MAC", value_parser = control::unicast_mac)]
    pub allow_mac: Vec<vswitch_switch::MacAddr>,
    /// Let the container also send from addresses of this prefix, ADDR/LEN (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub allow_ip: Vec<vswitch_switch::Ipv4Prefix>,
    /// Let the container also send this EtherType, in hex, e.g. 86dd for IPv6 (repeatable).
    #[arg(long, value_name = "HEX", value_parser = control::parse_ethertype)]
    pub allow_ethertype: Vec<u16>,
    /// Most MAC addresses the switch learns on the port besides the container's own (default:
    /// the --allow-mac ones; --max-macs-per-port of `run` for a trusted port).
    #[arg(long, value_name = "N")]
    pub max_macs: Option<u32>,
}

/// Port security for the whole switch.
#[derive(Args)]
pub struct RunSecurityArgs {
    /// Isolate every container plugged: each reaches the gateway, the host and the outside,
    /// but no other container (as Docker's enable_icc=false).
    #[arg(long)]
    pub isolate: bool,
    /// Most MAC addresses the switch learns on a trusted port (and the TAP) besides its own.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_macs_per_port: u32,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Most NAT flows tracked at once; new flows are refused past it (default: what the
        /// process's descriptor limit can carry, at most 65536).
        #[arg(long)]
        max_flows: Option<usize>,
        /// Most NAT flows one container may start at once; past it its new flows are refused
        /// (default: a quarter of the table, at least 256).
        #[arg(long)]
        max_flows_per_container: Option<usize>,
        /// Most TCP connections of one container still connecting at once (default 1024).
        #[arg(long)]
        max_half_open: Option<usize>,
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
        #[command(flatten)]
        security: RunSecurityArgs,
    },
    /// Attach a container's network namespace to the switch.
    Plug {
        #[command(flatten)]
        target: TargetArg,
        /// Address to give the container (default: the next free one).
        #[arg(long)]
        ip: Option<Ipv4Addr>,
        /// MAC address of the container's interface (default: derived from its address).
        #[arg(long, value_parser = control::unicast_mac)]
        mac: Option<vswitch_switch::MacAddr>,
        /// Name of the interface inside the container.
        #[arg(long)]
        ifname: Option<IfName>,
        /// Publish a container port on the host: [HOSTIP:]HOSTPORT:CPORT[/tcp|/udp] (repeatable).
        #[arg(long, short = 'p')]
        publish: Vec<PublishSpec>,
        #[command(flatten)]
        security: SecurityArgs,
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
    /// Stop the daemon: it removes every port, the TAP and its state, or with --keep leaves the
    /// network for the next daemon to take over.
    Stop {
        /// Leave the network in place (veths, TAP, state file) for the next `vswitch run`.
        #[arg(long)]
        keep: bool,
    },
    /// Remove what a daemon that no longer runs left behind: its ports, its TAP, its state.
    Cleanup,
    /// The daemon's counters: descriptors, switch, NAT.
    Stats {
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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // Like every other failure: one line on stderr saying what is wrong.
            let text = e.render().to_string();
            let what: Vec<&str> = (text.lines().map(str::trim))
                .take_while(|l| !l.is_empty() && !l.starts_with("Usage:"))
                .collect();
            eprintln!("vswitch: {}", what.join(" ").trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    if !matches!(cli.command, Command::Run { .. }) {
        // A command whose output goes to a closed pipe (`vswitch fdb | head`) ends the way
        // other Unix tools do, killed by SIGPIPE, instead of failing on the write. The daemon
        // keeps Rust's default (ignored): a client that hangs up must never kill it.
        // SAFETY: setting a signal's disposition to the default has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: what failed and why.
            eprintln!("vswitch: {e:#}");
            ExitCode::FAILURE
        }
    }
}
