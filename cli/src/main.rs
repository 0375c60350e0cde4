//! `vswitch`: a userspace virtual switch for Linux containers.

mod bpf;
mod cni;
mod commands;
mod control;
mod daemon;
mod datapath;
mod kernel;
mod natd;
mod observe;
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
    Run(RunArgs),
    /// Attach a container's network namespace to the switch.
    Plug(PlugArgs),
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
    /// List the learned MAC addresses; or forget them (--flush), all or one port's.
    Fdb {
        #[arg(long)]
        json: bool,
        /// Forget the MACs learned on PORT (a host interface as `vswitch ls` shows it, or the
        /// TAP), or every learned MAC without PORT. Frames to them are flooded until they are
        /// learned again.
        #[arg(long, value_name = "PORT")]
        flush: Option<Option<String>>,
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
    /// List the NAT's connection-tracking table (like `conntrack -L`), or delete flows from it
    /// (`-D` with filters, `-F` for all): their sockets close and relayed TCP connections are
    /// reset on both sides.
    Conntrack(ConntrackArgs),
    /// Capture the frames that cross ports, for tcpdump and tshark (pcapng, one interface per
    /// port) or as text. The kernel fast path steps aside for a captured port while the capture
    /// runs, so nothing is missed. Ctrl-C ends it.
    Capture(CaptureArgs),
    /// vswitch as a CNI network for container runtimes (podman, containerd, Kubernetes).
    Cni {
        #[command(subcommand)]
        command: CniCommand,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// The containers' subnet, e.g. 10.1.1.0/24.
    #[arg(long)]
    pub subnet: Ipv4Net,
    /// The gateway address held by the TAP (default: the subnet's first host address).
    #[arg(long)]
    pub gateway: Option<Ipv4Addr>,
    /// Name of the TAP device, the host's port on the switch.
    #[arg(long, default_value = "vsw0")]
    pub tap: String,
    /// MTU of the TAP and of every container interface.
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(576..=65521))]
    pub mtu: u32,
    /// Seconds after which an unused learned MAC address is forgotten.
    #[arg(long, default_value_t = 300)]
    pub fdb_age: u64,
    /// Most MAC addresses the forwarding table holds.
    #[arg(long, default_value_t = 8192)]
    pub fdb_size: usize,
    /// Datapath worker threads (default: one per core).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Upstream DNS resolver for the containers (repeatable; default: the host's).
    #[arg(long)]
    pub dns: Vec<std::net::IpAddr>,
    /// Run no DNS forwarder on the gateway address.
    #[arg(long)]
    pub no_dns: bool,
    /// Most NAT flows tracked at once; new flows are refused past it (default: what the
    /// process's descriptor limit can carry, at most 65536).
    #[arg(long)]
    pub max_flows: Option<usize>,
    /// Most NAT flows one container may start at once; past it its new flows are refused
    /// (default: a quarter of the table, at least 256).
    #[arg(long)]
    pub max_flows_per_container: Option<usize>,
    /// Most TCP connections of one container still connecting at once (default 1024, or
    /// half of what the container's share of the descriptors pays for, if less).
    #[arg(long)]
    pub max_half_open: Option<usize>,
    /// How a port's frames are spread over the workers: bulk frames by flow and the rest by
    /// the CPU that sent them (auto), all by CPU, or all by flow hash.
    #[arg(long, value_enum, default_value_t = bpf::fanout::Spread::Auto)]
    pub spread: bpf::fanout::Spread,
    /// Microseconds a worker keeps polling for frames after its last one before it sleeps
    /// (0: sleep at once). Cuts request/response latency; costs CPU only while traffic flows.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub poll_us: u64,
    /// Where the kernel fast path for frames between learned containers goes on each port:
    /// a tcx link where the kernel has them, else tc (auto); a tcx link (tcx, Linux 6.6); a
    /// clsact qdisc with a cls_bpf filter (tc, Linux 5.10); nowhere, the daemon switching
    /// every frame (off). See ARCHITECTURE.md.
    #[arg(long, value_enum, default_value_t = bpf::fastpath::Mode::Auto)]
    pub fast_path: bpf::fastpath::Mode,
    /// The same as --fast-path off.
    #[arg(long, conflicts_with = "fast_path")]
    pub no_fast_path: bool,
    /// How containers' outgoing TCP connections reach the outside: relayed through the host's
    /// sockets (relay), or translated in the kernel from their SYN on, as a kernel NAT does,
    /// where the fast path serves the container and the route leaves by an interface of the
    /// host (kernel; else relayed). See ARCHITECTURE.md.
    #[arg(long, value_enum, default_value_t = natd::TcpNat::Kernel)]
    pub tcp_nat: natd::TcpNat,
    /// Take over from the daemon running on the control socket (an upgrade without loss:
    /// started with the same arguments, this process receives its sockets and tables and
    /// serves on; the old one exits).
    #[arg(long)]
    pub takeover: bool,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics (e.g. 127.0.0.1:9477).
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<std::net::SocketAddr>,
    /// Which log lines to write (error, warn, info, debug, trace, or a filter such as
    /// `warn,vswitch::natd=debug`); default: RUST_LOG, else info.
    #[arg(long)]
    pub log_level: Option<String>,
    #[command(flatten)]
    pub security: RunSecurityArgs,
}

