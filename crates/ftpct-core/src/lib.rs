//! The sans-IO core of ftpct: bytes and timestamps in, decisions out.
//!
//! [`engine`] ties together the FTP line parser ([`parser`]), the per-connection stream and
//! FTP state (`session.rs`: [`Session`], [`DirState`]), the TCP window check of the trust model (`window.rs`; its types [`Window`], [`Segment`], [`Untrusted`]), the rewrite
//! log and sequence maps ([`seqadj`]), the expectation table ([`expect`]), the policy
//! ([`policy`]) and IP/TCP slicing and rebuilding ([`packet`]); [`wire`] holds the netlink
//! codecs (ctnetlink, ipset, nf_tables) that the netfilter crate sends over its sockets. Nothing here opens a socket or
//! a file, reads a clock or draws a random number: the crate's dependencies (etherparse,
//! thiserror) cannot, and `unsafe` is forbidden. The daemon, `ftpct replay`, the simulation
//! tests, the benches and the fuzz targets all drive [`engine::Engine`] the same way.
//! [`stats`] holds the engine's counters, their table and the writers of `ftpct stats` and
//! the Prometheus exposition (with the latency [`Histogram`] they show), and
//! `reconcile.rs` ([`MarkCursor`], [`Settled`]) answers the shell's questions about the kernel's state (marks to check,
//! restored sessions against conntrack, the kernel work a restore needs).

#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]
// No panic on any input: no unwrap, expect or panic outside tests.
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

// The layers, each a namespace of its own vocabulary (as smoltcp's `wire`, `iface`):
pub mod engine;
pub mod expect;
pub mod journal;
pub mod packet;
pub mod parser;
pub mod policy;
pub mod render;
pub mod report;
pub mod rulecheck;
pub mod rulespec;
pub mod seqadj;
pub mod stats;
pub mod types;
pub mod wire;

// The engine's machinery: private, with the types that show in the API named from the root.
mod hashkey;
mod histogram;
mod lookup;
mod reconcile;
mod restore;
mod session;
mod window;

pub use hashkey::HashKey;
pub use histogram::Histogram;
pub use lookup::{Lookup, LookupGuard, LOOKUP_BUDGET, SYN_ACK_BUDGET};
pub use reconcile::{MarkCursor, Settled};
pub use restore::{CtSeen, RestoreRefusal};
pub use session::{DirState, LineOut, Session};
pub use window::{Segment, Untrusted, Window};

// What a driver needs, from the root.
pub use engine::{Action, Config, Conntrack, CtLookup, Engine, Event, Verdict};
pub use policy::Policy;
pub use types::{CtTuples, Dir, FlowTuple, Hook, SessionId, Timestamp};
