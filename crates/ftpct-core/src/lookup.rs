//! A bound on the conntrack lookups that unknown packets cost the I/O shell.
//!
//! A packet on a control port that belongs to no tracked session makes the engine ask for its
//! conntrack entry ([`crate::engine::Conntrack`]): one synchronous ctnetlink GET
//! (two when the first direction misses) before the packet's verdict. Anyone who can send
//! segments to a control port can therefore make the daemon do a netlink round trip per
//! packet. [`LookupGuard`] bounds that work:
//!
//! - a **negative cache** of tuples recently found without an entry (at most
//!   [`NEGATIVE_CACHE_MAX`] tuples for [`NEGATIVE_TTL`]): a repeated junk segment costs a hash
//!   lookup, not a netlink request. A SYN-ACK is never answered from the cache (it is how a
//!   new session starts, and its entry may be seconds old only);
//! - a **budget** of [`LOOKUP_BUDGET`] lookups per second: beyond it, unknown packets are
//!   accepted untouched (the firewall and conntrack decide about them as without ftpct) and
//!   counted; a session whose first packets fall there is picked up at a later packet.
//!   SYN-ACKs, which start the sessions (one lookup per new control connection), have a budget
//!   of their own, [`SYN_ACK_BUDGET`], so that a burst of real connections is tracked from its
//!   start and a flood of junk ACKs cannot keep new sessions from being tracked; a flood of
//!   spoofed SYN-ACKs costs at most that many lookups per second.
//!
//! Time comes from the caller (the timestamps the engine gets), not from a clock: the guard is
//! tested like the core.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use crate::types::{FlowTuple, Timestamp};

/// How long a tuple found without a conntrack entry is not looked up again.
pub(crate) const NEGATIVE_TTL: Duration = Duration::from_secs(1);
/// Tuples remembered at most (the oldest is forgotten first).
pub(crate) const NEGATIVE_CACHE_MAX: usize = 4096;
/// Conntrack lookups for unknown packets other than SYN-ACKs, per second at most.
pub const LOOKUP_BUDGET: u32 = 2000;
/// Conntrack lookups for SYN-ACKs of unknown connections (new sessions), per second at most.
pub const SYN_ACK_BUDGET: u32 = 20_000;

/// What to do with an unknown packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Ask conntrack.
    Ask,
    /// Found without an entry less than `NEGATIVE_TTL` ago: treat as missing.
    KnownMissing,
    /// This second's budget is spent: accept the packet untouched.
    OverBudget,
}

/// The negative cache and the budget (see the module documentation).
#[derive(Debug)]
pub struct LookupGuard {
    ttl_ns: u64,
    max: usize,
    budget: u32,
    syn_ack_budget: u32,
    missing: HashMap<FlowTuple, Timestamp>,
    /// Insertion order (times never decrease): the front expires or is evicted first.
    order: VecDeque<(FlowTuple, Timestamp)>,
    window_start: Timestamp,
    used: u32,
    used_syn_ack: u32,
}

impl Default for LookupGuard {
    fn default() -> Self {
        LookupGuard::new(
            NEGATIVE_TTL,
            NEGATIVE_CACHE_MAX,
            LOOKUP_BUDGET,
            SYN_ACK_BUDGET,
        )
    }
}

