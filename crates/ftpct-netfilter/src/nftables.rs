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

use std::net::{IpAddr, SocketAddr};

use nix::libc;

use crate::netlink::{
    nfnl_msg_type, Attr, AttrIter, MsgBuilder, NetlinkSocket, NlError, NlMsg, NFNL_MSG_BATCH_BEGIN,
    NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP,
    NLM_F_DUMP_INTR, NLM_F_REQUEST,
};
use crate::rulecheck::{self, NfFamily, Observed, Place};
use crate::rulespec::{QueueTarget, COMMENT, NFT_TABLE};

const NFT_MSG_NEWTABLE: u8 = 0;
const NFT_MSG_NEWCHAIN: u8 = 3;
const NFT_MSG_GETCHAIN: u8 = 4;
const NFT_MSG_NEWRULE: u8 = 6;
const NFT_MSG_GETRULE: u8 = 7;
const NFT_MSG_DELRULE: u8 = 8;
const NFT_MSG_GETSET: u8 = 10;
const NFT_MSG_NEWSETELEM: u8 = 12;
const NFT_MSG_DELSETELEM: u8 = 14;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_TIMEOUT: u16 = 4;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_TARGET_NAME: u16 = 1;
const NFTA_TARGET_REV: u16 = 2;
const NFTA_TARGET_INFO: u16 = 3;
/// `NFQ_FLAG_BYPASS` of `struct xt_NFQ_info_v3`.
const NFQ_FLAG_BYPASS: u16 = 0x01;

const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_MATCH_NAME: u16 = 1;
const NFTA_MATCH_INFO: u16 = 3;
/// `NFTNL_UDATA_RULE_COMMENT` (libnftnl's userdata TLV type of a rule comment).
const UDATA_RULE_COMMENT: u8 = 0;

const NFPROTO_INET: u8 = 1;

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

/// Builds a rule dump request for tables named `table` of `family` (any family: 0).
fn build_rule_dump(buf: &mut Vec<u8>, family: u8, table: &str) -> Result<(), NlError> {
    let mut b = MsgBuilder::new(
        buf,
        nfnl_msg_type(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETRULE),
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        0,
    );
    b.put_cstr(NFTA_RULE_TABLE, table);
    b.finish().map(|_| ())
}

/// Builds a chain dump request for `family`.
fn build_chain_dump(buf: &mut Vec<u8>, family: u8) -> Result<(), NlError> {
    let b = MsgBuilder::new(
        buf,
        nfnl_msg_type(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETCHAIN),
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        0,
    );
    b.finish().map(|_| ())
}

/// Whether userdata TLVs hold the comment `ftpct`.
fn userdata_is_ours(mut ud: &[u8]) -> bool {
    while let [ty, len, rest @ ..] = ud {
        let Some(value) = rest.get(..usize::from(*len)) else {
            return false;
        };
        if *ty == UDATA_RULE_COMMENT {
            return nul_terminated(value) == COMMENT.as_bytes();
        }
        ud = &rest[usize::from(*len)..];
    }
    false
}

/// The bytes before the first NUL.
fn nul_terminated(b: &[u8]) -> &[u8] {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    &b[..end]
}

