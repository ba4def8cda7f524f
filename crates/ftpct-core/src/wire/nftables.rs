//! The nf_tables netlink messages of ftpct: rule and chain dumps (read by the rule check) and
//! their parsers, the chain lookup of iptables-nft's nat PREROUTING base chain, the set
//! lookup, and the batches that write — set elements (`NFT_MSG_NEWSETELEM`/`DELSETELEM`) and
//! the NFQUEUE verdict rules of `table inet ftpct` (the x_tables target through nft_compat).
//! The netfilter crate's `nftables` module sends them and documents what the kernel does.
//!
//! Wire format (include/uapi/linux/netfilter/nf_tables.h, libnftnl's userdata TLVs):
//! - a rule message carries `NFTA_RULE_TABLE` (1) and `NFTA_RULE_CHAIN` (2), its expressions in
//!   `NFTA_RULE_EXPRESSIONS` (4: `NFTA_LIST_ELEM` (1) { `NFTA_EXPR_NAME` (1), `NFTA_EXPR_DATA`
//!   (2) }) and optional `NFTA_RULE_USERDATA` (7);
//! - the comment `ftpct` is either the x_tables match `comment` (an expression named `match`
//!   whose data has `NFTA_MATCH_NAME` = `comment` and `NFTA_MATCH_INFO` = a NUL-padded `char
//!   comment[256]`, as iptables-nft 1.8.9 writes it) or, as nft writes it, a userdata TLV of
//!   type 0 (`NFTNL_UDATA_RULE_COMMENT`: type byte, length byte, NUL-terminated value);
//! - every change goes in a batch: `NFNL_MSG_BATCH_BEGIN` and `_END` with `res_id` =
//!   `NFNL_SUBSYS_NFTABLES`, which the kernel applies all or nothing.

use std::net::{IpAddr, SocketAddr};

use super::netlink::{
    get, nfnl_msg_type, nul_terminated, Attr, AttrIter, MsgBuilder, NlMsg, WireError,
    NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END, NFNL_SUBSYS_NFTABLES, NFPROTO_INET, NLM_F_ACK,
    NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REQUEST,
};
use crate::rulecheck::{NfFamily, Place};
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
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_MATCH_NAME: u16 = 1;
const NFTA_MATCH_INFO: u16 = 3;
/// `NFTNL_UDATA_RULE_COMMENT` (libnftnl's userdata TLV type of a rule comment).
const UDATA_RULE_COMMENT: u8 = 0;

fn ty(cmd: u8) -> u16 {
    nfnl_msg_type(NFNL_SUBSYS_NFTABLES, cmd)
}

/// A rule dump request for the tables named `table` of `family` (`NFPROTO_*`; 0 = any).
pub fn build_rule_dump(buf: &mut Vec<u8>, family: u8, table: &str) -> Result<(), WireError> {
    let mut b = MsgBuilder::new(
        buf,
        ty(NFT_MSG_GETRULE),
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        0,
    );
    b.put_cstr(NFTA_RULE_TABLE, table);
    b.finish().map(|_| ())
}

/// A chain dump request for `family`.
pub fn build_chain_dump(buf: &mut Vec<u8>, family: u8) -> Result<(), WireError> {
    MsgBuilder::new(
        buf,
        ty(NFT_MSG_GETCHAIN),
        NLM_F_REQUEST | NLM_F_DUMP,
        family,
        0,
    )
    .finish()
    .map(|_| ())
}

/// `NFT_MSG_GETCHAIN` of one chain (`ENOENT` when the table or the chain is missing).
pub fn build_get_chain(
    buf: &mut Vec<u8>,
    family: u8,
    table: &str,
    chain: &str,
) -> Result<(), WireError> {
    let mut b = MsgBuilder::new(
        buf,
        ty(NFT_MSG_GETCHAIN),
        NLM_F_REQUEST | NLM_F_ACK,
        family,
        0,
    );
    b.put_cstr(NFTA_CHAIN_TABLE, table)
        .put_cstr(NFTA_CHAIN_NAME, chain);
    b.finish().map(|_| ())
}

/// For a chain message: `Some(true)` if it is a base chain (it has a hook), `Some(false)` if
/// a regular one; `None` for another message.
pub fn parse_chain_is_base(m: &NlMsg<'_>) -> Result<Option<bool>, WireError> {
    if !m.is(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWCHAIN) {
        return Ok(None);
    }
    let (_, attrs) = m.nfgen()?;
    let t: [Option<Attr>; 5] = attrs.table()?;
    Ok(Some(get(&t, NFTA_CHAIN_HOOK).is_some()))
}

