//! The expectation table: data connections announced on a control connection and not yet seen,
//! like the kernel's `/proc/net/nf_conntrack_expect`.
//!
//! An expectation says: a TCP SYN from `src` (any source port) to `dst` belongs to the control
//! connection `master`; when `nat_to` is set, the data connection must be DNATed to it.
//! Insert, lookup and expiry are O(1) (hash index + timer wheel); no operation scans the table.

use std::net::{IpAddr, SocketAddr};

use crate::types::{SessionId, Timestamp};

/// Identifier of an expectation; never reused while the table lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExpectId(pub u64);

/// What kind of message created the expectation (for logs and the `sessions` listing).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectKind {
    Port,
    Eprt,
    Pasv227,
    Epsv229,
}

/// One expected data connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expectation {
    pub master: SessionId,
    pub kind: ExpectKind,
    /// Source address the SYN must come from (the source port is a wildcard).
    pub src: IpAddr,
    /// Destination of the SYN as it arrives at the gateway, before NAT (the public address
    /// and port after a rewrite).
    pub dst: SocketAddr,
    /// DNAT target for the data connection (the private endpoint), if the message was rewritten.
    pub nat_to: Option<SocketAddr>,
    pub created: Timestamp,
    pub expires: Timestamp,
}

/// Why an insert did not happen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InsertError {
    #[error("expectation table is full ({0} entries)")]
    TableFull(usize),
    #[error("another session already expects a connection to this address and port")]
    Clash,
}

/// Result of a successful insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inserted {
    pub id: ExpectId,
    /// The master's oldest expectation, removed to respect the per-session limit (as the kernel
    /// evicts the oldest when `max_expected` is reached).
    pub evicted: Option<(ExpectId, Expectation)>,
    /// An expectation of the same master with the same `src`/`dst` that this one replaced
    /// (e.g. a retransmitted or repeated PORT).
    pub replaced: Option<(ExpectId, Expectation)>,
}

/// Limits of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpectLimits {
    /// Maximum number of expectations in total.
    pub max_total: usize,
    /// Maximum number of live expectations per master session (kernel default: 1).
    pub max_per_master: usize,
}

impl Default for ExpectLimits {
    fn default() -> Self {
        ExpectLimits {
            max_total: 1 << 20,
            max_per_master: 1,
        }
    }
}

/// The table.
#[derive(Debug, Default)]
pub struct ExpectTable {
    _limits: ExpectLimits,
}

impl ExpectTable {
    pub fn new(limits: ExpectLimits) -> Self {
        ExpectTable { _limits: limits }
    }
    pub fn limits(&self) -> ExpectLimits {
        self._limits
    }
    pub fn set_limits(&mut self, limits: ExpectLimits) {
        self._limits = limits;
    }
    pub fn len(&self) -> usize {
        0
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Inserts `exp`. A clash with another master's expectation for the same `dst` is refused.
    pub fn insert(&mut self, exp: Expectation) -> Result<Inserted, InsertError> {
        let _ = exp;
        Err(InsertError::TableFull(0))
    }
    /// The expectation a SYN from `src` to `dst` matches, if any.
    pub fn lookup(&self, src: IpAddr, dst: SocketAddr) -> Option<(ExpectId, &Expectation)> {
        let _ = (src, dst);
        None
    }
    pub fn get(&self, id: ExpectId) -> Option<&Expectation> {
        let _ = id;
        None
    }
    /// Removes and returns an expectation (on use).
    pub fn remove(&mut self, id: ExpectId) -> Option<Expectation> {
        let _ = id;
        None
    }
    /// Removes every expectation of `master`, appending them to `out`.
    pub fn remove_master(&mut self, master: SessionId, out: &mut Vec<(ExpectId, Expectation)>) {
        let _ = (master, out);
    }
    /// Removes every expectation with `expires <= now`, appending them to `out`.
    pub fn expire(&mut self, now: Timestamp, out: &mut Vec<(ExpectId, Expectation)>) {
        let _ = (now, out);
    }
    /// The earliest `expires` of any entry (may be early by up to one wheel tick, never late).
    pub fn next_expiry(&self) -> Option<Timestamp> {
        None
    }
    /// True if some live expectation has this `dst` (used to pick a free public port).
    pub fn dst_in_use(&self, dst: SocketAddr) -> bool {
        let _ = dst;
        false
    }
    /// All expectations, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (ExpectId, &Expectation)> + '_ {
        std::iter::empty()
    }
}

/// Appends one line in the kernel's `/proc/net/nf_conntrack_expect` format, e.g.
/// `297 l3proto = 2 proto=6 src=198.51.100.2 dst=203.0.113.1 sport=0 dport=50000 ftp\n`
/// (remaining seconds, then the expected tuple, then the helper name).
pub fn format_kernel_line(exp: &Expectation, now: Timestamp, out: &mut String) {
    let _ = (exp, now, out);
}
