//! The running daemon's side of a hand-over: pause, describe, send, and exit once the new
//! process serves; or resume if it never says it is ready.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::bounded;

use crate::control::{encode_response, ErrorCode, Failure, HandoverArgs, HandoverOffer, Reply};
use crate::datapath::{now_ms, TAP_PORT};
use crate::kernel::fdpass::{FdOut, FdStream};
use crate::natd::NatJob;

use super::super::manager::Manager;
use super::super::systemd;
use super::{CounterSnap, FdbSnap, Handoff, Network, PortSnap, Snapshot, FORMAT, TIMEOUT};

/// How long the workers and the NAT service may take to pause.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);

/// The new process must read this daemon's hand-over format and serve the same network.
fn check_successor(h: &Handoff, args: HandoverArgs, pid: u32) -> Result<(), Failure> {
    if args.format != FORMAT {
        return Err(Failure::new(
            ErrorCode::Version,
            format!(
                "hand-over format mismatch: the running daemon (pid {pid}) hands over in \
                 format {FORMAT}, the new process reads format {}: no live upgrade between \
                 these two versions; stop the daemon with `vswitch stop --keep` and start \
                 the new one without --takeover (containers keep talking to each other \
                 meanwhile)",
                args.format
            ),
        ));
    }
    let theirs: Network = serde_json::from_value(args.network).map_err(|e| {
        Failure::new(
            ErrorCode::Invalid,
            format!("malformed handover request: {e}"),
        )
    })?;
    if theirs != h.network {
        return Err(Failure::new(
            ErrorCode::Invalid,
            format!(
                "the new process was started for another network ({}) than the running \
                 daemon's ({}): start it with the same arguments",
                theirs.describe(),
                h.network.describe()
            ),
        ));
    }
    Ok(())
}

impl Manager {
    /// Serves a `handover` request on `conn`. Returns only if the daemon goes on serving: with
    /// the failure to answer (nothing was sent yet), or `Reply::Handover` (the connection was
    /// answered already, and the hand-over failed: resumed). A hand-over that succeeds ends
    /// the process.
    pub fn hand_over(
        &mut self,
        h: &Handoff,
        args: HandoverArgs,
        conn: UnixStream,
    ) -> Result<Reply, Failure> {
        let pid = std::process::id();
        check_successor(h, args, pid)?;
        let started = Instant::now();
        tracing::info!("handing over to a new process");
        h.hold.store(true, Ordering::SeqCst);
        if let Err(e) = self.datapath.pause(PAUSE_TIMEOUT) {
            h.hold.store(false, Ordering::SeqCst);
            return Err(Failure::new(ErrorCode::Failed, format!("pausing: {e}")));
        }
        // The kernel opens no connection the snapshot would miss: their SYNs wait with the rest.
        let offloads = self.offloads.clone();
        let hold = |on| offloads.as_ref().map(|o| o.hold(on));
        hold(true);
        let (reply_tx, reply_rx) = bounded(1);
        let (resume, resumed) = bounded::<()>(1);
        self.nat_jobs.send(NatJob::Pause {
            fds: FdOut::default(),
            reply: reply_tx,
            resume: resumed,
        });
        let Ok((service, fds)) = reply_rx.recv_timeout(PAUSE_TIMEOUT) else {
            drop(resume);
            hold(false);
            self.datapath.resume();
            h.hold.store(false, Ordering::SeqCst);
            return Err(Failure::new(
                ErrorCode::Failed,
                "pausing: the NAT service did not answer",
            ));
        };
        let (snapshot, fds, _held) = self.snapshot(h, service, fds);
        let paused = started.elapsed();
        let offer = HandoverOffer {
            format: FORMAT,
            pid,
            bytes: 0,
            fds: fds.len(),
        };
        match offer_and_wait(&conn, &snapshot, &fds, offer.clone(), started + TIMEOUT) {
            Ok(()) => {
                // Committed: the new process serves. Exit without running any destructor,
                // which would delete what the new process now holds.
                tracing::info!(
                    "handed over ({} ports, {} flows, {} relayed connections, {} \
                     descriptors; paused {:.1} ms before sending, {:.1} ms in all): exiting",
                    snapshot.ports.len(),
                    self.nat.stats().flows,
                    snapshot.pairs.len(),
                    fds.len(),
                    paused.as_secs_f64() * 1e3,
                    started.elapsed().as_secs_f64() * 1e3
                );
                let _ = std::io::stdout().flush();
                std::process::exit(0);
            }
            Err(e) => {
                tracing::warn!("hand-over failed ({e}): resuming");
                let _ = resume.send(());
                hold(false);
                self.datapath.resume();
                h.hold.store(false, Ordering::SeqCst);
                Ok(Reply::Handover(offer))
            }
        }
    }

