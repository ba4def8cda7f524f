//! Wire formats of the kernel interfaces, as pure codecs: bytes and typed values in, bytes
//! and typed values out; no socket, no file, no clock (smoltcp's `wire` in spirit). The
//! netfilter crate sends what these build and hands them what the kernel answers.
//!
//! - [`netlink`]: `nlmsghdr`, `nfgenmsg`, attribute TLVs (alignment, nesting), ACK/error/done
//!   messages, batch numbering; the constants shared by the subsystems.
//! - [`ctnetlink`]: conntrack get/create/mark/delete/dump requests and the entry parser.
//! - [`ipset`]: the `hash:ip,port` set commands and the header parser.
//! - [`nftables`]: rule/chain dumps and their parsers, set element and queue-verdict batches.
//!
//! Every decoder takes arbitrary bytes: lengths are checked against what is present, and a
//! malformed input is a typed error, never a panic (no indexing, no unchecked arithmetic on
//! lengths read from the input). The `netlink` fuzz target feeds them arbitrary bytes.

#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

pub mod ctnetlink;
pub mod ipset;
pub mod netlink;
pub mod nftables;