impl LookupGuard {
    /// A guard: missing tuples are remembered for `ttl` (at most `max` of them), and at most
    /// `budget_per_sec` lookups a second are allowed (`syn_ack_per_sec` for SYN-ACKs).
    pub fn new(
        ttl: Duration,
        max: usize,
        budget_per_sec: u32,
        syn_ack_per_sec: u32,
    ) -> LookupGuard {
        LookupGuard {
            ttl_ns: u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX),
            max: max.max(1),
            budget: budget_per_sec,
            syn_ack_budget: syn_ack_per_sec,
            missing: HashMap::new(),
            order: VecDeque::new(),
            window_start: Timestamp::ZERO,
            used: 0,
            used_syn_ack: 0,
        }
    }

    /// Whether to look up the entry of a packet with `tuple` at `now` (`syn_ack`: the packet is
    /// a SYN-ACK, never answered from the cache, counted in its own budget). [`Lookup::Ask`]
    /// takes one unit of the budget.
    pub fn check(&mut self, tuple: &FlowTuple, syn_ack: bool, now: Timestamp) -> Lookup {
        self.expire(now);
        if !syn_ack && self.missing.contains_key(tuple) {
            return Lookup::KnownMissing;
        }
        if now.0.saturating_sub(self.window_start.0) >= 1_000_000_000 || now < self.window_start {
            self.window_start = now;
            self.used = 0;
            self.used_syn_ack = 0;
        }
        let (used, budget) = if syn_ack {
            (&mut self.used_syn_ack, self.syn_ack_budget)
        } else {
            (&mut self.used, self.budget)
        };
        if *used >= budget {
            return Lookup::OverBudget;
        }
        *used += 1;
        Lookup::Ask
    }

    /// The lookup of `tuple` at `now` found no entry.
    pub fn found_missing(&mut self, tuple: &FlowTuple, now: Timestamp) {
        self.expire(now);
        while self.missing.len() >= self.max {
            let Some((t, at)) = self.order.pop_front() else {
                break;
            };
            if self.missing.get(&t) == Some(&at) {
                self.missing.remove(&t);
            }
        }
        self.missing.insert(*tuple, now);
        self.order.push_back((*tuple, now));
    }

    /// The lookup of `tuple` found an entry (a connection that was missing now exists).
    pub fn found(&mut self, tuple: &FlowTuple) {
        self.missing.remove(tuple);
    }

    /// Tuples remembered (for tests and stats).
    pub fn len(&self) -> usize {
        self.missing.len()
    }

    /// True when no missing tuple is remembered.
    pub fn is_empty(&self) -> bool {
        self.missing.is_empty()
    }

    fn expire(&mut self, now: Timestamp) {
        while let Some(&(t, at)) = self.order.front() {
            if now.0.saturating_sub(at.0) < self.ttl_ns && self.order.len() <= 2 * self.max {
                break;
            }
            self.order.pop_front();
            if self.missing.get(&t) == Some(&at) {
                self.missing.remove(&t);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16) -> FlowTuple {
        FlowTuple::new(
            format!("10.0.0.2:{port}").parse().unwrap(),
            "198.51.100.2:21".parse().unwrap(),
        )
    }

    fn ms(n: u64) -> Timestamp {
        Timestamp::from_millis(n)
    }

    #[test]
    fn a_missing_tuple_is_not_looked_up_again_until_its_ttl_ends() {
        let mut g = LookupGuard::new(Duration::from_secs(1), 100, 1000, 1000);
        assert_eq!(g.check(&t(1), false, ms(0)), Lookup::Ask);
        g.found_missing(&t(1), ms(0));
        assert_eq!(g.check(&t(1), false, ms(500)), Lookup::KnownMissing);
        assert_eq!(g.check(&t(2), false, ms(500)), Lookup::Ask, "another tuple");
        // a SYN-ACK is always asked about
        assert_eq!(g.check(&t(1), true, ms(600)), Lookup::Ask);
        assert_eq!(g.check(&t(1), false, ms(1000)), Lookup::Ask, "expired");
        g.found_missing(&t(1), ms(1000));
        g.found(&t(1));
        assert_eq!(g.check(&t(1), false, ms(1001)), Lookup::Ask, "found since");
    }

    #[test]
    fn the_cache_is_bounded_and_forgets_the_oldest() {
        let mut g = LookupGuard::new(Duration::from_secs(60), 3, 1000, 1000);
        for p in 1..=5 {
            g.found_missing(&t(p), ms(u64::from(p)));
        }
        assert_eq!(g.len(), 3);
        assert_eq!(g.check(&t(1), false, ms(10)), Lookup::Ask);
        assert_eq!(g.check(&t(2), false, ms(10)), Lookup::Ask);
        assert_eq!(g.check(&t(5), false, ms(10)), Lookup::KnownMissing);
        // the same tuple refreshed many times does not grow the order queue without bound
        for i in 0..100 {
            g.found_missing(&t(5), ms(20 + i));
        }
        assert!(g.order.len() <= 2 * 3 + 1, "{}", g.order.len());
    }

    #[test]
    fn beyond_the_budget_packets_are_not_looked_up_until_the_next_second() {
        let mut g = LookupGuard::new(Duration::from_secs(1), 10_000, 5, 2);
        for p in 0..5 {
            assert_eq!(g.check(&t(p), false, ms(100)), Lookup::Ask);
        }
        assert_eq!(g.check(&t(9), false, ms(900)), Lookup::OverBudget);
        // SYN-ACKs have their own budget: junk ACKs do not starve new sessions
        assert_eq!(g.check(&t(9), true, ms(910)), Lookup::Ask);
        assert_eq!(g.check(&t(10), true, ms(920)), Lookup::Ask);
        assert_eq!(g.check(&t(11), true, ms(999)), Lookup::OverBudget);
        assert_eq!(g.check(&t(9), false, ms(1100)), Lookup::Ask, "a new second");
        assert_eq!(g.check(&t(11), true, ms(1100)), Lookup::Ask);
    }
}
