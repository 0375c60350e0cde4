//! Relayed connections handed to another process: both sockets, both pipes with the bytes they
//! hold, what each direction has finished, whose they are. A child of `relay`, whose pairs it
//! reads and writes.

use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};

use crate::kernel::fdpass::{FdIn, FdOut};

use super::{service, token, Flow, Pair, Pipe, RelayPool};

/// One relayed pair, its descriptors named by index.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairSnap {
    pub socks: [usize; 2],
    pub owner: Ipv4Addr,
    pub flows: [FlowSnap; 2],
    pub wants_out: [bool; 2],
}

/// One direction of a pair.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowSnap {
    /// The pipe's read and write ends, if it has one.
    pub pipe: Option<[usize; 2]>,
    /// Bytes in the pipe not yet written on.
    pub queued: usize,
    pub finished: bool,
}

impl RelayPool {
    /// Every pair, its descriptors listed in `fds`. The workers must be paused (no pair moves
    /// meanwhile) and the pool kept alive until the descriptors are sent.
    pub fn snapshot(&self, fds: &mut FdOut) -> Vec<PairSnap> {
        let mut out = Vec::new();
        for shared in self.threads.iter() {
            let pairs = shared.pairs.lock().unwrap_or_else(|e| e.into_inner());
            for pair in pairs.map.values() {
                let socks = [fds.add(&pair.socks[0]), fds.add(&pair.socks[1])];
                let mut flow = |f: &Flow| FlowSnap {
                    pipe: (f.pipe.as_ref()).map(|p| [fds.add(&p.read), fds.add(&p.write)]),
                    queued: f.queued,
                    finished: f.finished,
                };
                let flows = [flow(&pair.flows[0]), flow(&pair.flows[1])];
                out.push(PairSnap {
                    socks,
                    owner: pair.owner,
                    flows,
                    wants_out: pair.wants_out,
                });
            }
        }
        out
    }

    /// Takes a pair another process relayed, as it was: registered with a worker (round
    /// robin), each socket watched as the old process watched it. `done` runs when it ends.
    /// Nothing moves until the workers run and [`RelayPool::kick`] looks at every pair.
    pub fn adopt(
        &self,
        snap: &PairSnap,
        fds: &mut FdIn,
        done: impl FnOnce() + Send + 'static,
    ) -> std::io::Result<()> {
        let socks = [
            TcpStream::from(fds.take(snap.socks[0])?),
            TcpStream::from(fds.take(snap.socks[1])?),
        ];
        let mut flows: [Flow; 2] = Default::default();
        for (flow, s) in flows.iter_mut().zip(&snap.flows) {
            if let Some([read, write]) = s.pipe {
                flow.pipe = Some(Pipe {
                    read: fds.take(read)?,
                    write: fds.take(write)?,
                });
            }
            flow.queued = s.queued;
            flow.finished = s.finished;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        let shared = &self.threads[i];
        let mut pairs = shared.pairs.lock().unwrap_or_else(|e| e.into_inner());
        let id = pairs.next_id;
        pairs.next_id += 1;
        for (side, s) in socks.iter().enumerate() {
            let mut events = libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET;
            if snap.wants_out[side] {
                events |= libc::EPOLLOUT;
            }
            shared
                .epoll
                .add(s.as_raw_fd(), events as u32, token(id, side))?;
        }
        let pair = Pair {
            socks,
            owner: snap.owner,
            flows,
            done: Some(Box::new(done)),
            wants_out: snap.wants_out,
            closed_first: None,
        };
        pairs.map.insert(id, pair);
        Ok(())
    }

    /// Moves whatever can move on every pair once: bytes a pipe held or a socket received
    /// while no process served them raise no new edge-triggered event.
    pub fn kick(&self) {
        for shared in self.threads.iter() {
            let ids: Vec<u64> = {
                let pairs = shared.pairs.lock().unwrap_or_else(|e| e.into_inner());
                pairs.map.keys().copied().collect()
            };
            for id in ids {
                service(shared, id);
            }
        }
    }

    /// Pairs being relayed now.
    pub fn len(&self) -> usize {
        (self.threads.iter())
            .map(|s| s.pairs.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{pair, pool};
    use super::*;
    use crate::kernel::fdpass::FdIn;
    use std::io::{Read, Write};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::time::Duration;

    /// Duplicates of the listed descriptors, as another process would receive them.
    fn received(out: &FdOut) -> FdIn {
        // SAFETY: dup of descriptors the test holds open; each duplicate is owned once.
        let dup = |&fd: &std::os::fd::RawFd| unsafe { OwnedFd::from_raw_fd(libc::dup(fd)) };
        FdIn::new(out.raw().iter().map(dup).collect())
    }

    #[test]
    fn a_pair_taken_over_goes_on_with_the_bytes_its_pipe_held() {
        // The old pool is served by hand only: what it did not move stays in its sockets and
        // pipes when it hands over.
        let epoll = std::sync::Arc::new(crate::kernel::epoll::Epoll::new().unwrap());
        let old = RelayPool::new(&[epoll]);
        let (client, relay_a) = pair();
        let (relay_b, mut server) = pair();
        // Small buffers on the server's side, so that the pipe has to hold what they cannot.
        let small: libc::c_int = 64 * 1024;
        for (s, opt) in [(&server, libc::SO_RCVBUF), (&relay_b, libc::SO_SNDBUF)] {
            // SAFETY: `small` is a live c_int of the size given.
            let ret = unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    &small as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            assert_eq!(ret, 0);
        }
        old.relay(relay_a, relay_b, Ipv4Addr::new(10, 1, 1, 2), || {});
        let data: Vec<u8> = (0..6_000_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let (mut client, data) = (client.try_clone().unwrap(), data.clone());
            std::thread::spawn(move || {
                client.write_all(&data).unwrap();
                client.shutdown(std::net::Shutdown::Write).unwrap();
            })
        };
        // The old process moves what it can until the server's side is full.
        std::thread::sleep(Duration::from_millis(200));
        let id = *old.threads[0]
            .pairs
            .lock()
            .unwrap()
            .map
            .keys()
            .next()
            .unwrap();
        service(&old.threads[0], id);
        let mut out = FdOut::default();
        let snaps = old.snapshot(&mut out);
        assert_eq!(snaps.len(), 1);
        assert!(
            snaps[0].flows[0].queued > 0,
            "the pipe holds bytes: {:?}",
            snaps[0]
        );
        let mut fds = received(&out);
        let new = pool(2);
        let (tx, rx) = std::sync::mpsc::channel();
        new.adopt(&snaps[0], &mut fds, move || tx.send(()).unwrap())
            .unwrap();
        assert_eq!(fds.unused(), 0);
        drop(old); // the old process exits: its descriptors close
        new.kick();
        server
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).unwrap();
        writer.join().unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes differ");
        drop((server, client));
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }
}