/// Whether the expressions include the x_tables match `comment` with text `ftpct`.
fn xt_comment_is_ours(exprs: AttrIter<'_>) -> Result<bool, NlError> {
    for elem in exprs {
        let elem = elem?;
        if elem.kind() != NFTA_LIST_ELEM {
            continue;
        }
        let e: [Option<Attr>; 3] = elem.nested().table()?;
        let (Some(name), Some(data)) = (e[NFTA_EXPR_NAME as usize], e[NFTA_EXPR_DATA as usize])
        else {
            continue;
        };
        if name.str()? != "match" {
            continue;
        }
        let m: [Option<Attr>; 4] = data.nested().table()?;
        let (Some(mname), Some(info)) = (m[NFTA_MATCH_NAME as usize], m[NFTA_MATCH_INFO as usize])
        else {
            continue;
        };
        if mname.str()? == "comment" && nul_terminated(info.payload()) == COMMENT.as_bytes() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Parses one message of a rule dump: the rule's place if it carries ftpct's comment and lives
/// in a family ftpct uses.
pub fn parse_rule(m: &NlMsg<'_>) -> Result<Option<Place>, NlError> {
    if m.subsys() != NFNL_SUBSYS_NFTABLES || m.cmd() != NFT_MSG_NEWRULE {
        return Ok(None);
    }
    let (g, attrs) = m.nfgen()?;
    let Some(family) = NfFamily::from_nfproto(g.family) else {
        return Ok(None);
    };
    let t: [Option<Attr>; 8] = attrs.table()?;
    let (Some(table), Some(chain)) = (t[NFTA_RULE_TABLE as usize], t[NFTA_RULE_CHAIN as usize])
    else {
        return Err(NlError::Malformed(
            "nf_tables rule without its table or chain",
        ));
    };
    let ours = match t[NFTA_RULE_USERDATA as usize] {
        Some(ud) if userdata_is_ours(ud.payload()) => true,
        _ => match t[NFTA_RULE_EXPRESSIONS as usize] {
            Some(e) => xt_comment_is_ours(e.nested())?,
            None => false,
        },
    };
    if !ours {
        return Ok(None);
    }
    Ok(Some(Place::new(family, table.str()?, chain.str()?)))
}

/// Parses one message of a chain dump: the chain's place if it is in `table inet ftpct`.
pub fn parse_chain(m: &NlMsg<'_>) -> Result<Option<Place>, NlError> {
    if m.subsys() != NFNL_SUBSYS_NFTABLES || m.cmd() != NFT_MSG_NEWCHAIN {
        return Ok(None);
    }
    let (g, attrs) = m.nfgen()?;
    if g.family != NFPROTO_INET {
        return Ok(None);
    }
    let t: [Option<Attr>; 4] = attrs.table()?;
    let (Some(table), Some(name)) = (t[NFTA_CHAIN_TABLE as usize], t[NFTA_CHAIN_NAME as usize])
    else {
        return Err(NlError::Malformed(
            "nf_tables chain without its table or name",
        ));
    };
    if table.str()? != NFT_TABLE {
        return Ok(None);
    }
    Ok(Some(Place::new(NfFamily::Inet, NFT_TABLE, name.str()?)))
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
        let len = self.buf.len();
        let msg = &mut self.buf[..len];
        let mut interrupted = false;
        let r = self.sock.transact(msg, |m| {
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
            build_rule_dump(&mut self.buf, family.nfproto(), table)?;
            interrupted |= self.dump(|m| {
                if let Some(p) = parse_rule(m)? {
                    if p.family == family && p.table == table {
                        obs.add_rule(p);
                    }
                }
                Ok(())
            })?;
        }
        build_chain_dump(&mut self.buf, NFPROTO_INET)?;
        interrupted |= self.dump(|m| {
            if let Some(p) = parse_chain(m)? {
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

/// Appends `NFNL_MSG_BATCH_BEGIN` or `NFNL_MSG_BATCH_END` (`marker`) for nf_tables to `buf`.
fn batch_marker(buf: &mut Vec<u8>, marker: u16) -> Result<(), NlError> {
    let res_id = u16::from(NFNL_SUBSYS_NFTABLES);
    MsgBuilder::append(buf, marker, NLM_F_REQUEST, 0, res_id)
        .finish()
        .map(|_| ())
}

fn batch_begin(buf: &mut Vec<u8>) -> Result<(), NlError> {
    batch_marker(buf, NFNL_MSG_BATCH_BEGIN)
}

fn batch_end(buf: &mut Vec<u8>) -> Result<(), NlError> {
    batch_marker(buf, NFNL_MSG_BATCH_END)
}

/// The userdata of a rule whose comment is `ftpct` (libnftnl's TLV: type, length, value with
/// its NUL), as `nft` writes `comment "ftpct"`.
fn comment_userdata() -> Vec<u8> {
    let mut u = vec![UDATA_RULE_COMMENT, (COMMENT.len() + 1) as u8];
    u.extend_from_slice(COMMENT.as_bytes());
    u.push(0);
    u
}

/// `struct xt_NFQ_info_v3 { __u16 queuenum, queues_total, flags; }` in host byte order, padded
/// to `XT_ALIGN` (8 bytes), as nft_compat checks the size against the target's.
fn nfq_info_v3(queue: u16, bypass: bool) -> [u8; 8] {
    let mut info = [0u8; 8];
    info[0..2].copy_from_slice(&queue.to_ne_bytes());
    info[2..4].copy_from_slice(&1u16.to_ne_bytes());
    let flags = if bypass { NFQ_FLAG_BYPASS } else { 0 };
    info[4..6].copy_from_slice(&flags.to_ne_bytes());
    info
}

/// Builds the batch of [`NfTables::install_queue_targets`].
fn build_queue_targets(buf: &mut Vec<u8>, targets: &[QueueTarget]) -> Result<(), NlError> {
    buf.clear();
    batch_begin(buf)?;
    let create = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
    let ty = |cmd| nfnl_msg_type(NFNL_SUBSYS_NFTABLES, cmd);
    let mut b = MsgBuilder::append(buf, ty(NFT_MSG_NEWTABLE), create, NFPROTO_INET, 0);
    b.put_cstr(NFTA_TABLE_NAME, NFT_TABLE);
    b.finish()?;
    let udata = comment_userdata();
    for t in targets {
        let mut b = MsgBuilder::append(buf, ty(NFT_MSG_NEWCHAIN), create, NFPROTO_INET, 0);
        b.put_cstr(NFTA_CHAIN_TABLE, NFT_TABLE)
            .put_cstr(NFTA_CHAIN_NAME, t.chain);
        b.finish()?;
        // Without a handle: every rule of the chain (so that applying again replaces it).
        let flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut b = MsgBuilder::append(buf, ty(NFT_MSG_DELRULE), flags, NFPROTO_INET, 0);
        b.put_cstr(NFTA_RULE_TABLE, NFT_TABLE)
            .put_cstr(NFTA_RULE_CHAIN, t.chain);
        b.finish()?;
        let flags = create | NLM_F_APPEND;
        let mut b = MsgBuilder::append(buf, ty(NFT_MSG_NEWRULE), flags, NFPROTO_INET, 0);
        b.put_cstr(NFTA_RULE_TABLE, NFT_TABLE)
            .put_cstr(NFTA_RULE_CHAIN, t.chain);
        let exprs = b.nest_start(NFTA_RULE_EXPRESSIONS);
        let e = b.nest_start(NFTA_LIST_ELEM);
        b.put_cstr(NFTA_EXPR_NAME, "target");
        let d = b.nest_start(NFTA_EXPR_DATA);
        b.put_cstr(NFTA_TARGET_NAME, "NFQUEUE")
            .put_be32(NFTA_TARGET_REV, 3)
            .put(NFTA_TARGET_INFO, &nfq_info_v3(t.queue, t.bypass));
        b.nest_end(d);
        b.nest_end(e);
        b.nest_end(exprs);
        b.put(NFTA_RULE_USERDATA, &udata);
        b.finish()?;
    }
    batch_end(buf)
}

impl NfTables {
    /// Creates `table inet ftpct` and the regular chains of `targets` if missing, and makes
    /// each chain hold exactly one rule: the x_tables `NFQUEUE` target (revision 3) run through
    /// nft_compat, with ftpct's comment — in one transaction. The `nft` tool cannot write this
    /// rule (it has no syntax for x_tables targets), but the kernel runs it wherever
    /// `CONFIG_NFT_COMPAT` and `CONFIG_NETFILTER_XT_TARGET_NFQUEUE` are built, which is how the
    /// nft backend queues packets on kernels without the native `queue` expression
    /// (`CONFIG_NFT_QUEUE`). The base chains reach these chains with `goto`.
    pub fn install_queue_targets(&mut self, targets: &[QueueTarget]) -> Result<(), NftError> {
        build_queue_targets(&mut self.buf, targets)?;
        let len = self.buf.len();
        self.sock
            .request_batch(&mut self.buf[..len])
            .map_err(|e| match e.errno() {
                Some(libc::EPERM) | Some(libc::EACCES) => NftError::PermissionDenied,
                _ => NftError::Netlink(e),
            })
    }
}

/// The key of `dst` in a set of type `ipv4_addr . inet_service` (or `ipv6_addr . ...`): the
/// address, then the port in network byte order; each field of a concatenation takes a
/// multiple of 4 bytes, so the port is followed by 2 zero bytes.
pub fn element_key(dst: SocketAddr) -> ([u8; 20], usize) {
    let mut k = [0u8; 20];
    let n = match dst.ip() {
        IpAddr::V4(a) => {
            k[..4].copy_from_slice(&a.octets());
            4
        }
        IpAddr::V6(a) => {
            k[..16].copy_from_slice(&a.octets());
            16
        }
    };
    k[n..n + 2].copy_from_slice(&dst.port().to_be_bytes());
    (k, n + 4)
}

/// Builds a batch adding (`timeout_ms` given) or deleting one element of `set`.
fn build_element(
    buf: &mut Vec<u8>,
    set: &str,
    dst: SocketAddr,
    timeout_ms: Option<u64>,
) -> Result<(), NlError> {
    buf.clear();
    batch_begin(buf)?;
    let (cmd, flags) = match timeout_ms {
        Some(_) => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
        None => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
    };
    let mut b = MsgBuilder::append(
        buf,
        nfnl_msg_type(NFNL_SUBSYS_NFTABLES, cmd),
        flags,
        NFPROTO_INET,
        0,
    );
    b.put_cstr(NFTA_SET_ELEM_LIST_TABLE, NFT_TABLE)
        .put_cstr(NFTA_SET_ELEM_LIST_SET, set);
    let list = b.nest_start(NFTA_SET_ELEM_LIST_ELEMENTS);
    let e = b.nest_start(NFTA_LIST_ELEM);
    let key = b.nest_start(NFTA_SET_ELEM_KEY);
    let (k, n) = element_key(dst);
    b.put(NFTA_DATA_VALUE, &k[..n]);
    b.nest_end(key);
    if let Some(ms) = timeout_ms {
        b.put_be64(NFTA_SET_ELEM_TIMEOUT, ms);
    }
    b.nest_end(e);
    b.nest_end(list);
    b.finish()?;
    batch_end(buf)
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
        let mut b = MsgBuilder::new(
            &mut self.buf,
            nfnl_msg_type(NFNL_SUBSYS_NFTABLES, NFT_MSG_GETSET),
            NLM_F_REQUEST | NLM_F_ACK,
            NFPROTO_INET,
            0,
        );
        b.put_cstr(NFTA_SET_TABLE, NFT_TABLE)
            .put_cstr(NFTA_SET_NAME, set);
        let msg = b.finish()?;
        self.sock
            .transact(msg, |_| Ok::<(), NlError>(()))
            .map_err(|e| NftError::of(e, set))
    }

    /// Adds `dst` to `set` with its own timeout. An element that is already there keeps the
    /// set (on kernels before 6.10 its timeout is not renewed; the daemon deletes elements
    /// itself when their expectation ends, so the timeout only bounds what a crash leaves).
    pub fn add(&mut self, set: &str, dst: SocketAddr, timeout_secs: u32) -> Result<(), NftError> {
        build_element(
            &mut self.buf,
            set,
            dst,
            Some(u64::from(timeout_secs.max(1)) * 1000),
        )?;
        let len = self.buf.len();
        self.sock
            .request_batch(&mut self.buf[..len])
            .map_err(|e| NftError::of(e, set))
    }

    /// Deletes `dst` from `set`; an element that is not there (expired) is not an error.
    pub fn del(&mut self, set: &str, dst: SocketAddr) -> Result<(), NftError> {
        build_element(&mut self.buf, set, dst, None)?;
        let len = self.buf.len();
        match self.sock.request_batch(&mut self.buf[..len]) {
            Ok(()) => Ok(()),
            // ENOENT for a missing element; the set itself exists (checked at start).
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(()),
            Err(e) => Err(NftError::of(e, set)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_keys_are_address_then_padded_port() {
        let (k, n) = element_key("192.0.2.7:40000".parse().unwrap());
        assert_eq!(&k[..n], &[192, 0, 2, 7, 0x9c, 0x40, 0, 0]);
        let (k, n) = element_key("[2001:db8::1]:21".parse().unwrap());
        assert_eq!(n, 20);
        assert_eq!(&k[16..20], &[0, 21, 0, 0]);
    }

    /// The messages of a batch: (type, flags, family, attributes' bytes).
    fn batch_msgs(buf: &[u8]) -> Vec<(u16, u16, u8)> {
        crate::netlink::NlMsgIter::new(buf)
            .map(|m| {
                let m = m.unwrap();
                let (g, _) = m.nfgen().unwrap();
                (m.msg_type, m.flags, g.family)
            })
            .collect()
    }

    #[test]
    fn element_batches_add_with_timeout_and_delete() {
        let mut buf = Vec::new();
        build_element(
            &mut buf,
            "ftpct4",
            "192.0.2.7:40000".parse().unwrap(),
            Some(300_000),
        )
        .unwrap();
        let ty = |cmd| nfnl_msg_type(NFNL_SUBSYS_NFTABLES, cmd);
        let msgs = batch_msgs(&buf);
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs[1].0, ty(NFT_MSG_NEWSETELEM));
        assert_ne!(msgs[1].1 & NLM_F_ACK, 0);
        assert_eq!(msgs[1].2, NFPROTO_INET);
        assert_eq!(msgs[2].0, NFNL_MSG_BATCH_END);
        let m = crate::netlink::NlMsgIter::new(&buf)
            .nth(1)
            .unwrap()
            .unwrap();
        let (_, attrs) = m.nfgen().unwrap();
        let t: [Option<Attr>; 4] = attrs.table().unwrap();
        assert_eq!(
            t[NFTA_SET_ELEM_LIST_TABLE as usize].unwrap().str().unwrap(),
            "ftpct"
        );
        assert_eq!(
            t[NFTA_SET_ELEM_LIST_SET as usize].unwrap().str().unwrap(),
            "ftpct4"
        );
        let list = t[NFTA_SET_ELEM_LIST_ELEMENTS as usize].unwrap();
        let elem = list.nested().next().unwrap().unwrap();
        let e: [Option<Attr>; 5] = elem.nested().table().unwrap();
        assert_eq!(
            e[NFTA_SET_ELEM_TIMEOUT as usize].unwrap().be64().unwrap(),
            300_000
        );
        let key = e[NFTA_SET_ELEM_KEY as usize]
            .unwrap()
            .nested()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(key.payload(), &[192, 0, 2, 7, 0x9c, 0x40, 0, 0]);

        build_element(&mut buf, "ftpct4", "192.0.2.7:40000".parse().unwrap(), None).unwrap();
        let msgs = batch_msgs(&buf);
        assert_eq!(msgs[1].0, ty(NFT_MSG_DELSETELEM));
    }

    #[test]
    fn queue_target_batch_replaces_each_chains_rule() {
        let mut buf = Vec::new();
        let targets = [
            QueueTarget {
                chain: "queue_control",
                queue: 7,
                bypass: false,
            },
            QueueTarget {
                chain: "queue_data",
                queue: 7,
                bypass: true,
            },
        ];
        build_queue_targets(&mut buf, &targets).unwrap();
        let ty = |cmd| nfnl_msg_type(NFNL_SUBSYS_NFTABLES, cmd);
        let kinds: Vec<u16> = batch_msgs(&buf).iter().map(|m| m.0).collect();
        assert_eq!(
            kinds,
            [
                NFNL_MSG_BATCH_BEGIN,
                ty(NFT_MSG_NEWTABLE),
                ty(NFT_MSG_NEWCHAIN),
                ty(NFT_MSG_DELRULE),
                ty(NFT_MSG_NEWRULE),
                ty(NFT_MSG_NEWCHAIN),
                ty(NFT_MSG_DELRULE),
                ty(NFT_MSG_NEWRULE),
                NFNL_MSG_BATCH_END,
            ]
        );
        // The rule carries ftpct's comment, so the rule check counts it.
        let rule = crate::netlink::NlMsgIter::new(&buf)
            .nth(4)
            .unwrap()
            .unwrap();
        assert_eq!(
            parse_rule(&rule).unwrap(),
            Some(Place::new(NfFamily::Inet, NFT_TABLE, "queue_control"))
        );
        let info = nfq_info_v3(7, true);
        let field = |i: usize| u16::from_ne_bytes([info[i], info[i + 1]]);
        assert_eq!((field(0), field(2), field(4)), (7, 1, NFQ_FLAG_BYPASS));
        assert_eq!(&info[6..], &[0, 0]);
        assert_eq!(nfq_info_v3(7, false)[4..6], [0, 0]);
    }
    use crate::netlink::{NlMsgIter, NLM_F_MULTI};

    /// An `NFT_MSG_NEWRULE` as the kernel dumps it: a meta+cmp, optionally the x_tables
    /// `comment` match, a counter, optionally userdata.
    fn rule_msg(
        family: u8,
        table: &str,
        chain: &str,
        xt_comment: Option<&str>,
        udata: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut buf = Vec::new();
        let mut b = MsgBuilder::new(
            &mut buf,
            nfnl_msg_type(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWRULE),
            NLM_F_MULTI,
            family,
            0,
        );
        b.put_cstr(NFTA_RULE_TABLE, table)
            .put_cstr(NFTA_RULE_CHAIN, chain)
            .put_be64(3, 2);
        let exprs = b.nest_start(NFTA_RULE_EXPRESSIONS);
        let e = b.nest_start(NFTA_LIST_ELEM);
        b.put_cstr(NFTA_EXPR_NAME, "meta");
        let d = b.nest_start(NFTA_EXPR_DATA);
        b.put_be32(2, 0x10).put_be32(1, 1);
        b.nest_end(d);
        b.nest_end(e);
        if let Some(c) = xt_comment {
            let e = b.nest_start(NFTA_LIST_ELEM);
            b.put_cstr(NFTA_EXPR_NAME, "match");
            let d = b.nest_start(NFTA_EXPR_DATA);
            b.put_cstr(NFTA_MATCH_NAME, "comment").put_be32(2, 0);
            let mut info = [0u8; 256];
            info[..c.len()].copy_from_slice(c.as_bytes());
            b.put(NFTA_MATCH_INFO, &info);
            b.nest_end(d);
            b.nest_end(e);
        }
        let e = b.nest_start(NFTA_LIST_ELEM);
        b.put_cstr(NFTA_EXPR_NAME, "counter");
        let d = b.nest_start(NFTA_EXPR_DATA);
        b.put_be64(1, 0).put_be64(2, 0);
        b.nest_end(d);
        b.nest_end(e);
        b.nest_end(exprs);
        if let Some(u) = udata {
            b.put(NFTA_RULE_USERDATA, u);
        }
        b.finish().unwrap();
        buf
    }

    fn parse(buf: &[u8]) -> Option<Place> {
        let m = NlMsgIter::new(buf).next().unwrap().unwrap();
        parse_rule(&m).unwrap()
    }

    #[test]
    fn requests() {
        let mut buf = Vec::new();
        build_rule_dump(&mut buf, 10, "raw").unwrap();
        let m = NlMsgIter::new(&buf).next().unwrap().unwrap();
        assert_eq!(m.msg_type, (10 << 8) | 7);
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_DUMP);
        let (g, attrs) = m.nfgen().unwrap();
        assert_eq!(g.family, 10);
        let t: [Option<Attr>; 2] = attrs.table().unwrap();
        assert_eq!(t[1].unwrap().str().unwrap(), "raw");
        build_chain_dump(&mut buf, NFPROTO_INET).unwrap();
        let m = NlMsgIter::new(&buf).next().unwrap().unwrap();
        assert_eq!(m.msg_type, (10 << 8) | 4);
        assert_eq!(m.nfgen().unwrap().0.family, 1);
        assert_eq!(m.payload.len(), 4);
    }

    #[test]
    fn iptables_nft_comment_match() {
        let p = parse(&rule_msg(2, "raw", "PREROUTING", Some("ftpct"), None));
        assert_eq!(p, Some(Place::new(NfFamily::Ip, "raw", "PREROUTING")));
        let p = parse(&rule_msg(10, "nat", "PREROUTING", Some("ftpct"), None));
        assert_eq!(p, Some(Place::new(NfFamily::Ip6, "nat", "PREROUTING")));
        // Only exactly "ftpct".
        assert_eq!(
            parse(&rule_msg(2, "raw", "PREROUTING", Some("ftpct-admin"), None)),
            None
        );
        assert_eq!(
            parse(&rule_msg(2, "raw", "PREROUTING", Some("ftpc"), None)),
            None
        );
        assert_eq!(parse(&rule_msg(2, "raw", "PREROUTING", None, None)), None);
        // Families ftpct does not use.
        assert_eq!(
            parse(&rule_msg(7, "raw", "PREROUTING", Some("ftpct"), None)),
            None
        );
    }

    #[test]
    fn nft_userdata_comment() {
        let ud = b"\x00\x06ftpct\x00";
        let p = parse(&rule_msg(1, "ftpct", "raw_output", None, Some(ud)));
        assert_eq!(p, Some(Place::new(NfFamily::Inet, "ftpct", "raw_output")));
        // Another TLV first, then the comment.
        let ud = b"\x05\x02ab\x00\x06ftpct\x00";
        assert!(parse(&rule_msg(1, "ftpct", "c", None, Some(ud))).is_some());
        for bad in [
            &b"\x00\x07ftpct2\x00"[..],
            b"\x00\x09ftpct\x00",
            b"\x00",
            b"",
            b"\x01\x06ftpct\x00",
        ] {
            assert!(
                parse(&rule_msg(1, "ftpct", "c", None, Some(bad))).is_none(),
                "{bad:?}"
            );
        }
        // Userdata with another comment, x_tables comment ftpct: ours (either one).
        let ud = b"\x00\x04abc\x00";
        assert!(parse(&rule_msg(2, "raw", "OUTPUT", Some("ftpct"), Some(ud))).is_some());
    }

    #[test]
    fn chains_of_table_inet_ftpct_only() {
        let chain = |family: u8, table: &str, name: &str| {
            let mut buf = Vec::new();
            let mut b = MsgBuilder::new(
                &mut buf,
                nfnl_msg_type(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWCHAIN),
                NLM_F_MULTI,
                family,
                0,
            );
            b.put_cstr(NFTA_CHAIN_TABLE, table)
                .put_be64(2, 1)
                .put_cstr(NFTA_CHAIN_NAME, name);
            b.finish().unwrap();
            let m = NlMsgIter::new(&buf).next().unwrap().unwrap();
            parse_chain(&m).unwrap()
        };
        assert_eq!(
            chain(1, "ftpct", "nat_prerouting"),
            Some(Place::new(NfFamily::Inet, "ftpct", "nat_prerouting"))
        );
        assert_eq!(chain(1, "admin", "nat_prerouting"), None);
        assert_eq!(chain(2, "ftpct", "nat_prerouting"), None);
    }

    #[test]
    fn malformed_rules_are_errors_not_panics() {
        let good = rule_msg(
            2,
            "raw",
            "PREROUTING",
            Some("ftpct"),
            Some(b"\x00\x06ftpct\x00"),
        );
        // A rule without table and chain.
        let mut buf = Vec::new();
        let b = MsgBuilder::new(
            &mut buf,
            nfnl_msg_type(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWRULE),
            0,
            2,
            0,
        );
        b.finish().unwrap();
        let m = NlMsgIter::new(&buf).next().unwrap().unwrap();
        assert!(parse_rule(&m).is_err());
        // Every byte changed to a few values: parses or errors, never panics.
        for i in 0..good.len() {
            for v in [0u8, 1, 4, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                for m in NlMsgIter::new(&b).flatten() {
                    let _ = parse_rule(&m);
                    let _ = parse_chain(&m);
                }
            }
        }
    }
}
