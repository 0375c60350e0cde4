//! `vswitch run`: the daemon. It starts everything (`startup`), serves control requests on the
//! manager thread (`manager`, `plug`, `views`), watches its containers (`lifecycle`) and
//! removes everything it made when it is told to stop.

use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;

use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, Signal};

use crate::control::{self, Call, NoArgs, Reply, Request};
use crate::natd::budget;
use crate::observe;

pub use cleanup::cleanup;
pub use config::Config;
use ipam::Ipam;
use manager::Stop;

mod adopt;
mod attach;
mod capture;
mod cleanup;
mod config;
mod counters;
mod error;
mod handover;
pub mod ipam;
mod lifecycle;
mod manager;
mod names;
mod operate;
mod plug;
mod plumbing;
mod startup;
mod state;
mod systemd;
mod views;

pub fn run(cfg: Config) -> Result<()> {
    // Signals are taken synchronously by the main thread (sigwait); block them before any other
    // thread exists so that every thread inherits the mask. SIGTERM and SIGINT remove the
    // network; SIGUSR2 leaves it for the next daemon to take over.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGUSR2] {
        signals.add(signal);
    }
    signals.thread_block().context("blocking signals")?;

    // Every NAT flow and published connection holds host sockets: allow as many descriptors
    // as the hard limit permits rather than the usual soft 1024, and budget them.
    let fd_limit = budget::raise_limit();
    let metrics = (cfg.metrics)
        .map(|addr| observe::http::bind(addr).with_context(|| format!("metrics endpoint {addr}")))
        .transpose()?;
    if cfg.takeover {
        return handover::take_over(cfg, signals, fd_limit, metrics);
    }
    let ipam = Ipam::new(cfg.subnet, cfg.gateway)?;
    let listener = control::bind(&cfg.control)
        .with_context(|| format!("control socket {}", cfg.control.display()))?;
    let (manager, handoff) = match startup::start(&cfg, ipam, fd_limit, listener.as_raw_fd()) {
        Ok(started) => started,
        Err(e) => {
            let _ = std::fs::remove_file(&cfg.control);
            return Err(e);
        }
    };
    serve(&cfg, listener, metrics, manager, handoff, signals, || {
        systemd::notify("READY=1")
    })
}

/// Serves the control socket with the manager until a signal says to stop; `ready` runs once
/// everything serves (it tells systemd).
fn serve(
    cfg: &Config,
    listener: UnixListener,
    metrics: Option<TcpListener>,
    manager: manager::Manager,
    handoff: handover::Handoff,
    signals: SigSet,
    ready: impl FnOnce(),
) -> Result<()> {
    let (calls_tx, calls_rx) = crossbeam_channel::bounded::<Call>(64);
    let (stop_tx, stop_rx) = crossbeam_channel::bounded::<Stop>(1);
    let hold = handoff.hold.clone();
    if let Some(metrics) = metrics {
        let calls = calls_tx.clone();
        tracing::info!(address = %metrics.local_addr()?, "serving metrics on /metrics");
        std::thread::Builder::new()
            .name("vswitch-metrics".into())
            .spawn(move || observe::http::serve(metrics, || scrape(&calls)))?;
    }
    std::thread::Builder::new()
        .name("vswitch-ctl".into())
        .spawn(move || control::serve(listener, calls_tx, hold))?;
    let manager = std::thread::Builder::new()
        .name("vswitch-mgr".into())
        .spawn(move || manager.run(calls_rx, stop_rx, handoff))?;
    tracing::info!(
        subnet = %cfg.subnet,
        tap = %cfg.tap,
        gateway = %cfg.gateway,
        control = %cfg.control.display(),
        "serving"
    );
    ready();

    let signal = signals.wait().context("waiting for signals")?;
    let how = match signal {
        Signal::SIGUSR2 => Stop::Keep,
        _ => Stop::Remove,
    };
    tracing::info!(
        signal = %signal,
        "shutting down, {}",
        match how {
            Stop::Keep => "keeping the network for the next daemon",
            Stop::Remove => "removing the network",
        }
    );
    systemd::notify("STOPPING=1");
    let _ = stop_tx.send(how);
    let _ = manager.join();
    let _ = std::fs::remove_file(&cfg.control);
    Ok(())
}

/// The metrics page: the manager's snapshot (the one `vswitch stats` prints), rendered.
fn scrape(calls: &crossbeam_channel::Sender<Call>) -> Result<String, String> {
    let (tx, rx) = crossbeam_channel::bounded(1);
    let call = Call {
        request: Request::Stats(NoArgs {}),
        reply: tx,
        conn: None,
        capture: None,
    };
    let gone = || "the daemon is shutting down".to_string();
    calls.send(call).map_err(|_| gone())?;
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(Ok(Reply::Stats(stats))) => Ok(observe::metrics::render(&stats)),
        Ok(Ok(_)) => Err("the manager answered something else than its stats".into()),
        Ok(Err(f)) => Err(f.message),
        Err(_) => Err(gone()),
    }
}