    /// Everything the new process needs, its descriptors listed after the NAT service's.
    fn snapshot(
        &self,
        h: &Handoff,
        service: crate::natd::ServiceSnap,
        mut fds: FdOut,
    ) -> (Snapshot, FdOut, Vec<std::os::fd::OwnedFd>) {
        let table = self.datapath.ports();
        let queues = |id: vswitch_switch::PortId, fds: &mut FdOut| {
            (table.get(usize::from(id.0)).and_then(|p| p.as_ref()))
                .map(|p| p.queues.iter().map(|q| fds.add_raw(q.fd())).collect())
                .unwrap_or_default()
        };
        let counters = |id: vswitch_switch::PortId| {
            (table.get(usize::from(id.0)).and_then(|p| p.as_ref()))
                .map_or_else(CounterSnap::default, |p| CounterSnap::of(&p.counters))
        };
        let control = fds.add_raw(h.control);
        let tap = queues(TAP_PORT, &mut fds);
        let ports = (self.containers.iter())
            .map(|c| PortSnap {
                record: super::super::adopt::record(c),
                queues: queues(c.port, &mut fds),
                counters: counters(c.port),
            })
            .collect();
        let spread = (h.spread.as_ref()).map(|s| [fds.add_raw(s.fd()), fds.add_raw(s.mode_fd())]);
        let icmp = self.nat_jobs.icmp_fd().map(|fd| fds.add_raw(fd));
        let dns = h.dns.map(|[udp, tcp]| [fds.add_raw(udp), fds.add_raw(tcp)]);
        let pairs = self.datapath.relays().snapshot(&mut fds);
        let now = now_ms();
        // What the kernel carried counts on the flows before the table is described.
        let (kernel, held) = match &self.offloads {
            Some(offloads) => {
                offloads.report(&self.nat, now);
                let (snap, held) = offloads.snapshot(&mut fds);
                (Some(snap), held)
            }
            None => (None, Vec::new()),
        };
        let fdb = (self.datapath.switch().fdb_entries(now).into_iter())
            .map(|e| FdbSnap {
                mac: e.mac.to_string(),
                port: e.port.0,
                age_ms: e.age_ms,
            })
            .collect();
        let snapshot = Snapshot {
            format: FORMAT,
            pid: std::process::id(),
            network: h.network.clone(),
            control,
            tap,
            tap_index: self.tap_index,
            tap_counters: counters(TAP_PORT),
            ports,
            spread,
            icmp,
            dns,
            nat: self.nat.snapshot(),
            service,
            pairs,
            fdb,
            last_expiry: self.last_expiry,
            leased: self.budget.view().leased,
            notify_socket: systemd::socket().map(|s| s.to_string_lossy().into_owned()),
            watchdog_usec: systemd::watchdog_usec(),
            kernel,
        };
        (snapshot, fds, held)
    }
}

/// Sends the offer, the snapshot and the descriptors on `conn`, then waits for `ready` (until
/// `deadline`), answers `go` and waits a moment for `done` (the new process has told systemd it
/// is the service now). `Ok` once `go` is sent: the hand-over is committed.
fn offer_and_wait(
    conn: &UnixStream,
    snapshot: &Snapshot,
    fds: &FdOut,
    mut offer: HandoverOffer,
    deadline: Instant,
) -> std::io::Result<()> {
    conn.set_write_timeout(Some(TIMEOUT))?;
    let json = serde_json::to_vec(snapshot).map_err(std::io::Error::other)?;
    offer.bytes = json.len();
    let mut line = encode_response(&Ok(Reply::Handover(offer)));
    line.push(b'\n');
    let mut w = conn;
    w.write_all(&line)?;
    w.write_all(&(json.len() as u64).to_be_bytes())?;
    w.write_all(&json)?;
    fds.send(conn)?;
    let mut stream = FdStream::new(conn, Some(deadline));
    let answer = stream.line(64)?;
    if answer != "ready" {
        return Err(std::io::Error::other(format!(
            "the new process answered {answer:?}"
        )));
    }
    w.write_all(b"go\n")?;
    // Committed. The new process starts serving now; it says `done` once systemd (if any)
    // knows it as the service's main process, so that this one's exit is not taken for the
    // service's end. Without an answer in time, exit all the same.
    let mut stream = FdStream::new(conn, Some(Instant::now() + TIMEOUT));
    let _ = stream.line(64);
    Ok(())
}
