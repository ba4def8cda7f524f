//! ftpct's nf_tables netlink: reading its rules back for [`crate::rulecheck`] ([`NfTables`]
//! dumps), writing the nft backend's set elements ([`NftSets`]: the data destinations, as the
//! ipsets are for the iptables backends) and, where the kernel lacks `nft_queue`, the NFQUEUE
//! verdicts of `table inet ftpct` ([`NfTables::install_queue_targets`]). Everything else of the
//! ruleset is installed by [`crate::rules`], which runs the tools.
//!
//! Why netlink and not `iptables -S`/`nft list`: the daemon, once running, keeps only
//! CAP_NET_ADMIN and may run as a systemd DynamicUser in a sandbox; it spawns nothing. An
//! nf_tables dump needs only CAP_NET_ADMIN in the network namespace.
//!
//! Kernel facts relied on (include/uapi/linux/netfilter/nf_tables.h, net/netfilter/
//! nf_tables_api.c; checked on this project's machines, Linux 6.18 with iptables 1.8.9 and nft
//! 1.0.6, by `tests/rules_backends.rs`):
//! - subsystem `NFNL_SUBSYS_NFTABLES` (10); `NFT_MSG_GETRULE` (7) with `NLM_F_DUMP` answers one
//!   `NFT_MSG_NEWRULE` (6) per rule, then `NLMSG_DONE`. The request's `nfgenmsg` family filters
//!   (`NFPROTO_UNSPEC` = every family) and an `NFTA_RULE_TABLE` attribute in the request
//!   restricts the dump to the table of that name, so the admin's own (possibly large) tables
//!   are not read. With a table name the dump stops after the FIRST table of that name
//!   (`nf_tables_dump_rules`: `if (ctx->table) break;`), so with `NFPROTO_UNSPEC` only one of
//!   `ip raw` and `ip6 raw` would be read: each (family, table) is dumped on its own.
//!   `NFT_MSG_GETCHAIN` (4) dumps chains (`NFT_MSG_NEWCHAIN`, 3) of a family, without a table
//!   filter.
//! - A rule message carries `NFTA_RULE_TABLE` (1) and `NFTA_RULE_CHAIN` (2), its expressions in
//!   `NFTA_RULE_EXPRESSIONS` (4: `NFTA_LIST_ELEM` (1) { `NFTA_EXPR_NAME` (1), `NFTA_EXPR_DATA`
//!   (2) }) and optional `NFTA_RULE_USERDATA` (7).
//! - Where the comment `ftpct` is: iptables-nft 1.8.9 keeps `-m comment --comment ftpct` as an
//!   x_tables match run through nft_compat: an expression named `match` whose data has
//!   `NFTA_MATCH_NAME` (1) = `comment` and `NFTA_MATCH_INFO` (3) = `struct xt_comment_info`, a
//!   NUL-padded `char comment[256]`; nothing in the userdata. nft (and newer iptables-nft, which
//!   may store both) put `comment "ftpct"` in the userdata: TLVs of a type byte, a length byte
//!   and the value, type 0 (`NFTNL_UDATA_RULE_COMMENT`) being the NUL-terminated comment. Both
//!   are read; either one equal to `ftpct` makes the rule ftpct's.
//! - A dump during which the ruleset changes flags its messages `NLM_F_DUMP_INTR`; it is read
//!   again.

use std::net::SocketAddr;

use nix::libc;

use crate::netlink::{NetlinkSocket, NlError, NlMsg, WireError, NFPROTO_INET, NLM_F_DUMP_INTR};
use crate::rulecheck::{self, Observed, Place};
use crate::rulespec::{Family, QueueTarget};
use ftpct_core::wire::nftables as wire;

pub use ftpct_core::wire::nftables::element_key;

/// How many times a dump interrupted by a ruleset change is read again.
const MAX_TRIES: u32 = 3;