/// `NFT_MSG_GETSET` of `set` in `table inet ftpct` (`ENOENT` when it is missing).
pub fn build_get_set(buf: &mut Vec<u8>, set: &str) -> Result<(), WireError> {
    let mut b = MsgBuilder::new(
        buf,
        ty(NFT_MSG_GETSET),
        NLM_F_REQUEST | NLM_F_ACK,
        NFPROTO_INET,
        0,
    );
    b.put_cstr(NFTA_SET_TABLE, NFT_TABLE)
        .put_cstr(NFTA_SET_NAME, set);
    b.finish().map(|_| ())
}

/// Whether userdata TLVs hold the comment `ftpct`.
fn userdata_is_ours(mut ud: &[u8]) -> bool {
    while let [ty, len, rest @ ..] = ud {
        let len = usize::from(*len);
        let (Some(value), Some(next)) = (rest.get(..len), rest.get(len..)) else {
            return false;
        };
        if *ty == UDATA_RULE_COMMENT {
            return nul_terminated(value) == COMMENT.as_bytes();
        }
        ud = next;
    }
    false
}

/// Whether the expressions include the x_tables match `comment` with text `ftpct`.
fn xt_comment_is_ours(exprs: AttrIter<'_>) -> Result<bool, WireError> {
    for elem in exprs {
        let elem = elem?;
        if elem.kind() != NFTA_LIST_ELEM {
            continue;
        }
        let e: [Option<Attr>; 3] = elem.nested().table()?;
        let (Some(name), Some(data)) = (get(&e, NFTA_EXPR_NAME), get(&e, NFTA_EXPR_DATA)) else {
            continue;
        };
        if name.str()? != "match" {
            continue;
        }
        let m: [Option<Attr>; 4] = data.nested().table()?;
        let (Some(mname), Some(info)) = (get(&m, NFTA_MATCH_NAME), get(&m, NFTA_MATCH_INFO)) else {
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
pub fn parse_rule(m: &NlMsg<'_>) -> Result<Option<Place>, WireError> {
    if !m.is(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWRULE) {
        return Ok(None);
    }
    let (g, attrs) = m.nfgen()?;
    let Some(family) = NfFamily::from_nfproto(g.family) else {
        return Ok(None);
    };
    let t: [Option<Attr>; 8] = attrs.table()?;
    let (Some(table), Some(chain)) = (get(&t, NFTA_RULE_TABLE), get(&t, NFTA_RULE_CHAIN)) else {
        return Err(WireError::Malformed(
            "nf_tables rule without its table or chain",
        ));
    };
    let ours = match get(&t, NFTA_RULE_USERDATA) {
        Some(ud) if userdata_is_ours(ud.payload()) => true,
        _ => match get(&t, NFTA_RULE_EXPRESSIONS) {
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
pub fn parse_chain(m: &NlMsg<'_>) -> Result<Option<Place>, WireError> {
    if !m.is(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWCHAIN) {
        return Ok(None);
    }
    let (g, attrs) = m.nfgen()?;
    if g.family != NFPROTO_INET {
        return Ok(None);
    }
    let t: [Option<Attr>; 4] = attrs.table()?;
    let (Some(table), Some(name)) = (get(&t, NFTA_CHAIN_TABLE), get(&t, NFTA_CHAIN_NAME)) else {
        return Err(WireError::Malformed(
            "nf_tables chain without its table or name",
        ));
    };
    if table.str()? != NFT_TABLE {
        return Ok(None);
    }
    Ok(Some(Place::new(NfFamily::Inet, NFT_TABLE, name.str()?)))
}

// ---------------------------------------------------------------------------------------------
// Batches

/// Appends `NFNL_MSG_BATCH_BEGIN` or `NFNL_MSG_BATCH_END` (`marker`) for nf_tables to `buf`.
fn batch_marker(buf: &mut Vec<u8>, marker: u16) -> Result<(), WireError> {
    let res_id = u16::from(NFNL_SUBSYS_NFTABLES);
    MsgBuilder::append(buf, marker, NLM_F_REQUEST, 0, res_id)
        .finish()
        .map(|_| ())
}

/// The userdata of a rule whose comment is `ftpct` (libnftnl's TLV: type, length, value with
/// its NUL), as `nft` writes `comment "ftpct"`.
fn comment_userdata() -> [u8; COMMENT.len() + 3] {
    let mut u = [0u8; COMMENT.len() + 3];
    let [t, l, rest @ ..] = &mut u;
    *t = UDATA_RULE_COMMENT;
    *l = (COMMENT.len() + 1) as u8;
    for (d, s) in rest.iter_mut().zip(COMMENT.as_bytes()) {
        *d = *s;
    }
    u
}

/// `struct xt_NFQ_info_v3 { __u16 queuenum, queues_total, flags; }` in host byte order, padded
/// to `XT_ALIGN` (8 bytes), as nft_compat checks the size against the target's.
fn nfq_info_v3(queue: u16, bypass: bool) -> [u8; 8] {
    let flags = if bypass { NFQ_FLAG_BYPASS } else { 0 };
    let [q0, q1] = queue.to_ne_bytes();
    let [t0, t1] = 1u16.to_ne_bytes();
    let [f0, f1] = flags.to_ne_bytes();
    [q0, q1, t0, t1, f0, f1, 0, 0]
}

/// The batch that creates `table inet ftpct` and the regular chains of `targets` if missing
/// and makes each chain hold exactly one rule: the x_tables `NFQUEUE` target (revision 3)
/// with ftpct's comment (every rule of the chain is deleted first, so applying again
/// replaces it).
pub fn build_queue_targets(buf: &mut Vec<u8>, targets: &[QueueTarget]) -> Result<(), WireError> {
    buf.clear();
    batch_marker(buf, NFNL_MSG_BATCH_BEGIN)?;
    let create = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE;
    let mut b = MsgBuilder::append(buf, ty(NFT_MSG_NEWTABLE), create, NFPROTO_INET, 0);
    b.put_cstr(NFTA_TABLE_NAME, NFT_TABLE);
    b.finish()?;
    let udata = comment_userdata();
    for t in targets {
        let mut b = MsgBuilder::append(buf, ty(NFT_MSG_NEWCHAIN), create, NFPROTO_INET, 0);
        b.put_cstr(NFTA_CHAIN_TABLE, NFT_TABLE)
            .put_cstr(NFTA_CHAIN_NAME, t.chain);
        b.finish()?;
        // Without a handle: every rule of the chain.
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
    batch_marker(buf, NFNL_MSG_BATCH_END)
}

/// The key of `dst` in a set of type `ipv4_addr . inet_service` (or `ipv6_addr . ...`): the
/// address, then the port in network byte order; each field of a concatenation takes a
/// multiple of 4 bytes, so the port is followed by 2 zero bytes. Returns the buffer and the
/// key's length in it (8 or 20).
pub fn element_key(dst: SocketAddr) -> ([u8; 20], usize) {
    let mut k = [0u8; 20];
    let [p0, p1] = dst.port().to_be_bytes();
    let n = match dst.ip() {
        IpAddr::V4(a) => {
            let [a0, a1, a2, a3] = a.octets();
            k = [
                a0, a1, a2, a3, p0, p1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ];
            8
        }
        IpAddr::V6(a) => {
            for (d, s) in k.iter_mut().zip(a.octets()) {
                *d = s;
            }
            if let Some(port) = k.get_mut(16..18) {
                port.copy_from_slice(&[p0, p1]);
            }
            20
        }
    };
    (k, n)
}

/// The batch adding (`timeout_ms` given) or deleting one element `dst` of `set` in `table inet
/// ftpct`.
pub fn build_element(
    buf: &mut Vec<u8>,
    set: &str,
    dst: SocketAddr,
    timeout_ms: Option<u64>,
) -> Result<(), WireError> {
    buf.clear();
    batch_marker(buf, NFNL_MSG_BATCH_BEGIN)?;
    let (cmd, flags) = match timeout_ms {
        Some(_) => (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
        None => (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK),
    };
    let mut b = MsgBuilder::append(buf, ty(cmd), flags, NFPROTO_INET, 0);
    b.put_cstr(NFTA_SET_ELEM_LIST_TABLE, NFT_TABLE)
        .put_cstr(NFTA_SET_ELEM_LIST_SET, set);
    let list = b.nest_start(NFTA_SET_ELEM_LIST_ELEMENTS);
    let e = b.nest_start(NFTA_LIST_ELEM);
    let key = b.nest_start(NFTA_SET_ELEM_KEY);
    let (k, n) = element_key(dst);
    b.put(NFTA_DATA_VALUE, k.get(..n).unwrap_or(&k));
    b.nest_end(key);
    if let Some(ms) = timeout_ms {
        b.put_be64(NFTA_SET_ELEM_TIMEOUT, ms);
    }
    b.nest_end(e);
    b.nest_end(list);
    b.finish()?;
    batch_marker(buf, NFNL_MSG_BATCH_END)
}

/// One set element message as [`build_element`] writes it: (set, key, timeout in ms); `None`
/// for another message. The decoder of the element batches, for tests and the fuzz target.
#[allow(clippy::type_complexity)]
pub fn parse_element<'a>(
    m: &NlMsg<'a>,
) -> Result<Option<(&'a str, &'a [u8], Option<u64>)>, WireError> {
    if !m.is(NFNL_SUBSYS_NFTABLES, NFT_MSG_NEWSETELEM)
        && !m.is(NFNL_SUBSYS_NFTABLES, NFT_MSG_DELSETELEM)
    {
        return Ok(None);
    }
    let (_, attrs) = m.nfgen()?;
    let t: [Option<Attr>; 4] = attrs.table()?;
    let set = get(&t, NFTA_SET_ELEM_LIST_SET)
        .ok_or(WireError::Malformed("set element list without its set"))?
        .str()?;
    let list = get(&t, NFTA_SET_ELEM_LIST_ELEMENTS)
        .ok_or(WireError::Malformed("set element list without elements"))?;
    let elem = list
        .nested()
        .next()
        .ok_or(WireError::Malformed("empty set element list"))??;
    let e: [Option<Attr>; 5] = elem.nested().table()?;
    let key = get(&e, NFTA_SET_ELEM_KEY)
        .ok_or(WireError::Malformed("set element without a key"))?
        .nested()
        .next()
        .ok_or(WireError::Malformed("set element key without a value"))??;
    let timeout = get(&e, NFTA_SET_ELEM_TIMEOUT)
        .map(|a| a.be64())
        .transpose()?;
    Ok(Some((set, key.payload(), timeout)))
}

#[cfg(test)]
mod tests {
    use super::super::netlink::{NlMsgIter, NLM_F_MULTI};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn element_keys_are_address_then_padded_port() {
        let (k, n) = element_key("192.0.2.7:40000".parse().unwrap());
        assert_eq!(&k[..n], &[192, 0, 2, 7, 0x9c, 0x40, 0, 0]);
        let (k, n) = element_key("[2001:db8::1]:21".parse().unwrap());
        assert_eq!(n, 20);
        assert_eq!(&k[16..20], &[0, 21, 0, 0]);
        assert_eq!(&k[..2], &[0x20, 0x01]);
    }

    /// The messages of a batch: (type, flags, family).
    fn batch_msgs(buf: &[u8]) -> Vec<(u16, u16, u8)> {
        NlMsgIter::new(buf)
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
        let msgs = batch_msgs(&buf);
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].0, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(msgs[1].0, ty(NFT_MSG_NEWSETELEM));
        assert_ne!(msgs[1].1 & NLM_F_ACK, 0);
        assert_eq!(msgs[1].2, NFPROTO_INET);
        assert_eq!(msgs[2].0, NFNL_MSG_BATCH_END);
        let begin = NlMsgIter::new(&buf).next().unwrap().unwrap();
        assert_eq!(begin.nfgen().unwrap().0.res_id, 10);
        let m = NlMsgIter::new(&buf).nth(1).unwrap().unwrap();
        let (_, attrs) = m.nfgen().unwrap();
        let t: [Option<Attr>; 4] = attrs.table().unwrap();
        assert_eq!(
            t[NFTA_SET_ELEM_LIST_TABLE as usize].unwrap().str().unwrap(),
            "ftpct"
        );
        assert_eq!(
            parse_element(&m).unwrap(),
            Some((
                "ftpct4",
                &[192, 0, 2, 7, 0x9c, 0x40, 0, 0][..],
                Some(300_000)
            ))
        );

        build_element(&mut buf, "ftpct4", "192.0.2.7:40000".parse().unwrap(), None).unwrap();
        let msgs = batch_msgs(&buf);
        assert_eq!(msgs[1].0, ty(NFT_MSG_DELSETELEM));
        let m = NlMsgIter::new(&buf).nth(1).unwrap().unwrap();
        assert_eq!(parse_element(&m).unwrap().unwrap().2, None);
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
        let rule = NlMsgIter::new(&buf).nth(4).unwrap().unwrap();
        assert_eq!(
            parse_rule(&rule).unwrap(),
            Some(Place::new(NfFamily::Inet, NFT_TABLE, "queue_control"))
        );
        let info = nfq_info_v3(7, true);
        let field = |i: usize| u16::from_ne_bytes([info[i], info[i + 1]]);
        assert_eq!((field(0), field(2), field(4)), (7, 1, NFQ_FLAG_BYPASS));
        assert_eq!(&info[6..], &[0, 0]);
        assert_eq!(nfq_info_v3(7, false)[4..6], [0, 0]);
        assert_eq!(&comment_userdata(), b"\x00\x06ftpct\x00");
    }

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
        let mut b = MsgBuilder::new(&mut buf, ty(NFT_MSG_NEWRULE), NLM_F_MULTI, family, 0);
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
        build_get_chain(&mut buf, 2, "nat", "PREROUTING").unwrap();
        let m = NlMsgIter::new(&buf).next().unwrap().unwrap();
        assert_eq!(m.msg_type, (10 << 8) | 4);
        assert_eq!(m.flags, NLM_F_REQUEST | NLM_F_ACK);
        let (g, attrs) = m.nfgen().unwrap();
        assert_eq!(g.family, 2);
        let t: [Option<Attr>; 4] = attrs.table().unwrap();
        assert_eq!(t[1].unwrap().str().unwrap(), "nat");
        assert_eq!(t[3].unwrap().str().unwrap(), "PREROUTING");
        build_get_set(&mut buf, "ftpct6").unwrap();
        let m = NlMsgIter::new(&buf).next().unwrap().unwrap();
        assert_eq!(m.msg_type, (10 << 8) | 10);
        let (g, attrs) = m.nfgen().unwrap();
        assert_eq!(g.family, NFPROTO_INET);
        let t: [Option<Attr>; 3] = attrs.table().unwrap();
        assert_eq!(t[1].unwrap().str().unwrap(), "ftpct");
        assert_eq!(t[2].unwrap().str().unwrap(), "ftpct6");
    }

    #[test]
    fn base_chain_has_a_hook() {
        let chain = |hook: bool| {
            let mut buf = Vec::new();
            let mut b = MsgBuilder::new(&mut buf, ty(NFT_MSG_NEWCHAIN), 0, 2, 0);
            b.put_cstr(NFTA_CHAIN_TABLE, "nat")
                .put_cstr(NFTA_CHAIN_NAME, "PREROUTING");
            if hook {
                let h = b.nest_start(NFTA_CHAIN_HOOK);
                b.put_be32(1, 0).put_be32(2, (-100i32) as u32);
                b.nest_end(h);
            }
            b.finish().unwrap();
            let m = NlMsgIter::new(&buf).next().unwrap().unwrap();
            parse_chain_is_base(&m).unwrap()
        };
        assert_eq!(chain(true), Some(true));
        assert_eq!(chain(false), Some(false));
        let buf = rule_msg(2, "nat", "PREROUTING", None, None);
        let m = NlMsgIter::new(&buf).next().unwrap().unwrap();
        assert_eq!(parse_chain_is_base(&m).unwrap(), None);
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
            let mut b = MsgBuilder::new(&mut buf, ty(NFT_MSG_NEWCHAIN), NLM_F_MULTI, family, 0);
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
        MsgBuilder::new(&mut buf, ty(NFT_MSG_NEWRULE), 0, 2, 0)
            .finish()
            .unwrap();
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
                    let _ = parse_chain_is_base(&m);
                }
            }
        }
    }

    proptest! {
        /// Encode an element batch, decode its element: the same set, key and timeout.
        #[test]
        fn element_round_trip(
            set in "[a-z0-9]{1,31}", v6 in any::<bool>(), a4 in any::<[u8; 4]>(),
            a6 in any::<[u8; 16]>(), port in any::<u16>(),
            timeout in proptest::option::of(any::<u64>()),
        ) {
            let ip: IpAddr = if v6 { a6.into() } else { a4.into() };
            let dst = SocketAddr::new(ip, port);
            let mut buf = Vec::new();
            build_element(&mut buf, &set, dst, timeout).unwrap();
            let m = NlMsgIter::new(&buf).nth(1).unwrap().unwrap();
            let (k, n) = element_key(dst);
            prop_assert_eq!(parse_element(&m).unwrap(), Some((set.as_str(), &k[..n], timeout)));
        }

        /// Arbitrary userdata and attribute bytes never panic the rule parser.
        #[test]
        fn arbitrary_rule_bytes_never_panic(
            ud in proptest::collection::vec(any::<u8>(), 0..64),
            exprs in proptest::collection::vec(any::<u8>(), 0..128),
        ) {
            let _ = userdata_is_ours(&ud);
            let _ = xt_comment_is_ours(AttrIter::new(&exprs));
            let buf = rule_msg(1, "ftpct", "c", None, Some(&ud));
            let _ = parse(&buf);
        }
    }
}