#[derive(Args)]
pub struct PlugArgs {
    #[command(flatten)]
    pub target: TargetArg,
    /// Address to give the container (default: the next free one).
    #[arg(long)]
    pub ip: Option<Ipv4Addr>,
    /// MAC address of the container's interface (default: derived from its address).
    #[arg(long, value_parser = control::unicast_mac)]
    pub mac: Option<vswitch_switch::MacAddr>,
    /// Name of the interface inside the container.
    #[arg(long)]
    pub ifname: Option<IfName>,
    /// Publish a container port on the host: [HOSTIP:]HOSTPORT:CPORT[/tcp|/udp] (repeatable).
    #[arg(long, short = 'p')]
    pub publish: Vec<PublishSpec>,
    #[command(flatten)]
    pub security: SecurityArgs,
    /// Print the new port as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ConntrackArgs {
    #[arg(long)]
    pub json: bool,
    /// Delete the flows the filters select (at least one filter).
    #[arg(short = 'D', long)]
    pub delete: bool,
    /// Delete every flow.
    #[arg(short = 'F', long, conflicts_with_all = ["delete", "proto", "src", "sport", "dst", "dport"])]
    pub flush: bool,
    /// Only flows of this protocol.
    #[arg(short = 'p', long, value_enum)]
    pub proto: Option<control::FlowProto>,
    /// Only flows of the container with this address (the flow's inside end).
    #[arg(short = 's', long, visible_alias = "container")]
    pub src: Option<Ipv4Addr>,
    /// Only flows of this container port (ICMP: the echo identifier).
    #[arg(long)]
    pub sport: Option<u16>,
    /// Only flows with this remote address (the destination of an outgoing flow, the
    /// client of a published one).
    #[arg(short = 'd', long)]
    pub dst: Option<Ipv4Addr>,
    /// Only flows with this remote port.
    #[arg(long)]
    pub dport: Option<u16>,
}

#[derive(Args)]
pub struct CaptureArgs {
    /// Ports as `vswitch ls` shows them: a port number, a host interface (the TAP's name for
    /// the host's port), pid:PID, or a namespace path (repeatable).
    #[arg(value_parser = parse_port_ref)]
    pub ports: Vec<control::PortRef>,
    /// Every port, the TAP included (those plugged when the capture starts).
    #[arg(long, conflicts_with_all = ["ports", "pid"])]
    pub all: bool,
    /// The port of the container with this pid (repeatable).
    #[arg(long)]
    pub pid: Vec<u32>,
    /// Write the frames to FILE (`-`: stdout, e.g. `-w - | tcpdump -r -`) instead of
    /// printing one line per frame.
    #[arg(short = 'w', value_name = "FILE")]
    pub write: Option<PathBuf>,
    /// Stop after COUNT frames.
    #[arg(short = 'c', value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Only frames of this protocol: tcp, udp, icmp or arp.
    #[arg(long)]
    pub proto: Option<vswitch_capture::Proto>,
    /// Only frames from or to this IPv4 address (ARP's sender or target too).
    #[arg(long)]
    pub host: Option<Ipv4Addr>,
    /// Only TCP or UDP frames from or to this port.
    #[arg(long)]
    pub port: Option<u16>,
    /// Bytes kept of each frame (default: all of it, up to 262144).
    #[arg(long, short = 's', value_parser = clap::value_parser!(u32).range(i64::from(control::MIN_SNAPLEN)..=i64::from(control::MAX_SNAPLEN)))]
    pub snaplen: Option<u32>,
    /// File format with -w.
    #[arg(long, value_enum, default_value_t = commands::capture::Format::Pcapng)]
    pub format: commands::capture::Format,
}

#[derive(Subcommand)]
pub enum CniCommand {
    /// Install the CNI plugin and a network configuration for the running daemon's subnet.
    Install {
        /// The network's name (`podman run --network NAME`).
        #[arg(long, default_value = "vswitch")]
        name: String,
        /// Where the runtime looks for CNI plugins (`/opt/cni/bin` for containerd and
        /// Kubernetes).
        #[arg(long, default_value = "/usr/lib/cni")]
        bin_dir: PathBuf,
        /// Where the runtime reads network configurations.
        #[arg(long, default_value = "/etc/cni/net.d")]
        conf_dir: PathBuf,
    },
}

fn parse_port_ref(s: &str) -> Result<control::PortRef, control::ParseError> {
    s.parse()
}

fn main() -> ExitCode {
    if cni::invoked() {
        return cni::main();
    }
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
