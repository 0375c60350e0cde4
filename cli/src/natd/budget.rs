//! The daemon's file descriptors, spent as a budget.
//!
//! Every NAT flow holds host sockets (one per UDP flow; a relayed TCP connection two sockets and
//! up to two pipes), and so does every DNS query in flight. A process that runs out of
//! descriptors fails in every corner at once: a container could take the whole network down by
//! opening flows. So descriptors for traffic are leased from a budget: the process's limit less
//! what the daemon needs to keep running (its ports, its control socket, a slack for threads
//! that open files), and a new flow is refused while the budget cannot pay for it — before the
//! last descriptor is gone, never after. A lease is given back when it is dropped, with the
//! sockets it paid for.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Descriptors a relayed TCP connection may hold: two sockets and a pipe (two ends) per
/// direction.
pub const TCP_RELAY: usize = 6;
/// Descriptors a UDP flow holds: its socket.
pub const UDP_FLOW: usize = 1;
/// The part of the descriptors left for traffic that one container may hold: a quarter, as of
/// the flow table, so that one container cannot spend them all.
pub const SHARE_DIVISOR: usize = 4;

/// What the budget looks like, for `vswitch stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetView {
    /// The process's descriptor limit (soft RLIMIT_NOFILE, raised to the hard one at start).
    pub limit: usize,
    /// Kept for the daemon itself: its own descriptors, its ports, a slack for threads.
    pub reserved: usize,
    /// Leased to flows and DNS queries now.
    pub leased: usize,
    /// Flows and queries refused because the budget was spent.
    pub refused: u64,
    /// System calls that failed with EMFILE or ENFILE anyway (another process, or the slack
    /// was too small).
    pub exhausted: u64,
}

#[derive(Debug)]
pub struct FdBudget {
    limit: usize,
    reserved: AtomicUsize,
    leased: AtomicUsize,
    /// What each container holds (only leases for a container's traffic count).
    by_owner: Mutex<HashMap<Ipv4Addr, usize>>,
    refused: AtomicU64,
    exhausted: AtomicU64,
    /// When a shortage was last logged: at most one line per `LOG_EVERY`.
    logged: Mutex<Option<Instant>>,
}

const LOG_EVERY: Duration = Duration::from_secs(10);

/// Descriptors leased from a budget, given back on drop.
#[derive(Debug)]
pub struct Lease {
    budget: Arc<FdBudget>,
    n: usize,
    owner: Option<Ipv4Addr>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.budget.leased.fetch_sub(self.n, Relaxed);
        if let Some(owner) = self.owner {
            let mut by_owner = self.budget.owners();
            if let Some(held) = by_owner.get_mut(&owner) {
                *held = held.saturating_sub(self.n);
                if *held == 0 {
                    by_owner.remove(&owner);
                }
            }
        }
    }
}

impl FdBudget {
    pub fn new(limit: usize) -> Arc<FdBudget> {
        Arc::new(FdBudget {
            limit,
            reserved: AtomicUsize::new(0),
            leased: AtomicUsize::new(0),
            by_owner: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            exhausted: AtomicU64::new(0),
            logged: Mutex::new(None),
        })
    }

    /// Keeps `n` more descriptors for the daemon itself (a port's sockets). Always granted:
    /// the daemon's own needs come before traffic, which is then refused until there is room.
    pub fn reserve(&self, n: usize) {
        self.reserved.fetch_add(n, Relaxed);
    }

