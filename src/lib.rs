//! ftpct: a userspace FTP ALG for Linux.
//!
//! Three crates (see docs/design.md):
//! - `ftpct-core` (crates/ftpct-core), pure and sans-IO: [`parser`], [`expect`], [`seqadj`],
//!   [`packet`], [`policy`], [`rulespec`], [`rulecheck`], [`journal`], [`stats`] and the
//!   [`engine`] that ties them together (its machinery, sessions, lookups and restore checks,
//!   is private; the types that show are named from `ftpct_core`'s root). Bytes and timestamps
//!   in, decisions out; no sockets, no clock, no globals; its dependencies cannot do I/O.
//! - `ftpct-netfilter` (crates/ftpct-netfilter), the kernel interfaces: [`netlink`],
//!   [`nfqueue`], [`ctnetlink`], [`ipset`], [`nftables`], [`rules`].
//! - this crate, the daemon and its command line: [`config`], [`daemon`], [`control`],
//!   [`metrics`], [`state`], [`privs`], [`notify`], [`replay`].
//!
//! The public modules of the first two are re-exported here under their old paths.

#![forbid(unsafe_op_in_unsafe_fn)]

// The core lives in its own crate (crates/ftpct-core), which cannot do I/O; its modules are
// re-exported under their old paths (`ftpct::engine`, ...).
pub use ftpct_core::{
    engine, expect, journal, packet, parser, policy, rulecheck, rulespec, seqadj, stats, types,
};

// The kernel interfaces live in crates/ftpct-netfilter.
pub use ftpct_netfilter::{ctnetlink, ipset, netlink, nfqueue, nftables, rules};

pub mod config;
pub mod replay;
pub mod state;

pub mod control;
pub mod daemon;
pub mod driver;
pub mod metrics;
pub mod notify;
pub mod privs;