/// Errors of reading the ruleset. Each message says what to check.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error(
        "nf_tables: permission denied: reading the ruleset and changing ftpct's sets need \
         CAP_NET_ADMIN in ftpct's network namespace"
    )]
    PermissionDenied,
    #[error(
        "nf_tables: the ruleset changed during each of {0} reads in a row; it is read again \
         next period"
    )]
    Interrupted(u32),
    #[error(
        "nf_tables: there is no set {0:?} in table inet ftpct: install the nft backend's rules \
         (`ftpct rules --backend nft --apply`, or `backend = nft` in the configuration file and \
         `ftpct rules --config FILE --apply`), or use the ipset backends"
    )]
    NoSet(String),
    #[error(
        "nf_tables: set {0:?} of table inet ftpct is full; it was created with a `size` smaller \
         than max_expectations: delete the table (`ftpct rules --backend nft --delete`) and \
         apply the rules again"
    )]
    SetFull(String),
    #[error(
        "nf_tables: set {0:?} of table inet ftpct does not take this element ({1}); it was not \
         created by this version of ftpct: delete the table (`ftpct rules --backend nft \
         --delete`) and apply the rules again"
    )]
    SetMismatch(String, String),
    #[error("nf_tables: request failed: {0}")]
    Netlink(#[from] NlError),
}

impl From<WireError> for NftError {
    fn from(e: WireError) -> Self {
        NftError::Netlink(e.into())
    }
}

impl NftError {
    fn of(e: NlError, set: &str) -> NftError {
        match e.errno() {
            Some(libc::EPERM) | Some(libc::EACCES) => NftError::PermissionDenied,
            Some(libc::ENOENT) => NftError::NoSet(set.to_string()),
            Some(libc::ENFILE) | Some(libc::ENOSPC) => NftError::SetFull(set.to_string()),
            Some(libc::EINVAL) | Some(libc::ERANGE) => {
                NftError::SetMismatch(set.to_string(), e.to_string())
            }
            _ => NftError::Netlink(e),
        }
    }
}

/// A netlink socket for nf_tables dumps, with a reused request buffer.
#[derive(Debug)]
pub struct NfTables {
    sock: NetlinkSocket,
    buf: Vec<u8>,
}

/// Parses one message of a rule dump: the rule's place if it carries ftpct's comment and lives
/// in a family ftpct uses (the core's [`ftpct_core::wire::nftables::parse_rule`]).
pub fn parse_rule(m: &NlMsg<'_>) -> Result<Option<Place>, NlError> {
    wire::parse_rule(m).map_err(NlError::from)
}

/// Parses one message of a chain dump: the chain's place if it is in `table inet ftpct` (the
/// core's [`ftpct_core::wire::nftables::parse_chain`]).
pub fn parse_chain(m: &NlMsg<'_>) -> Result<Option<Place>, NlError> {
    wire::parse_chain(m).map_err(NlError::from)
}