    pub fn unreserve(&self, n: usize) {
        let _ = (self.reserved).fetch_update(Relaxed, Relaxed, |r| Some(r.saturating_sub(n)));
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<Ipv4Addr, usize>> {
        self.by_owner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How many descriptors `lease` would grant container `owner` now.
    pub fn room(&self, owner: Ipv4Addr) -> usize {
        let reserved = self.reserved.load(Relaxed);
        let share = self.limit.saturating_sub(reserved) / SHARE_DIVISOR;
        let held = self.owners().get(&owner).copied().unwrap_or(0);
        let all = self
            .limit
            .saturating_sub(reserved + self.leased.load(Relaxed));
        share.saturating_sub(held).min(all)
    }

    /// Leases `n` descriptors for a flow or a query of container `owner` (if it is one
    /// container's), or refuses (counted, and logged now and then) when that would spend past
    /// the limit, or past the container's share of what traffic may spend.
    pub fn lease(self: &Arc<Self>, n: usize, owner: Option<Ipv4Addr>, what: &str) -> Option<Lease> {
        let reserved = self.reserved.load(Relaxed);
        if let Some(owner) = owner {
            let share = (self.limit.saturating_sub(reserved) / SHARE_DIVISOR).max(n);
            let mut by_owner = self.owners();
            let held = by_owner.entry(owner).or_default();
            if *held + n > share {
                drop(by_owner);
                self.refused.fetch_add(1, Relaxed);
                self.log(format_args!(
                    "{owner} holds its share of the file descriptors ({share}): {what} refused"
                ));
                return None;
            }
            *held += n;
        }
        // From here on, dropping the lease gives back both what it took from the owner's share
        // and (if granted) from the whole.
        let lease = Lease {
            budget: self.clone(),
            n,
            owner,
        };
        if self.lease_shared(n, reserved, what) {
            return Some(lease);
        }
        // Not granted: give the owner's share back, nothing of the whole.
        self.leased.fetch_add(n, Relaxed);
        drop(lease);
        None
    }

    /// The global part of a lease: whether it is granted.
    fn lease_shared(&self, n: usize, reserved: usize, what: &str) -> bool {
        let granted = (self.leased).fetch_update(Relaxed, Relaxed, |leased| {
            (reserved + leased + n <= self.limit).then_some(leased + n)
        });
        match granted {
            Ok(_) => true,
            Err(_) => {
                self.refused.fetch_add(1, Relaxed);
                self.log(format_args!(
                    "out of file descriptors for {what}: refused (limit {}, {} kept for the \
                     daemon, {} leased; raise the limit with LimitNOFILE= or ulimit -n)",
                    self.limit,
                    reserved,
                    self.leased.load(Relaxed)
                ));
                false
            }
        }
    }

    /// Leases `n` descriptors that are open already (a flow taken over from another process):
    /// always granted, since refusing would not close them.
    pub fn lease_held(self: &Arc<Self>, n: usize, owner: Option<Ipv4Addr>) -> Lease {
        self.leased.fetch_add(n, Relaxed);
        if let Some(owner) = owner {
            *self.owners().entry(owner).or_default() += n;
        }
        Lease {
            budget: self.clone(),
            n,
            owner,
        }
    }

    /// A system call failed for want of descriptors despite the budget: counted and logged,
    /// never taken for anything else (a closed socket, a container gone).
    pub fn exhausted(&self, what: &str) {
        self.exhausted.fetch_add(1, Relaxed);
        self.log(format_args!("{what}: out of file descriptors (EMFILE)"));
    }

    /// Whether `err` is the process (or the system) running out of descriptors; if so it is
    /// counted as [`FdBudget::exhausted`].
    pub fn check(&self, err: &std::io::Error, what: &str) -> bool {
        let out = matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
        if out {
            self.exhausted(what);
        }
        out
    }

    fn log(&self, line: std::fmt::Arguments<'_>) {
        let mut last = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if last.is_none_or(|t| now.duration_since(t) >= LOG_EVERY) {
            *last = Some(now);
            tracing::warn!("{line}");
        }
    }

    /// Descriptors left for traffic now.
    pub fn available(&self) -> usize {
        let spent = self.reserved.load(Relaxed) + self.leased.load(Relaxed);
        self.limit.saturating_sub(spent)
    }

    pub fn view(&self) -> BudgetView {
        BudgetView {
            limit: self.limit,
            reserved: self.reserved.load(Relaxed),
            leased: self.leased.load(Relaxed),
            refused: self.refused.load(Relaxed),
            exhausted: self.exhausted.load(Relaxed),
        }
    }
}

/// Raises the soft descriptor limit to the hard one and returns it.
pub fn raise_limit() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    let soft = getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft);
    usize::try_from(soft).unwrap_or(usize::MAX)
}

/// Descriptors the process has open now (one read of /proc/self/fd, at start).
pub fn open_now() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_stop_before_the_limit_and_come_back_on_drop() {
        let budget = FdBudget::new(20);
        budget.reserve(10);
        let a = budget.lease(TCP_RELAY, None, "a").unwrap();
        let b = budget.lease(3, None, "b").unwrap();
        assert_eq!(budget.available(), 1);
        assert!(budget.lease(2, None, "c").is_none(), "would pass the limit");
        assert_eq!(budget.view().refused, 1);
        let c = budget.lease(UDP_FLOW, None, "d").unwrap();
        assert_eq!(budget.available(), 0);
        drop(a);
        assert_eq!(budget.available(), 6);
        // The daemon's own needs are granted even when traffic has spent the rest.
        budget.reserve(8);
        assert!(budget.lease(1, None, "e").is_none());
        drop((b, c));
        budget.unreserve(8);
        assert_eq!(budget.view().leased, 0);
        assert_eq!(budget.available(), 10);
    }

    #[test]
    fn one_container_gets_a_share_and_the_others_theirs() {
        let budget = FdBudget::new(110);
        budget.reserve(10);
        let (a, b) = (Ipv4Addr::new(10, 1, 1, 2), Ipv4Addr::new(10, 1, 1, 3));
        // A quarter of the 100 left for traffic: 25 each.
        let held: Vec<Lease> = (0..4)
            .map(|_| budget.lease(TCP_RELAY, Some(a), "a").unwrap())
            .collect();
        assert!(
            budget.lease(TCP_RELAY, Some(a), "a").is_none(),
            "past a's share"
        );
        assert!(
            budget.lease(UDP_FLOW, Some(a), "a").is_some(),
            "24 + 1 is within it"
        );
        assert!(
            budget.lease(TCP_RELAY, Some(b), "b").is_some(),
            "b is not held back by a"
        );
        assert_eq!(budget.view().refused, 1);
        drop(held);
        assert!(
            budget.lease(TCP_RELAY, Some(a), "a").is_some(),
            "given back on drop"
        );
        // A lease refused by the whole gives the owner's share back.
        let all = budget.lease(budget.available(), None, "all").unwrap();
        assert!(budget.lease(1, Some(b), "b").is_none());
        drop(all);
        assert_eq!(budget.owners().get(&b), None, "b holds nothing");
    }

    #[test]
    fn emfile_is_counted() {
        let budget = FdBudget::new(10);
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        assert!(budget.check(&emfile, "accept"));
        let reset = std::io::Error::from_raw_os_error(libc::ECONNRESET);
        assert!(!budget.check(&reset, "accept"));
        assert_eq!(budget.view().exhausted, 1);
    }
}
