//! ftpct: a userspace FTP ALG for Linux.
//!
//! The crate is split in two (see docs/design.md):
//! - the **core**, pure and sans-IO: [`parser`], [`session`], [`expect`], [`seqadj`],
//!   [`packet`], [`policy`], [`restore`] (checks of a state file's records) and the [`engine`]
//!   that ties them together. Bytes and timestamps in,
//!   decisions out; no sockets, no clock, no globals.
//! - the **I/O shell** used by the daemon: [`nfqueue`], [`ctnetlink`], [`ipset`], [`netlink`],
//!   [`nftables`], [`rules`], [`control`], [`daemon`]; [`rulecheck`] is the pure half of the
//!   daemon's check of its own firewall rules, [`lookup`] the pure bound on the conntrack
//!   lookups of unknown packets.

#![forbid(unsafe_op_in_unsafe_fn)]

pub mod config;
pub mod engine;
pub mod expect;
pub mod packet;
pub mod parser;
pub mod policy;
pub mod replay;
pub mod restore;
pub mod rulecheck;
pub mod seqadj;
pub mod session;
pub mod state;
pub mod types;

pub mod control;
pub mod ctnetlink;
pub mod daemon;
pub mod ipset;
pub mod lookup;
pub mod metrics;
pub mod netlink;
pub mod nfqueue;
pub mod nftables;
pub mod notify;
pub mod privs;
pub mod rules;
