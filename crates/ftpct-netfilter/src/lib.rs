//! ftpct's kernel interfaces, and nothing about FTP: netlink sockets ([`netlink`]; the
//! messages are built and parsed by the core's codecs, `ftpct_core::wire`), the NFQUEUE
//! consumer ([`nfqueue`]), conntrack entries ([`ctnetlink`]), the ipsets of data destinations
//! ([`ipset`]), nf_tables reads and writes ([`nftables`]), and applying and deleting the
//! firewall rules that [`ftpct_core::rulespec`] specifies ([`rules`]). The daemon in the
//! `ftpct` crate carries out the engine's actions with these.

#![forbid(unsafe_op_in_unsafe_fn)]

// The core's vocabulary, under the paths these modules use.
pub(crate) use ftpct_core::{rulecheck, rulespec, types};

pub mod ctnetlink;
pub mod ipset;
pub mod netlink;
pub mod nfqueue;
pub mod nftables;
pub mod rules;
