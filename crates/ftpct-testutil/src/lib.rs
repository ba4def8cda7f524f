//! Test helpers shared by ftpct's tests, fuzz targets and benches, written once here.
//!
//! - [`seg`]: IPv4/IPv6 TCP segments described field by field ([`Seg`]: flags, seq/ack, window,
//!   window scale, SACK blocks, payload), built with etherparse and read back;
//! - [`csum`]: a checksum oracle computed from scratch (RFC 1071 sums over the raw bytes), not
//!   with the code under test, so that it catches the core's checksum bugs;
//! - [`drive`]: one packet through the engine the way the daemon drives it (verdict, then the
//!   actions and events it queued), with simulated conntrack tables implementing the core's
//!   [`Conntrack`](ftpct_core::engine::Conntrack) trait;
//! - [`gateway`]: a NAT gateway around the engine (pre hook, conntrack's window check, DNAT,
//!   post hook, SNAT), simulated TCP endpoints, and a [`Lab`] of client, gateway and server;
//! - [`sender`]: a timed TCP sender (Nagle, MSS, delayed ACKs, tail loss probe, RTO) for
//!   split lines with pauses;
//! - [`parser`]: the FTP parser's invariants checked on one line;
//! - [`alloc`]: a counting global allocator for the benches.
//!
//! Not shipped: a dev-dependency of `ftpct-core` and `ftpct`, a dependency of the fuzz crate.
//! Helpers fail by panicking, as tests do.

pub mod alloc;
pub mod csum;
pub mod drive;
pub mod gateway;
pub mod parser;
pub mod seg;
pub mod sender;

pub use csum::checksums_ok;
pub use drive::{step, Discard, Record, SimConntrack};
pub use gateway::{Endpoint, Gw, Lab};
pub use seg::{sa, Seg};
