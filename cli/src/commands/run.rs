//! `vswitch run`: the daemon's configuration from the command line, and the daemon started
//! with it in the foreground.

use std::path::PathBuf;

use anyhow::Result;

use crate::bpf::fastpath::Mode;
use crate::{daemon, observe, RunArgs};

pub fn daemon(control: PathBuf, args: RunArgs) -> Result<()> {
    observe::log::init(args.log_level.as_deref())?;
    daemon::run(config(control, args))
}

/// The daemon's configuration: the arguments, with their defaults settled.
fn config(control: PathBuf, args: RunArgs) -> daemon::Config {
    daemon::Config {
        subnet: args.subnet,
        gateway: (args.gateway).unwrap_or_else(|| args.subnet.first_host()),
        tap: args.tap,
        mtu: args.mtu,
        control,
        fdb_age_secs: args.fdb_age,
        fdb_size: args.fdb_size,
        workers: (args.workers)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        dns: args.dns,
        no_dns: args.no_dns,
        max_flows: args.max_flows,
        max_flows_per_container: args.max_flows_per_container,
        max_half_open: args.max_half_open,
        spread: args.spread,
        poll: std::time::Duration::from_micros(args.poll_us),
        fast_path: if args.no_fast_path {
            Mode::Off
        } else {
            args.fast_path
        },
        tcp_nat: args.tcp_nat,
        takeover: args.takeover,
        metrics: args.metrics,
        isolate: args.security.isolate,
        max_macs_per_port: args.security.max_macs_per_port,
    }
}
