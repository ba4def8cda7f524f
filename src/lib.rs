//! ftpct: a userspace FTP ALG for Linux.
//!
//! The crate is split in two (see docs/design.md):
//! - the **core**, pure and sans-IO: [`parser`], [`session`], [`expect`], [`seqadj`],
//!   [`packet`], [`policy`] and the [`engine`] that ties them together. Bytes and timestamps in,
//!   decisions out; no sockets, no clock, no globals.
//! - the **I/O shell** used by the daemon: [`nfqueue`], [`ctnetlink`], [`ipset`], [`netlink`],
//!   [`nftables`], [`rules`], [`control`], [`daemon`]; [`rulecheck`] is the pure half of the
//!   daemon's check of its own firewall rules.

#![forbid(unsafe_op_in_unsafe_fn)]

// The core lives in its own crate (crates/ftpct-core), which cannot do I/O; its modules are
// re-exported under their old paths (`ftpct::engine`, ...).
pub use ftpct_core::{
    engine, expect, packet, parser, policy, rulecheck, rulespec, seqadj, session, types, window,
};

pub mod config;
pub mod replay;
pub mod state;

pub mod control;
pub mod ctnetlink;
pub mod daemon;
pub mod ipset;
pub mod metrics;
pub mod netlink;
pub mod nfqueue;
pub mod nftables;
pub mod notify;
pub mod privs;
pub mod rules;