/// Whether nf_tables has iptables-nft's nat PREROUTING base chain for `family` (`table ip
/// nat` / `table ip6 nat`, chain `PREROUTING` with a hook): `NFT_MSG_GETCHAIN` of that chain,
/// `ENOENT` when the table or the chain is missing.
pub fn nat_prerouting_exists(family: Family) -> Result<bool, NlError> {
    let nfproto = match family {
        Family::V4 => crate::netlink::NFPROTO_IPV4,
        Family::V6 => crate::netlink::NFPROTO_IPV6,
    };
    let mut sock = NetlinkSocket::open()?;
    let mut buf = Vec::with_capacity(64);
    wire::build_get_chain(&mut buf, nfproto, "nat", "PREROUTING")?;
    let mut base = false;
    let r = sock.transact(&mut buf, |m| {
        base |= wire::parse_chain_is_base(m)?.unwrap_or(false);
        Ok::<(), NlError>(())
    });
    match r {
        Ok(()) => Ok(base),
        Err(NlError::Kernel { errno }) if errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

impl NfTables {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NftError> {
        Ok(NfTables {
            sock: NetlinkSocket::open()?,
            buf: Vec::with_capacity(64),
        })
    }

    /// Runs one dump; `on_msg` gets every message. Returns whether the dump was interrupted.
    fn dump(
        &mut self,
        mut on_msg: impl FnMut(&NlMsg<'_>) -> Result<(), NlError>,
    ) -> Result<bool, NftError> {
        let mut interrupted = false;
        let r = self.sock.transact(&mut self.buf, |m| {
            if m.flags & NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            on_msg(m)
        });
        match r {
            Ok(()) => Ok(interrupted),
            Err(NlError::Kernel { errno }) if errno == libc::EPERM || errno == libc::EACCES => {
                Err(NftError::PermissionDenied)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// One read of everything ftpct's rules could be: the rules of the tables raw, mangle and
    /// nat of the families ip and ip6 and of `table inet ftpct` that carry ftpct's comment, and
    /// the chains of `table inet ftpct`.
    fn read_once(&mut self) -> Result<(Observed, bool), NftError> {
        let mut obs = Observed::default();
        let mut interrupted = false;
        for (family, table) in rulecheck::tables_to_read() {
            wire::build_rule_dump(&mut self.buf, family.nfproto(), table)?;
            interrupted |= self.dump(|m| {
                if let Some(p) = wire::parse_rule(m)? {
                    if p.family == family && p.table == table {
                        obs.add_rule(p);
                    }
                }
                Ok(())
            })?;
        }
        wire::build_chain_dump(&mut self.buf, NFPROTO_INET)?;
        interrupted |= self.dump(|m| {
            if let Some(p) = wire::parse_chain(m)? {
                obs.add_chain(p);
            }
            Ok(())
        })?;
        Ok((obs, interrupted))
    }

    /// Reads what of ftpct's rules is in nf_tables ([`rulecheck::Observed`]); a read that a
    /// ruleset change interrupted is done again, up to 3 times.
    pub fn read_ftpct(&mut self) -> Result<Observed, NftError> {
        for _ in 0..MAX_TRIES {
            let (obs, interrupted) = self.read_once()?;
            if !interrupted {
                return Ok(obs);
            }
        }
        Err(NftError::Interrupted(MAX_TRIES))
    }
}

// ---------------------------------------------------------------------------------------------
// Writing: the queue verdicts of the nft backend, and the daemon's set elements

impl NfTables {
    /// Creates `table inet ftpct` and the regular chains of `targets` if missing, and makes
    /// each chain hold exactly one rule: the x_tables `NFQUEUE` target (revision 3) run through
    /// nft_compat, with ftpct's comment — in one transaction. The `nft` tool cannot write this
    /// rule (it has no syntax for x_tables targets), but the kernel runs it wherever
    /// `CONFIG_NFT_COMPAT` and `CONFIG_NETFILTER_XT_TARGET_NFQUEUE` are built, which is how the
    /// nft backend queues packets on kernels without the native `queue` expression
    /// (`CONFIG_NFT_QUEUE`). The base chains reach these chains with `goto`.
    pub fn install_queue_targets(&mut self, targets: &[QueueTarget]) -> Result<(), NftError> {
        wire::build_queue_targets(&mut self.buf, targets)?;
        self.sock
            .request_batch(&mut self.buf)
            .map_err(|e| match e.errno() {
                Some(libc::EPERM) | Some(libc::EACCES) => NftError::PermissionDenied,
                _ => NftError::Netlink(e),
            })
    }
}

/// The daemon's writer of data destinations into the nft backend's sets (`table inet ftpct`),
/// the counterpart of [`crate::ipset::Ipset`] for the iptables backends. One nf_tables
/// transaction per element, on a socket with a reused buffer.
#[derive(Debug)]
pub struct NftSets {
    sock: NetlinkSocket,
    buf: Vec<u8>,
}

impl NftSets {
    /// Opens a socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NftError> {
        Ok(NftSets {
            sock: NetlinkSocket::open()?,
            buf: Vec::with_capacity(256),
        })
    }

    /// Whether `set` exists in `table inet ftpct` ([`NftError::NoSet`] if not).
    pub fn check(&mut self, set: &str) -> Result<(), NftError> {
        wire::build_get_set(&mut self.buf, set)?;
        self.sock
            .transact(&mut self.buf, |_| Ok::<(), NlError>(()))
            .map_err(|e| NftError::of(e, set))
    }

    /// Adds `dst` to `set` with its own timeout. An element that is already there keeps the
    /// set (on kernels before 6.10 its timeout is not renewed; the daemon deletes elements
    /// itself when their expectation ends, so the timeout only bounds what a crash leaves).
    pub fn add(&mut self, set: &str, dst: SocketAddr, timeout_secs: u32) -> Result<(), NftError> {
        wire::build_element(
            &mut self.buf,
            set,
            dst,
            Some(u64::from(timeout_secs.max(1)) * 1000),
        )?;
        self.sock
            .request_batch(&mut self.buf)
            .map_err(|e| NftError::of(e, set))
    }

    /// Deletes `dst` from `set`; an element that is not there (expired) is not an error.
    pub fn del(&mut self, set: &str, dst: SocketAddr) -> Result<(), NftError> {
        wire::build_element(&mut self.buf, set, dst, None)?;
        match self.sock.request_batch(&mut self.buf) {
            Ok(()) => Ok(()),
            // ENOENT for a missing element; the set itself exists (checked at start).
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(NftError::of(e, set)),
        }
    }
}
